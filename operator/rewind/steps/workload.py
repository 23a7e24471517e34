"""Workload revision restore, with the semantics of `kubectl rollout undo [--to-revision=N]`.

Deployments keep their history in ReplicaSets (`deployment.kubernetes.io/revision`); StatefulSets
and DaemonSets in ControllerRevisions. The step has the shape every step has:

- `preflight` (read-only): resolve the wanted revision and what the write would change;
- `apply` (idempotent): one write, only if the pod template is as planned, guarded by resourceVersion;
  after a crash, the `rewind.dev/restored-by` marker tells whether our write already happened;
- `advance`: intent, the write, then a wait on a watch of the workload until the controller has
  rolled the restored template out, bounded by the rollout's own deadline.

Differences from kubectl, on purpose: the write carries a resourceVersion precondition (kubectl's
has none and can race a concurrent writer), a field manager, and the annotation
`rewind.dev/restored-by: <Rollback UID>` so that a restarted operator recognises its own write.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

from rewind.adapters.kube import (
    CONTROLLER_REVISIONS, DAEMONSETS, DEPLOYMENTS, JSON_PATCH, REPLICASETS, STATEFULSETS,
    STRATEGIC_MERGE_PATCH, Kube, KubeError, Resource,
)
from rewind.api import conditions as C
from rewind.plan import workload_step_name
from rewind.api.v1alpha1 import (
    PREVIOUS, PlanStep, StepAction, StepKind, StepRecord, StepState, TargetRef, WorkloadTarget,
)
from rewind import crashpoints
from rewind.api.errors import ReasonedError
from rewind.context import Context, Found, Request, StepFailed, Wait, Watched

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
RESTORED_BY_ANNOTATION = "rewind.dev/restored-by"
POD_TEMPLATE_HASH = "pod-template-hash"

# kubectl's annotationsToSkip (polymorphichelpers/rollback.go): kept at their current values.
SKIP_ANNOTATIONS = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
})

# How long a rollout may take: a Deployment's own progressDeadlineSeconds (600 by default, and it
# never fires while the Deployment is paused) plus a margin; StatefulSets and DaemonSets have none.
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600
DEADLINE_MARGIN_SECONDS = 60
# A watch wakes the step on every change of the workload; this is only the longest sleep between looks.
LOOK_AGAIN_SECONDS = 30.0

MAX_DIFF_CHARS = 8000


@dataclass(frozen=True)
class Kind:
    name: str
    resource: Resource
    history: Resource


KINDS = {
    "Deployment": Kind("Deployment", DEPLOYMENTS, REPLICASETS),
    "StatefulSet": Kind("StatefulSet", STATEFULSETS, CONTROLLER_REVISIONS),
    "DaemonSet": Kind("DaemonSet", DAEMONSETS, CONTROLLER_REVISIONS),
}


# --- pure helpers ----------------------------------------------------------------------------


def is_controlled_by(obj: dict, owner: dict) -> bool:
    uid = owner["metadata"]["uid"]
    return any(ref.get("controller") and ref.get("uid") == uid
               for ref in obj["metadata"].get("ownerReferences") or [])


def history_revision(kind: str, obj: dict) -> int | None:
    """The revision number an history object (ReplicaSet or ControllerRevision) stands for."""
    if kind == "Deployment":
        value = (obj["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION)
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None
    return obj.get("revision")


def choose_revision(available: list[int], wanted: int | str) -> int:
    """kubectl's choice: `previous` is the second-highest revision; a number must exist."""
    revisions = sorted(set(available))
    listing = ", ".join(map(str, revisions)) or "none"
    if wanted == PREVIOUS:
        if len(revisions) < 2:
            raise StepFailed(C.REVISION_NOT_FOUND,
                                 f"there is no previous revision (revisions kept: {listing}); "
                                 "revisionHistoryLimit may have pruned older ones")
        return revisions[-2]
    if wanted not in revisions:
        raise StepFailed(C.REVISION_NOT_FOUND,
                             f"revision {wanted} not found (revisions kept: {listing}); "
                             "it may never have existed or was pruned by revisionHistoryLimit")
    return int(wanted)


def template_of_history(kind: str, obj: dict) -> dict:
    """The pod template a history object holds, as the workload's spec.template would be."""
    if kind == "Deployment":
        template = copy.deepcopy(obj["spec"]["template"])
        labels = template.get("metadata", {}).get("labels")
        if labels:
            labels.pop(POD_TEMPLATE_HASH, None)
        return template
    template = copy.deepcopy(obj.get("data", {}).get("spec", {}).get("template", {}))
    template.pop("$patch", None)
    return template


def restored_annotations(current: dict[str, str], from_history: dict[str, str],
                         rollback_uid: str) -> dict[str, str]:
    """kubectl's rule: the history object's annotations, except the skip list, whose current
    values are kept; plus Rewind's own marker."""
    out = {k: v for k, v in current.items() if k in SKIP_ANNOTATIONS}
    out.update({k: v for k, v in from_history.items() if k not in SKIP_ANNOTATIONS})
    out[RESTORED_BY_ANNOTATION] = rollback_uid
    return out


def template_hash(template: dict) -> str:
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _mask_env(template: dict) -> dict:
    """Env values may be credentials someone inlined; the diff shows that they change, not what."""
    t = copy.deepcopy(template)
    spec = t.get("spec", {})
    for group in ("containers", "initContainers", "ephemeralContainers"):
        for c in spec.get(group) or []:
            for env in c.get("env") or []:
                if "value" in env:
                    digest = hashlib.sha256(str(env["value"]).encode()).hexdigest()[:12]
                    env["value"] = f"<masked sha256:{digest}>"
    return t


def template_diff(current: dict, target: dict, name: str) -> str:
    a = yaml.safe_dump(_mask_env(current), sort_keys=True).splitlines(keepends=True)
    b = yaml.safe_dump(_mask_env(target), sort_keys=True).splitlines(keepends=True)
    diff = "".join(difflib.unified_diff(a, b, f"{name} (current)", f"{name} (restored)"))
    if len(diff) > MAX_DIFF_CHARS:
        diff = diff[:MAX_DIFF_CHARS] + "\n... (diff truncated)\n"
    return diff


@dataclass(frozen=True)
class RolloutState:
    done: bool
    failed: bool
    message: str


def rollout_state(kind: str, obj: dict, since: datetime.datetime | None = None) -> RolloutState:
    """kubectl rollout status, per kind (kubectl/pkg/polymorphichelpers/rollout_status.go).

    One difference: a Deployment's ProgressDeadlineExceeded last updated before `since` (when
    Rewind's write happened) is the bad release's old timeout, not this rollout's, and is ignored.
    StatefulSets with OnDelete are done at once, as kubectl says for them."""
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})
    name = meta["name"]
    generation, observed = meta.get("generation", 0), status.get("observedGeneration", 0)

    def waiting(msg: str) -> RolloutState:
        return RolloutState(False, False, msg)

    if kind == "Deployment":
        if generation > observed:
            return waiting(f"waiting for the Deployment {name} spec update to be observed")
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded" \
                    and not _before(cond.get("lastUpdateTime"), since):
                return RolloutState(False, True, f"Deployment {name} exceeded its progress deadline: "
                                                 f"{cond.get('message', '')}".strip())
        replicas = spec.get("replicas", 1)
        updated = status.get("updatedReplicas", 0)
        if updated < replicas:
            return waiting(f"{updated} of {replicas} new replicas have been updated")
        if status.get("replicas", 0) > updated:
            return waiting(f"{status.get('replicas', 0) - updated} old replicas are pending termination")
        available = status.get("availableReplicas", 0)
        if available < updated:
            return waiting(f"{available} of {updated} updated replicas are available")
        return RolloutState(True, False, f"Deployment {name} rolled out: {available} of {replicas} available")

    if kind == "StatefulSet":
        if spec.get("updateStrategy", {}).get("type", "RollingUpdate") != "RollingUpdate":
            return RolloutState(True, False, f"StatefulSet {name} uses OnDelete; pods update when deleted")
        if observed == 0 or generation > observed:
            return waiting(f"waiting for the StatefulSet {name} spec update to be observed")
        replicas = spec.get("replicas", 1)
        ready = status.get("readyReplicas", 0)
        if ready < replicas:
            return waiting(f"{ready} of {replicas} pods are ready")
        strategy = spec.get("updateStrategy", {})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            partition = (strategy.get("rollingUpdate") or {}).get("partition", 0)
            if partition:
                updated = status.get("updatedReplicas", 0)
                if updated < replicas - partition:
                    return waiting(f"{updated} of {replicas - partition} pods updated (partition {partition})")
                return RolloutState(True, False, f"StatefulSet {name} partitioned rollout complete")
        if status.get("updateRevision") != status.get("currentRevision"):
            return waiting(f"waiting for the StatefulSet {name} rolling update to complete "
                           f"({status.get('updatedReplicas', 0)} of {replicas} pods updated)")
        return RolloutState(True, False, f"StatefulSet {name} rolled out: {ready} of {replicas} ready")

    # DaemonSet
    if spec.get("updateStrategy", {}).get("type", "RollingUpdate") != "RollingUpdate":
        return RolloutState(True, False, f"DaemonSet {name} uses OnDelete; pods update when deleted")
    if generation > observed:
        return waiting(f"waiting for the DaemonSet {name} spec update to be observed")
    desired = status.get("desiredNumberScheduled", 0)
    updated = status.get("updatedNumberScheduled", 0)
    if updated < desired:
        return waiting(f"{updated} of {desired} updated pods have been scheduled")
    available = status.get("numberAvailable", 0)
    if available < desired:
        return waiting(f"{available} of {desired} updated pods are available")
    return RolloutState(True, False, f"DaemonSet {name} rolled out: {available} of {desired} available")


def _before(timestamp: str | None, since: datetime.datetime | None) -> bool:
    if not timestamp or since is None:
        return False
    at = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return at < since


def build_patch(kind: str, history_obj: dict, current: dict, template: dict,
                rollback_uid: str) -> tuple[Any, str]:
    """The write that restores `template`, guarded by the current resourceVersion."""
    rv = current["metadata"]["resourceVersion"]
    if kind == "Deployment":
        annotations = restored_annotations(current["metadata"].get("annotations") or {},
                                           history_obj["metadata"].get("annotations") or {},
                                           rollback_uid)
        return ([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "replace", "path": "/metadata/annotations", "value": annotations},
        ], JSON_PATCH)
    # StatefulSet/DaemonSet: kubectl applies the ControllerRevision's data as a strategic merge
    # patch (its template carries "$patch": "replace").
    body = copy.deepcopy(history_obj.get("data") or {})
    body["metadata"] = {"resourceVersion": rv,
                        "annotations": {RESTORED_BY_ANNOTATION: rollback_uid}}
    return body, STRATEGIC_MERGE_PATCH


# --- the step --------------------------------------------------------------------------------


@dataclass
class Resolved:
    step: PlanStep
    history_obj: dict
    current: dict


def _read(kube: Kube, kind: Kind, namespace: str, name: str) -> dict:
    try:
        return kube.get(kind.resource, namespace, name)
    except KubeError as e:
        if e.not_found:
            raise StepFailed(C.TARGET_NOT_FOUND,
                                 f"{kind.name} {namespace}/{name} does not exist") from None
        if e.forbidden:
            raise StepFailed(C.FORBIDDEN, f"the operator may not read {kind.name} "
                                              f"{namespace}/{name}: {e.message}") from None
        raise


def preflight(kube: Kube, req: Request) -> Found:
    """Every workload of spec.application, in the spec's order; all problems reported at once."""
    steps, problems = [], []
    for target in req.spec.application or []:
        try:
            steps.append(resolve(kube, req.namespace, target).step)
        except ReasonedError as e:
            problems.append(e)
    if problems:
        raise StepFailed(problems[0].reason, "; ".join(p.message for p in problems))
    return Found(steps=steps)


def resolve(kube: Kube, namespace: str, target: WorkloadTarget) -> Resolved:
    """Preflight for one workload; raises StepFailed. Reads only."""
    if target.namespace and target.namespace != namespace:
        raise StepFailed(
            C.NAMESPACE_NOT_ALLOWED,
            f"{target.kind} {target.namespace}/{target.name} is in another namespace; a Rollback "
            f"only touches its own namespace ({namespace}). Create the Rollback in "
            f"{target.namespace} instead")
    kind = KINDS[target.kind]
    current = _read(kube, kind, namespace, target.name)
    if kind.name == "Deployment" and current.get("spec", {}).get("paused"):
        raise StepFailed(C.WORKLOAD_PAUSED,
                             f"Deployment {namespace}/{target.name} is paused; resume it first "
                             f"(kubectl rollout resume deployment/{target.name}), as kubectl requires")
    if not kube.can_i(namespace, "patch", kind.resource):
        raise StepFailed(C.FORBIDDEN, f"the operator may not patch {kind.resource.plural} in "
                                          f"{namespace}; grant it the rewind-operator role there")
    history = [h for h in kube.list(kind.history, namespace) if is_controlled_by(h, current)]
    by_revision: dict[int, dict] = {}
    for h in history:
        rev = history_revision(kind.name, h)
        if rev is not None:
            by_revision[rev] = h
    if not by_revision:
        raise StepFailed(C.REVISION_NOT_FOUND,
                             f"{kind.name} {namespace}/{target.name} has no rollout history")
    wanted = choose_revision(list(by_revision), target.to_revision)
    history_obj = by_revision[wanted]
    template = template_of_history(kind.name, history_obj)
    current_template = current["spec"]["template"]
    same = template == current_template
    step = PlanStep(
        name=workload_step_name(kind.name, target.name),
        kind=StepKind.WORKLOAD_REVISION,
        target=TargetRef(kind=kind.name, name=target.name),
        action=StepAction.NO_OP if same else StepAction.RESTORE,
        current_revision=max(by_revision),
        to_revision=wanted,
        from_template_hash=template_hash(current_template),
        template_hash=template_hash(template),
        diff=None if same else template_diff(current_template, template, f"{kind.name}/{target.name}"),
        spec_key=f"{kind.name}/{target.name}",
    )
    return Resolved(step, history_obj, current)


def written_by_us(obj: dict, step: PlanStep, rollback_uid: str) -> bool:
    marker = (obj["metadata"].get("annotations") or {}).get(RESTORED_BY_ANNOTATION)
    return marker == rollback_uid and template_hash(obj["spec"]["template"]) == step.template_hash


def apply(kube: Kube, namespace: str, step: PlanStep, rollback_uid: str) -> str:
    """Writes the restored template once. Returns how: "patched", or "adopted" when our earlier
    write is already there (after a crash). Raises StepFailed when it must not or cannot write.

    The pod template must be as it was at planning (so nobody changed it, and our own write did
    not happen: it would have changed it), and the write is guarded by the resourceVersion just read."""
    kind = KINDS[step.target.kind]
    for _ in range(5):
        current = _get_for_apply(kube, kind, namespace, step)
        if written_by_us(current, step, rollback_uid):
            return "adopted"
        # Only the pod template matters: replicas may change (an autoscaler, kubectl scale).
        if template_hash(current["spec"]["template"]) != step.from_template_hash:
            raise StepFailed(C.CONFLICT, _changed_message(kind.name, namespace, step, current))
        history = [h for h in kube.list(kind.history, namespace)
                   if is_controlled_by(h, current) and history_revision(kind.name, h) == step.to_revision]
        if not history:
            raise StepFailed(C.REVISION_NOT_FOUND, f"revision {step.to_revision} of {kind.name} "
                                                   f"{namespace}/{step.target.name} disappeared after planning")
        template = template_of_history(kind.name, history[0])
        if template_hash(template) != step.template_hash:
            raise StepFailed(C.CONFLICT, f"revision {step.to_revision} of {kind.name} "
                                         f"{namespace}/{step.target.name} changed after planning; "
                                         "nothing was written")
        body, content_type = build_patch(kind.name, history[0], current, template, rollback_uid)
        try:
            kube.patch(kind.resource, namespace, step.target.name, body, content_type)
            crashpoints.reach("WorkloadRevision:after-write")
            return "patched"
        except KubeError as e:
            if e.conflict or e.status == 422 and "test" in e.message.lower():
                continue  # the object changed between our read and our write: read again
            if e.forbidden:
                raise StepFailed(C.FORBIDDEN, f"the operator may not patch {kind.name} "
                                              f"{namespace}/{step.target.name}: {e.message}") from None
            if e.not_found:
                raise StepFailed(C.TARGET_NOT_FOUND, f"{kind.name} {namespace}/{step.target.name} "
                                                     "was deleted after planning") from None
            raise
    raise StepFailed(C.CONFLICT, f"{kind.name} {namespace}/{step.target.name} kept changing while "
                                 "Rewind tried to write it; nothing was written")


def _get_for_apply(kube: Kube, kind: Kind, namespace: str, step: PlanStep) -> dict:
    try:
        return kube.get(kind.resource, namespace, step.target.name)
    except KubeError as e:
        if e.not_found:
            raise StepFailed(C.TARGET_NOT_FOUND, f"{kind.name} {namespace}/{step.target.name} "
                                                 "was deleted after planning") from None
        raise


def _changed_message(kind: str, namespace: str, step: PlanStep, current: dict) -> str:
    return (f"{kind} {namespace}/{step.target.name}'s pod template changed after planning (now "
            f"generation {current['metadata'].get('generation')}) and nothing was written; check "
            "who changed it, then create a new Rollback")


def check_rollout(kube: Kube, namespace: str, step: PlanStep,
                  since: datetime.datetime | None) -> tuple[RolloutState, int | None, dict]:
    """The rollout's state, the revision number the controller gave the restored template, and
    the workload as read (its resourceVersion is where the watch starts)."""
    kind = KINDS[step.target.kind]
    try:
        obj = kube.get(kind.resource, namespace, step.target.name)
    except KubeError as e:
        if e.not_found:
            raise StepFailed(C.TARGET_NOT_FOUND, f"{kind.name} {namespace}/{step.target.name} was "
                                                 "deleted during the rollout") from None
        raise
    if template_hash(obj["spec"]["template"]) != step.template_hash:
        return RolloutState(False, True, f"{kind.name} {namespace}/{step.target.name} no longer has "
                                         "the restored template: someone changed it during the "
                                         "rollout"), None, obj
    state = rollout_state(kind.name, obj, since)
    revision = None
    if state.done:
        if kind.name == "Deployment":
            rev = (obj["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION)
            revision = int(rev) if rev and rev.isdigit() else None
        else:
            # The controller gives the restored ControllerRevision the next number.
            owned = [history_revision(kind.name, h) for h in kube.list(kind.history, namespace)
                     if is_controlled_by(h, obj)]
            revision = max((r for r in owned if r is not None), default=None)
    elif kind.name == "Deployment" and obj.get("spec", {}).get("paused"):
        state = RolloutState(False, False, f"Deployment {step.target.name} is paused mid-rollout ({state.message}); "
                                           f"resume it (kubectl rollout resume deployment/{step.target.name}) "
                                           "or the step fails at its deadline")
    return state, revision, obj


def rollout_deadline(step: PlanStep, obj: dict, started: datetime.datetime) -> datetime.datetime:
    seconds = DEFAULT_PROGRESS_DEADLINE_SECONDS
    if step.target.kind == "Deployment":
        seconds = obj.get("spec", {}).get("progressDeadlineSeconds") or seconds
    return started + datetime.timedelta(seconds=seconds + DEADLINE_MARGIN_SECONDS)


def advance(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    """Intent is saved before the write, the outcome after it; then the step waits on a watch of
    the workload until the rollout is done, failed, or past its deadline."""
    what = f"{step.target.kind} {step.target.name}"
    if rec.state == StepState.PENDING.value and step.action == StepAction.NO_OP.value:
        ctx.skip(step, rec, f"{what} already runs revision {step.to_revision}'s template; nothing to change.",
                 C.ALREADY_AT_REVISION, emit=True)
        return None
    ctx.begin(step, rec, f"Restoring {what} to revision {step.to_revision}'s template.", C.APPLICATION_RESTORED)

    if rec.state == StepState.RUNNING.value:
        how = apply(ctx.kube, ctx.namespace, step, ctx.uid)
        done = "was already patched" if how == "adopted" else "patched"
        rec.state = StepState.WAITING.value
        rec.message = f"{what} {done} to revision {step.to_revision}'s template; waiting for the rollout."
        ctx.condition(C.APPLICATION_RESTORED, "False", C.ROLLOUT_IN_PROGRESS, rec.message)
        # The outcome is saved with the first look at the rollout (below): one write, not two.

    state, revision, obj = check_rollout(ctx.kube, ctx.namespace, step, rec.started_at)
    if state.failed:
        raise StepFailed(C.ROLLOUT_FAILED, state.message)
    if not state.done:
        def too_late() -> None:
            raise StepFailed(C.ROLLOUT_FAILED, f"{what} did not finish rolling out by its deadline: {state.message}")
        kind = KINDS[step.target.kind]
        return ctx.waiting(step, rec, state.message, rollout_deadline(step, obj, rec.started_at),
                           look_again=LOOK_AGAIN_SECONDS, on_deadline=too_late,
                           watch=Watched(kind.resource, step.target.name, obj["metadata"].get("resourceVersion")))
    rec.restored_revision = revision
    ctx.succeed(step, rec, f"{what} runs revision {step.to_revision}'s template again"
                           f"{f' (as revision {revision})' if revision else ''}; {state.message}.", C.ROLLED_BACK)
    return None
