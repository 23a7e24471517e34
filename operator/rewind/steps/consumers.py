"""Restarting the workloads that consume restored Secrets, as `kubectl rollout restart` does: an
annotation on the pod template, here `rewind.dev/restarted-by: <Rollback UID>`, so a second
write of it changes nothing. Workloads the spec rolls back are left out (their rollout restarts
them, and a write here would look to their own step like someone else's change)."""

from __future__ import annotations

import datetime

from rewind.adapters.kube import STRATEGIC_MERGE_PATCH, Kube
from rewind.api import conditions as C
from rewind.api.v1alpha1 import PlanStep, StepAction, StepKind, StepRecord, TargetRef
from rewind.context import Context, StepFailed, Wait, Watched
from rewind.steps.workload import DEADLINE_MARGIN_SECONDS, DEFAULT_PROGRESS_DEADLINE_SECONDS, KINDS, LOOK_AGAIN_SECONDS, rollout_state

RESTARTED_BY = "rewind.dev/restarted-by"


def secrets_used(template: dict) -> set[str]:
    """Every Secret a pod template reads, through env, envFrom or a (projected) volume."""
    spec = template.get("spec", {})
    used: set[str] = set()
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(group) or []:
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("name"):
                    used.add(ref["name"])
            for src in c.get("envFrom") or []:
                if (src.get("secretRef") or {}).get("name"):
                    used.add(src["secretRef"]["name"])
    for vol in spec.get("volumes") or []:
        if (vol.get("secret") or {}).get("secretName"):
            used.add(vol["secret"]["secretName"])
        for source in (vol.get("projected") or {}).get("sources") or []:
            if (source.get("secret") or {}).get("name"):
                used.add(source["secret"]["name"])
    return used


def resolve(kube: Kube, namespace: str, restored: list[str], excluded: set[tuple[str, str]]) -> PlanStep | None:
    consumers = []
    for kind in KINDS.values():
        for obj in kube.list(kind.resource, namespace):
            name = obj["metadata"]["name"]
            if (kind.name, name) in excluded:
                continue
            if secrets_used(obj["spec"]["template"]) & set(restored):
                consumers.append(f"{kind.name}/{name}")
    if not consumers:
        return None
    return PlanStep(name="restart-consumers", kind=StepKind.CONSUMERS_RESTART,
                    target=TargetRef(kind="Workloads", name=",".join(consumers)), action=StepAction.RESTORE)


def advance(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    """Each consumer gets the restart annotation once, then the step waits (on a watch of the first
    one still rolling out) until all have rolled out, at most the rollout deadline."""
    targets = [t.split("/", 1) for t in step.target.name.split(",")]
    ctx.begin(step, rec, f"Restarting {step.target.name}, which use the restored Secrets.")
    waiting, watch = [], None
    for kind_name, name in targets:
        kind = KINDS[kind_name]
        obj = ctx.kube.get(kind.resource, ctx.namespace, name)
        annotations = obj["spec"]["template"].get("metadata", {}).get("annotations") or {}
        if annotations.get(RESTARTED_BY) != ctx.uid:
            obj = ctx.kube.patch(kind.resource, ctx.namespace, name, {"spec": {"template": {"metadata": {
                "annotations": {RESTARTED_BY: ctx.uid}}}}}, STRATEGIC_MERGE_PATCH)
        state = rollout_state(kind_name, obj, rec.started_at)
        if state.failed:
            raise StepFailed(C.ROLLOUT_FAILED, f"restarting {kind_name} {name}: {state.message}")
        if not state.done:
            waiting.append(state.message)
            watch = watch or Watched(kind.resource, name, obj["metadata"].get("resourceVersion"))
    if waiting:
        deadline = rec.started_at + datetime.timedelta(seconds=DEFAULT_PROGRESS_DEADLINE_SECONDS + DEADLINE_MARGIN_SECONDS)
        return ctx.waiting(step, rec, "; ".join(waiting), deadline, look_again=LOOK_AGAIN_SECONDS, watch=watch)
    ctx.succeed(step, rec, f"{step.target.name} restarted with the restored Secrets and rolled out.",
                "ConsumersRestarted")
    return None
