"""Argo CD and Flux: a target they manage is put back to Git's state within seconds of a rollback,
unless their automated sync is suspended first.

Preflight finds, for every target (workloads, Secrets, certificates' Secrets), whether an Argo CD
Application (annotation `argocd.argoproj.io/tracking-id`, else label `app.kubernetes.io/instance`
naming an Application that exists) or a Flux Kustomization or HelmRelease (their `name` and
`namespace` labels) manages it. By the spec's or the policy's `gitops.mode` it then refuses,
warns (Ignore), or plans one `GitOpsSuspend` step per owner before the first write and one
`GitOpsHold` step after the last. The suspension (Argo CD: `spec.syncPolicy.automated` removed;
Flux: `spec.suspend: true`) is recorded in `status.gitops` before it is written, guarded by
resourceVersion, and never undone by the operator: resuming sync would put the broken state back.
The owner stays suspended until a person has fixed Git and runs `kubectl rewind resume-sync`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rewind import crashpoints
from rewind.adapters.kube import JSON_PATCH, SECRETS, Kube, KubeError, Resource
from rewind.api import conditions as C
from rewind.api import policy as P
from rewind.api.v1alpha1 import (
    GitOpsMode, GitOpsOwner, GitOpsRecord, PlanStep, StepAction, StepKind, StepRecord, StepState,
    TargetRef,
)
from rewind.context import Context, Found, Request, StepFailed

APPLICATIONS = Resource("argoproj.io", "v1alpha1", "applications")
KUSTOMIZATIONS = Resource("kustomize.toolkit.fluxcd.io", "v1", "kustomizations")
HELM_RELEASES = Resource("helm.toolkit.fluxcd.io", "v2", "helmreleases")
RESOURCES = {"Application": APPLICATIONS, "Kustomization": KUSTOMIZATIONS, "HelmRelease": HELM_RELEASES}

ARGO_TRACKING = "argocd.argoproj.io/tracking-id"
ARGO_INSTANCE = "app.kubernetes.io/instance"
FLUX_LABELS = (("Kustomization", "kustomize.toolkit.fluxcd.io"), ("HelmRelease", "helm.toolkit.fluxcd.io"))
GITOPS_MANAGED = "GitOpsManaged"


@dataclass(frozen=True)
class Settings:
    """Where Argo CD's Applications live (`rewind run --argocd-namespace`)."""

    argocd_namespace: str = "argocd"


SETTINGS = Settings()


# --- detection (pure) ------------------------------------------------------------------------


def owner_of(obj: dict, argocd_namespace: str) -> tuple[str, str, str, bool] | None:
    """(kind, namespace, name, certain) of the GitOps owner an object's metadata names, or None.
    `certain` is False for the bare `app.kubernetes.io/instance` label (Helm sets it too): it
    counts only when that Application exists. A tracking id's app `ns_name` is an Application in
    namespace `ns` (Argo CD's applications in any namespace)."""
    meta = obj.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    for kind, prefix in FLUX_LABELS:
        name, ns = labels.get(f"{prefix}/name"), labels.get(f"{prefix}/namespace")
        if name and ns:
            return kind, ns, name, True
    tracking = annotations.get(ARGO_TRACKING)
    if tracking and ":" in tracking:
        app = tracking.split(":", 1)[0]
        ns, _, name = app.rpartition("_")
        return "Application", ns or argocd_namespace, name, True
    if labels.get(ARGO_INSTANCE):
        return "Application", argocd_namespace, labels[ARGO_INSTANCE], False
    return None


def sync_on(kind: str, owner: dict) -> bool:
    """Whether the owner's controller would put Git's state back on its own."""
    spec = owner.get("spec") or {}
    if kind == "Application":
        return (spec.get("syncPolicy") or {}).get("automated") is not None
    return spec.get("suspend") is not True


def sync_setting(kind: str, owner: dict):
    """What the suspension replaces (and `resume-sync` puts back)."""
    spec = owner.get("spec") or {}
    if kind == "Application":
        return (spec.get("syncPolicy") or {}).get("automated")
    return spec.get("suspend", False)


def suspend_patch(kind: str, owner: dict) -> list[dict]:
    guard = {"op": "test", "path": "/metadata/resourceVersion", "value": owner["metadata"]["resourceVersion"]}
    if kind == "Application":
        return [guard, {"op": "remove", "path": "/spec/syncPolicy/automated"}]
    return [guard, {"op": "add", "path": "/spec/suspend", "value": True}]


def resume_patch(kind: str, owner: dict, previous) -> list[dict]:
    guard = {"op": "test", "path": "/metadata/resourceVersion", "value": owner["metadata"]["resourceVersion"]}
    if kind == "Application":
        if (owner.get("spec") or {}).get("syncPolicy") is None:
            return [guard, {"op": "add", "path": "/spec/syncPolicy", "value": {"automated": previous}}]
        return [guard, {"op": "add", "path": "/spec/syncPolicy/automated", "value": previous}]
    return [guard, {"op": "add", "path": "/spec/suspend", "value": bool(previous)}]


def describe(o) -> str:
    tool = "Argo CD" if o.kind == "Application" else "Flux"
    return f"{tool} {o.kind} {o.namespace}/{o.name}"


def what_to_change(owner: GitOpsOwner, plan: list[PlanStep]) -> str:
    """What Git must hold, per managed target, before the owner's sync may be resumed."""
    out = []
    for target in owner.manages:
        kind, _, name = target.partition("/")
        if kind == "Secret":
            change = next((c for s in plan for c in s.secrets if c.name == name), None)
            out.append(f"Secret {name}: the data restored from {change.source} (sha256 {change.to_hash[:12]}, "
                       f"keys {', '.join(change.keys)})" if change else f"Secret {name}: the data restored")
            continue
        step = next((s for s in plan if s.kind == StepKind.WORKLOAD_REVISION.value
                     and s.target.kind == kind and s.target.name == name), None)
        if step is None:
            continue
        images = sorted({line.split("image:", 1)[1].strip() for line in (step.diff or "").splitlines()
                         if line.startswith("+") and "image:" in line})
        out.append(f"{kind} {name}: the pod template of revision {step.to_revision}"
                   + (f" (image {', '.join(images)})" if images else "")
                   + f"; the whole change is status.plan[{step.name}].diff")
    return "; ".join(out)


# --- preflight -------------------------------------------------------------------------------


def _targets(req: Request) -> list[tuple[str, Resource, str]]:
    from rewind.steps.workload import KINDS

    spec = req.spec
    out = [(t.kind, KINDS[t.kind].resource, t.name) for t in spec.application or []]
    out += [("Secret", SECRETS, t.name) for t in spec.secrets or []]
    out += [("Secret", SECRETS, c.secret_name) for c in spec.certificates or []]
    return out


def _read_owner(kube: Kube, kind: str, namespace: str, name: str) -> dict | None:
    try:
        return kube.get(RESOURCES[kind], namespace, name)
    except KubeError as e:
        if e.not_found:   # no such object, or the tool's CRD is not installed
            return None
        if e.transient:
            raise
        raise StepFailed(C.FORBIDDEN if e.forbidden else C.OPERATOR_ERROR,
                         f"the operator cannot read {kind} {namespace}/{name}, which manages targets of "
                         f"this rollback ({e.status} {e.reason}); it must, to suspend its sync") from None


def mode_of(req: Request) -> GitOpsMode:
    if req.spec.gitops is not None and req.spec.gitops.mode is not None:
        return GitOpsMode(req.spec.gitops.mode)
    return GitOpsMode((req.policy or P.SEED_POLICY).gitops.mode)


def preflight(kube: Kube, req: Request) -> Found:
    owners: dict[tuple[str, str, str], list[str]] = {}
    warnings: list[str] = []
    for kind, res, name in _targets(req):
        try:
            obj = kube.get(res, req.namespace, name)
        except KubeError:
            continue   # the target's own preflight reports it
        found = owner_of(obj, SETTINGS.argocd_namespace)
        if found is None:
            continue
        okind, ons, oname, certain = found
        if not certain and _read_owner(kube, okind, ons, oname) is None:
            continue
        owners.setdefault((okind, ons, oname), []).append(f"{kind}/{name}")
    if not owners:
        return Found()
    mode = mode_of(req)
    policy = req.policy or P.SEED_POLICY
    steps = []
    for (okind, ons, oname), manages in owners.items():
        owner = GitOpsOwner(kind=okind, namespace=ons, name=oname, manages=manages)
        what, targets = describe(owner), ", ".join(manages)
        obj = _read_owner(kube, okind, ons, oname)
        if obj is None:
            warnings.append(f"{targets} name {what} as their owner, which does not exist; nothing to suspend")
            continue
        if not sync_on(okind, obj):
            warnings.append(f"{what} manages {targets}; its automated sync is already off: sync it "
                            "only once Git holds what this rollback restores")
            continue
        if mode == GitOpsMode.IGNORE:
            warnings.append(f"{what} manages {targets} and syncs automatically; gitops mode Ignore: it is "
                            "not suspended and may put Git's state back within seconds")
            continue
        if mode == GitOpsMode.REFUSE:
            raise StepFailed(GITOPS_MANAGED, f"{what} manages {targets} and syncs automatically, and "
                             "gitops mode is Refuse; roll back in Git, or use gitops mode Suspend")
        requester = req.spec.requester
        if requester is not None and policy.gitops.missing_permission == P.MissingPermission.WARN:
            from rewind import authz
            if not authz.allowed(kube, requester, ons, "patch", RESOURCES[okind].group,
                                 RESOURCES[okind].plural, oname):
                warnings.append(f"{what} manages {targets}, but {requester.username} may not patch it "
                                "to suspend its sync (policy gitops.missingPermission: Warn): it is not "
                                "suspended and may put Git's state back within seconds")
                continue
        key = f"{okind.lower()}/{ons}/{oname}"
        ref = TargetRef(kind=okind, name=f"{ons}/{oname}")
        steps.append(PlanStep(name=f"gitops-suspend/{key}", kind=StepKind.GITOPS_SUSPEND, target=ref,
                              action=StepAction.RESTORE, owner=owner))
        steps.append(PlanStep(name=f"gitops-hold/{key}", kind=StepKind.GITOPS_HOLD, target=ref,
                              action=StepAction.RESTORE, owner=owner, cleanup=True))
    return Found(steps=steps, warnings=warnings)


# --- execution -------------------------------------------------------------------------------


def _record(ctx: Context, o: GitOpsOwner) -> GitOpsRecord | None:
    return next((r for r in ctx.status.gitops
                 if (r.kind, r.namespace, r.name) == (o.kind, o.namespace, o.name)), None)


def advance(ctx: Context, step: PlanStep, rec: StepRecord) -> None:
    if step.kind == StepKind.GITOPS_HOLD.value:
        return _hold(ctx, step, rec)
    o, what = step.owner, describe(step.owner)
    obj = _read_owner(ctx.kube, o.kind, o.namespace, o.name)
    if obj is None:
        raise StepFailed(C.TARGET_NOT_FOUND, f"{what} no longer exists; nothing was changed")
    record = _record(ctx, o)
    if record is None:
        if not sync_on(o.kind, obj):
            ctx.skip(step, rec, f"{what}'s automated sync was already off; nothing to suspend.")
            return None
        # What the suspension replaces, recorded with the intent, before the write.
        ctx.status.gitops.append(GitOpsRecord(kind=o.kind, namespace=o.namespace, name=o.name,
                                              previous=json.dumps(sync_setting(o.kind, obj))))
        record = ctx.status.gitops[-1]
    ctx.begin(step, rec, f"Suspending {what}'s automated sync for the rollback.")
    if sync_on(o.kind, obj):
        try:
            ctx.kube.patch(RESOURCES[o.kind], o.namespace, o.name, suspend_patch(o.kind, obj), JSON_PATCH)
        except KubeError as e:
            if e.transient:
                raise
            raise StepFailed(C.CONFLICT if e.status in (409, 422) else C.OPERATOR_ERROR,
                             f"suspending {what}'s sync failed ({e.status} {e.reason}); no target "
                             "was changed") from None
        crashpoints.reach("GitOpsSuspend:after-write")
    record.suspended_at = record.suspended_at or ctx.clock()
    ctx.succeed(step, rec, f"{what}'s automated sync is suspended (it was {record.previous}); it stays "
                           "so after the rollback.", "GitOpsSyncSuspended")
    return None


def _hold(ctx: Context, step: PlanStep, rec: StepRecord) -> None:
    o, what = step.owner, describe(step.owner)
    suspend = next((r for s, r in zip(ctx.status.plan, ctx.status.steps)
                    if s.kind == StepKind.GITOPS_SUSPEND.value and s.owner == o), None)
    record = _record(ctx, o)
    if record is None or suspend is None or suspend.state != StepState.SUCCEEDED.value:
        ctx.skip(step, rec, f"Nothing held: {what}'s sync was not suspended by this rollback.")
        return None
    obj = _read_owner(ctx.kube, o.kind, o.namespace, o.name)
    change = what_to_change(o, ctx.status.plan) or "what this rollback restored"
    record.must_change_in_git = change
    if obj is not None and sync_on(o.kind, obj):
        raise StepFailed("GitOpsSyncResumed", f"{what}'s automated sync was turned on again during the "
                         f"rollback, so it may have put Git's state back; check {', '.join(o.manages)}. "
                         f"Git must hold: {change}")
    message = (f"{what} stays suspended: resuming its sync now would put the broken state back. "
               f"Change Git to hold {change}; then `kubectl rewind resume-sync {ctx.name} -n {ctx.namespace}`.")
    ctx.succeed(step, rec, message, emit=False)
    ctx.emit("Warning", "GitOpsSyncHeld", message)
    return None


def note(ctx: Context) -> str:
    """For the rollback's final message (and so its notification and report): which owners stay
    suspended, and what must change in Git."""
    held = [r for r in ctx.status.gitops if r.suspended_at and not r.resumed]
    if not held:
        return ""
    parts = [f"{describe(r)} stays suspended until Git holds {r.must_change_in_git or 'what was restored'}"
             for r in held]
    return (" GitOps: " + "; ".join(parts) + f". Then resume it: kubectl rewind resume-sync {ctx.name} "
            f"-n {ctx.namespace}.")
