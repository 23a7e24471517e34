"""Between the plan and the first step: the policy's approvals, then one lease per target.

Approvals are RollbackApproval objects whose approver the API server stamped (admission policy);
whether that person holds the role is asked of the API server (SubjectAccessReview: verb
`approve` on `rollbackapprovals`, resource name = the role, in the Rollback's namespace), at the
moment the operator counts it. The deadline clock runs while a Rollback waits for them.

Leases are coordination.k8s.io Leases in the Rollback's namespace, one per target (workload,
Secret, Service, database), held by the Rollback's UID. A second Rollback touching a held target
waits for it (or is refused, as the policy says), with a condition naming the holder. Leases go at
the end, after a failure (the terminal write), with the Rollback (owner reference), and expire by
themselves after a crash (leaseDurationSeconds, from the holder's deadline).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re

from rewind import authz, metrics
from rewind.adapters.kube import KubeError, Resource, owner_reference
from rewind.api import policy as P
from rewind.api.errors import ReasonedError
from rewind.api.v1alpha1 import (
    TERMINAL_PHASES, ApprovalRecord, NotificationEvent, Phase, StepKind, TargetLease,
)
from rewind.context import Context, Wait, Watched

log = logging.getLogger(__name__)

LEASES = Resource("coordination.k8s.io", "v1", "leases")
APPROVED = "Approved"            # condition type
HELD = "TargetsFree"             # condition type: False while another Rollback holds a target
AWAITING = "AwaitingApproval"
DENIED = "Denied"
BREAK_GLASS = "BreakGlass"
NOT_REQUIRED = "NotRequired"
TARGET_HELD = "TargetHeld"
RECHECK = datetime.timedelta(minutes=5)     # approvals can expire: count again this often at least
LEASE_MARGIN = datetime.timedelta(minutes=15)


def _micro(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(s: str | None) -> datetime.datetime | None:
    if not s:
        return None
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


# --- approvals -------------------------------------------------------------------------------


def judge(ctx: Context) -> tuple[list[ApprovalRecord], dict[str, list[str]], ApprovalRecord | None, str]:
    """Every RollbackApproval of this Rollback, judged: (records, approvers counted per role,
    the first valid denial, the list's resourceVersion)."""
    spec, policy = ctx.rollback.spec, ctx.policy
    listing = ctx.kube.request("GET", authz.APPROVALS.path(ctx.namespace))
    now = ctx.clock()
    valid_for = datetime.timedelta(minutes=policy.approval_valid_minutes)
    records, counted, denial = [], {}, None
    used: set[str] = set()
    items = sorted(listing.get("items", []), key=lambda o: o["metadata"].get("creationTimestamp", ""))
    for obj in items:
        try:
            a = P.RollbackApproval.model_validate(obj).spec
        except ValueError:
            continue
        if a.rollback != ctx.name:
            continue
        at = _parse(obj["metadata"].get("creationTimestamp"))
        who = a.approver.username if a.approver else ""
        rec = ApprovalRecord(approval=obj["metadata"]["name"], role=a.role, approver=who or "(not stamped)",
                             decision=a.decision, at=at, counted=False)
        if a.approver is None or not who:
            rec.reason = "NotStamped"
        elif a.rollback_uid and a.rollback_uid != ctx.uid:
            rec.reason = "OtherRollback"
        elif at is not None and now - at > valid_for:
            rec.reason = "Expired"
        elif spec.requester and who == spec.requester.username and not policy.self_approval:
            rec.reason = "SelfApproval"
        elif not authz.allowed(ctx.kube, a.approver, ctx.namespace, P.APPROVE_VERB, "rewind.dev",
                               P.APPROVAL_PLURAL, a.role):
            rec.reason = "NotInRole"
        elif a.decision == P.ApprovalDecision.DENY.value:
            rec.counted = True
            denial = denial or rec
        elif who in used:
            rec.reason = "AlreadyCounted"      # one person, one role: two roles need two people
        elif len(counted.get(a.role, [])) < _needed(policy, spec.severity).get(a.role, 0):
            rec.counted = True
            used.add(who)
            counted.setdefault(a.role, []).append(who)
        else:
            rec.reason = "NotNeeded"
        records.append(rec)
    return records, counted, denial, listing.get("metadata", {}).get("resourceVersion", "")


def _needed(policy, severity: str) -> dict[str, int]:
    return {r.role: r.count for r in policy.rule(severity).approvals}


def _missing(needed: dict[str, int], counted: dict[str, list[str]]) -> list[str]:
    return [f"{role} ({len(counted.get(role, []))} of {n})" for role, n in needed.items()
            if len(counted.get(role, [])) < n]


def _who(counted: dict[str, list[str]]) -> str:
    return "; ".join(f"{role}: {', '.join(names)}" for role, names in counted.items())


def approvals(ctx: Context) -> Wait | None:
    """None when the rollback may start (approved, not required, or break-glass); else a Wait
    (phase AwaitingApproval), or the rollback ends (a denial)."""
    spec, policy = ctx.rollback.spec, ctx.policy
    needed = _needed(policy, spec.severity)
    now = ctx.clock()
    if not needed:
        ctx.status.approved_at = now
        ctx.condition(APPROVED, "True", NOT_REQUIRED, f"The policy ({ctx.status.policy}) needs no "
                      f"approval for a {spec.severity} rollback.")
        return None
    records, counted, denial, rv = judge(ctx)
    ctx.status.approvals = records
    if denial is not None:
        message = (f"Denied by {denial.approver} ({denial.role}) in {denial.approval}; nothing was "
                   "changed.")
        ctx.condition(APPROVED, "False", DENIED, message)
        from rewind import engine
        return engine.refuse(ctx, DENIED, message)
    missing = _missing(needed, counted)
    if not missing:
        ctx.status.approved_at = now
        ctx.status.phase = Phase.RUNNING.value
        metrics.APPROVALS_WAITED.labels(spec.severity).observe((now - ctx.status.started_at).total_seconds())
        ctx.condition(APPROVED, "True", APPROVED, f"Approved by {_who(counted)}.")
        ctx.emit("Normal", APPROVED, f"Approved by {_who(counted)}.")
        return None
    rule = policy.rule(spec.severity)
    if spec.break_glass and rule.break_glass:
        ctx.status.approved_at, ctx.status.break_glass = now, True
        ctx.status.phase = Phase.RUNNING.value
        message = (f"BREAK-GLASS: started by {spec.requester.username} before its approvals "
                   f"(still needed: {', '.join(missing)}); they are collected afterwards and the "
                   "report names them.")
        ctx.condition(APPROVED, "False", BREAK_GLASS, message)
        from rewind.steps import notifications
        notifications.queue(ctx, NotificationEvent.BREAK_GLASS, message)
        ctx.emit("Warning", BREAK_GLASS, message)
        return None
    message = (f"Waiting for approval by {', '.join(missing)} under {ctx.status.policy}; the "
               f"{spec.severity} deadline is already running. Approve with: kubectl rewind approve "
               f"{ctx.name} -n {ctx.namespace} --role ROLE")
    first = ctx.status.phase != Phase.AWAITING_APPROVAL.value
    ctx.status.phase = Phase.AWAITING_APPROVAL.value
    ctx.condition(APPROVED, "False", AWAITING, message)
    if first:
        from rewind.steps import notifications
        notifications.queue(ctx, NotificationEvent.AWAITING_APPROVAL, message)
        ctx.save()
        ctx.emit("Normal", AWAITING, message)
        notifications.deliver(ctx)
    else:
        ctx.save()
    return Wait(at=now + RECHECK, watch=Watched(authz.APPROVALS, None, rv), reason="approvals")


def record_late_approvals(ctx: Context) -> None:
    """After a break-glass start: the approvals given since, for the report and status."""
    if not ctx.status.break_glass:
        return
    try:
        records, counted, denial, _ = judge(ctx)
    except (KubeError, ReasonedError) as e:
        log.warning("rollback %s/%s: cannot count its approvals: %s", ctx.namespace, ctx.name, e)
        return
    ctx.status.approvals = records
    missing = _missing(_needed(ctx.policy, ctx.rollback.spec.severity), counted)
    if denial is not None:
        ctx.condition(APPROVED, "False", DENIED, f"Break-glass rollback denied afterwards by "
                      f"{denial.approver} ({denial.role}).")
    elif not missing:
        ctx.condition(APPROVED, "True", APPROVED, f"Break-glass; approved afterwards by {_who(counted)}.")


# --- one rollback per target -------------------------------------------------------------------


def targets(ctx: Context) -> list[tuple[str, str]]:
    """(kind, name) of everything the plan writes, in a fixed order."""
    out: set[tuple[str, str]] = set()
    for step in ctx.status.plan:
        kind = StepKind(step.kind)
        if kind == StepKind.WORKLOAD_REVISION:
            out.add((step.target.kind, step.target.name))
        elif kind == StepKind.CONSUMERS_RESTART:
            out.update(authz.consumers(step))
        elif kind == StepKind.SECRETS_RESTORE:
            out.update(("Secret", c.name) for c in step.secrets)
        elif kind == StepKind.MAINTENANCE_ENTER and step.target.kind == "Service":
            out.add(("Service", step.target.name))
    spec = ctx.rollback.spec
    if spec.database is not None:
        ref = spec.database.connection.secret_ref
        out.add(("Database", f"{ref.name}.{ref.key}"))
    for w in (spec.monitoring.scale_down or []) if spec.monitoring else []:
        out.add((w.kind, w.name))
    return sorted(out)


def lease_name(kind: str, name: str) -> str:
    """rewind.<kind>.<name>, a valid object name (a hash when the name does not fit)."""
    base = f"rewind.{kind.lower()}.{name.lower()}"
    if len(base) <= 253 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", base) and ".." not in base:
        return base
    return f"rewind.{kind.lower()}.{hashlib.sha256(name.encode()).hexdigest()[:32]}"


def _holder_live(ctx: Context, lease: dict) -> str | None:
    """The holder's `namespace/name` when another live Rollback holds this lease, else None."""
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if holder.endswith(f"/{ctx.uid}") or not holder:
        return None
    renewed = _parse(spec.get("renewTime") or spec.get("acquireTime"))
    duration = datetime.timedelta(seconds=spec.get("leaseDurationSeconds") or 0)
    if renewed is None or renewed + duration < ctx.clock():
        return None                                   # expired: its holder crashed for good
    ns_name, _, uid = holder.rpartition("/")
    ns, _, name = ns_name.partition("/")
    try:
        other = ctx.kube.get(authz.Resource("rewind.dev", "v1alpha1", "rollbacks"), ns, name)
    except KubeError as e:
        if e.not_found:
            return None
        raise
    if other["metadata"]["uid"] != uid or (other.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return None
    return ns_name


def acquire(ctx: Context) -> Wait | None:
    """All the targets' leases, or none: None once held (recorded in status.leases, saved with the
    first step's intent); a Wait on the holder's lease while another Rollback holds one."""
    now = ctx.clock()
    until = max(ctx.status.deadline or now, now) + LEASE_MARGIN
    duration = int((until - now).total_seconds())
    identity = f"{ctx.namespace}/{ctx.name}/{ctx.uid}"
    taken: list[TargetLease] = []
    for kind, name in targets(ctx):
        lname = lease_name(kind, name)
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": lname, "namespace": ctx.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "rewind"},
                             "annotations": {"rewind.dev/target": f"{kind} {name}"},
                             "ownerReferences": [owner_reference(ctx.obj)]},
                "spec": {"holderIdentity": identity, "leaseDurationSeconds": duration,
                         "acquireTime": _micro(now), "renewTime": _micro(now)}}
        try:
            ctx.kube.create(LEASES, ctx.namespace, body)
        except KubeError as e:
            if not e.conflict:
                raise
            current = ctx.kube.get(LEASES, ctx.namespace, lname)
            holder = _holder_live(ctx, current)
            if holder is not None:
                release(ctx, taken)
                return _held(ctx, kind, name, holder, current)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                ctx.kube.request("PUT", LEASES.path(ctx.namespace, lname), body=body)
            except KubeError as e2:
                if not e2.conflict:
                    raise
                release(ctx, taken)      # someone took it between the read and the write
                return Wait(at=ctx.clock(), reason="a target's lease changed hands; trying again")
        taken.append(TargetLease(lease=f"{ctx.namespace}/{lname}", target=f"{kind} {ctx.namespace}/{name}"))
    ctx.status.leases = taken
    if any(c.type == HELD for c in ctx.status.conditions):
        ctx.condition(HELD, "True", "TargetsHeld", "Every target is held by this rollback.")
    if ctx.status.phase == Phase.WAITING_FOR_TARGET.value:
        ctx.status.phase = Phase.RUNNING.value
    return None


def _held(ctx: Context, kind: str, name: str, holder: str, lease: dict) -> Wait | None:
    message = (f"{kind} {name} is held by Rollback {holder} (Lease {lease['metadata']['name']}); "
               "one rollback per target at a time.")
    if ctx.policy.concurrency == P.Concurrency.REFUSE.value:
        from rewind import engine
        return engine.refuse(ctx, TARGET_HELD, message + " The policy refuses a second one; nothing "
                             "was changed.")
    changed = ctx.status.phase != Phase.WAITING_FOR_TARGET.value
    ctx.status.phase = Phase.WAITING_FOR_TARGET.value
    ctx.condition(HELD, "False", TARGET_HELD, message + " This rollback starts when it is free.")
    ctx.save()
    if changed:
        ctx.emit("Normal", TARGET_HELD, message + " This rollback starts when it is free.")
    spec = lease.get("spec") or {}
    renewed = _parse(spec.get("renewTime")) or ctx.clock()
    expires = renewed + datetime.timedelta(seconds=spec.get("leaseDurationSeconds") or 0)
    return Wait(at=min(expires, ctx.clock() + RECHECK),
                watch=Watched(LEASES, lease["metadata"]["name"], lease["metadata"]["resourceVersion"]),
                reason=f"{kind} {name} held by {holder}")


def release(ctx: Context, leases: list[TargetLease] | None = None) -> None:
    """Deletes the leases this rollback holds (only if still its own)."""
    for held in (ctx.status.leases if leases is None else leases):
        ns, _, lname = held.lease.partition("/")
        try:
            current = ctx.kube.get(LEASES, ns, lname)
            if not (current.get("spec") or {}).get("holderIdentity", "").endswith(f"/{ctx.uid}"):
                continue
            ctx.kube.request("DELETE", LEASES.path(ns, lname), body={
                "preconditions": {"resourceVersion": current["metadata"]["resourceVersion"]}})
        except KubeError as e:
            if not (e.not_found or e.conflict):
                raise
    if leases is None:
        ctx.status.leases = []
