"""Condition types and reasons of a Rollback, and the helpers that set them.

Conditions follow `metav1.Condition` exactly (type, status, observedGeneration,
lastTransitionTime, reason, message). `Ready`, `Reconciling` and `Stalled` follow kstatus:
while the operator works, `Reconciling=True`; when it cannot go on without a person,
`Stalled=True`; `Ready=True` only when the rollback finished and did what it was asked.
Reasons are CamelCase; messages are sentences a person on call can act on.
"""

from __future__ import annotations

import datetime
from typing import Iterable

# --- types -----------------------------------------------------------------------------------

READY = "Ready"
"""True when the rollback finished successfully (or a dry run finished planning); False when it
failed or is still running. `kubectl wait --for=condition=Ready` waits on this."""

RECONCILING = "Reconciling"
"""True while the operator is working on the rollback; removed when it reaches a terminal phase."""

STALLED = "Stalled"
"""True when the rollback stopped and needs a person: it failed, or was interrupted. Never cleared
by the operator: a stalled rollback is final, a new Rollback is the way forward."""

PLANNED = "Planned"
"""True once every target was resolved and the plan was fixed in status; False with the reason
why preflight refused the rollback (then nothing was changed)."""

APPLICATION_RESTORED = "ApplicationRestored"
"""Domain condition for workloads: True when every Deployment/StatefulSet/DaemonSet of the plan is
at its wanted revision and rolled out; False while a rollout runs or when one failed."""

DATABASE_RESTORED = "DatabaseRestored"
"""Domain condition for the database: True once the restored database was swapped in under the
live name (the old one kept aside); False while the database steps run or when one failed."""

SECRETS_RESTORED = "SecretsRestored"
"""Domain condition for Secrets: True once every listed Secret holds its earlier data again."""

VERIFIED = "Verified"
"""True when the rollback's result was verified (for workloads: each runs the wanted revision's
template and is available); False when a verification failed."""

NOTIFIED = "Notified"
"""True when every notification of the run was sent; Unknown while some are being sent or
retried; False when one failed for good (the rollback itself is not affected)."""

HOOKS_UNDONE = "HooksUndone"
"""True when the maintenance window was exited and monitoring resumed; False when one could not
be put back (a person must do it by hand)."""

WITHIN_TARGET = "WithinTarget"
"""True when the rollback finished before the severity's deadline; False when the deadline passed
(set as soon as it passes, even while the rollback still runs)."""

# --- reasons ---------------------------------------------------------------------------------

# Progress
PENDING = "Pending"
"""The operator has seen the rollback and is about to plan it."""
PLANNING = "Planning"
"""Preflight is resolving the targets."""
PLAN_READY = "PlanReady"
"""Every target resolved; the plan is fixed in status."""
DRY_RUN = "DryRun"
"""`spec.dryRun` is true: the plan and its diffs are in status, nothing was changed."""
EXECUTING = "Executing"
"""A step of the plan is being applied."""
ROLLOUT_IN_PROGRESS = "RolloutInProgress"
"""A workload was patched; its controller is rolling it out."""
SUCCEEDED = "Succeeded"
"""Every step of the plan finished successfully."""
ALREADY_AT_REVISION = "AlreadyAtRevision"
"""The workload already runs the wanted revision's template; nothing had to change."""
ROLLED_BACK = "RolledBack"
"""The workload runs the wanted revision's template and the rollout completed."""
WORKLOADS_AVAILABLE = "WorkloadsAvailable"
"""Every workload of the plan runs its wanted revision's template and is available."""
NO_CHECKS = "NoChecks"
"""Nothing was there to verify (Verified=Unknown)."""
NOT_COMPLETED = "NotCompleted"
"""The rollback ended without completing, before its deadline (WithinTarget=False)."""
STEP_FAILED = "StepFailed"
"""A step failed (its own reason is in the step ledger)."""
CHECKS_PASSED = "ChecksPassed"
"""Every verification check recorded in status.verification passed."""
DEADLINE_MET = "DeadlineMet"
"""The rollback completed before the severity's deadline."""
DEADLINE_MISSED = "DeadlineMissed"
"""The severity's deadline passed before the rollback completed."""

SENT = "Sent"
"""Every notification was delivered."""
SENDING = "Sending"
"""Notifications are being delivered or retried."""
NOTIFICATION_FAILED = "NotificationFailed"
"""A notification could not be delivered after its retries."""
HOOK_FAILED = "HookFailed"
"""A maintenance or monitoring hook failed (entering: the rollback stopped before changing
anything; exiting or resuming: it must be put back by hand)."""
HOOKS_RESTORED = "HooksRestored"
"""The maintenance window was exited and monitoring resumed."""
VERIFICATION_FAILED = "VerificationFailed"
"""A verification check failed."""
VERIFICATION_INCONCLUSIVE = "VerificationInconclusive"
"""A verification check could not get an answer (Verified=Unknown)."""

# Preflight refusals (the rollback fails before changing anything)
INVALID_SPEC = "InvalidSpec"
"""The spec passed the CRD's schema but not the operator's own checks."""
TARGET_NOT_FOUND = "TargetNotFound"
"""A workload named in the spec does not exist in the Rollback's namespace."""
NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
"""A target names another namespace; a Rollback only touches its own namespace."""
REVISION_NOT_FOUND = "RevisionNotFound"
"""The wanted revision is unknown, or was pruned by revisionHistoryLimit."""
WORKLOAD_PAUSED = "WorkloadPaused"
"""The Deployment is paused (`kubectl rollout pause`); resume it first, as kubectl requires."""
FORBIDDEN = "Forbidden"
"""The operator lacks the RBAC permission it needs for a target."""
KEPT_DATABASE_GONE = "KeptDatabaseGone"
"""An undo's kept database (`<db>_pre_<uid8>`) no longer exists, or is not one Rewind kept."""

# Failures during execution
ROLLOUT_FAILED = "RolloutFailed"
"""The workload's rollout did not complete: its progress deadline passed."""
CONFLICT = "ConcurrentModification"
"""Someone else changed the workload between preflight and the write; nothing was written."""
INTERRUPTED = "Interrupted"
"""The operator stopped inside a step whose outcome it cannot know; a person must check."""
ABORTED = "Aborted"
"""Someone asked the rollback to stop (`kubectl rewind abort`, the annotation rewind.dev/abort):
no further step was started, the hooks were undone, and the rollback ended Failed."""
DELETED = "Deleted"
"""The Rollback was deleted before it finished; only its cleanup steps still ran."""
OPERATOR_ERROR = "OperatorError"
"""Calls kept failing (the Kubernetes API, PostgreSQL, a bug) and retries did not fix it."""

WAIT_TIMED_OUT = "WaitTimedOut"
"""A step waited (for a rollout, a Job, a restart, a name) past its own deadline, shown in
status.steps[].deadline while it waits; the step fails and nothing more is done."""

STATUSES = ("True", "False", "Unknown")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict], type_: str, status: str, reason: str, message: str,
                  generation: int, at: str | None = None) -> list[dict]:
    """Returns the conditions with `type_` set; lastTransitionTime changes only when the status does."""
    assert status in STATUSES, status
    at = at or now()
    out = []
    found = False
    for c in conditions:
        if c.get("type") == type_:
            found = True
            transition = c.get("lastTransitionTime") if c.get("status") == status else at
            c = {"type": type_, "status": status, "observedGeneration": generation,
                 "lastTransitionTime": transition or at, "reason": reason, "message": message}
        out.append(c)
    if not found:
        out.append({"type": type_, "status": status, "observedGeneration": generation,
                    "lastTransitionTime": at, "reason": reason, "message": message})
    return out


def remove_condition(conditions: list[dict], type_: str) -> list[dict]:
    return [c for c in conditions if c.get("type") != type_]


def get_condition(conditions: Iterable[dict], type_: str) -> dict | None:
    for c in conditions:
        if c.get("type") == type_:
            return c
    return None
