"""Planning: a pure function of the spec and what preflight found. No cluster access here.

Each step kind's preflight (steps/*) resolves its own targets; `order` puts everything found into
the seed's runbook order, which lives here and nowhere else: suspend the GitOps sync of the
targets' owners, enter maintenance, silence monitoring, the database, the Secrets (and the
workloads that use them), the application's workloads in the spec's order, then the checks, then the cleanup (exit maintenance, resume
monitoring), and last the GitOps hold (the owners stay suspended; what Git must hold).
"""

from __future__ import annotations

import datetime

from rewind.api.v1alpha1 import PlanStep, StepKind, StepRecord, StepState

# The seed's decision matrix: how fast each severity must be resolved.
DEADLINES = {
    "Critical": datetime.timedelta(minutes=5),
    "High": datetime.timedelta(minutes=15),
    "Medium": datetime.timedelta(minutes=30),
    "Low": datetime.timedelta(hours=2),
}

DONE_STATES = {StepState.SUCCEEDED.value, StepState.SKIPPED.value}
FINISHED_STATES = DONE_STATES | {StepState.FAILED.value, StepState.INTERRUPTED.value}

# The runbook's order, by step kind; steps of one rank keep the order their preflight gave them
# (the database's check, backup, restore, verify, actions, swap; workloads as the spec lists them).
RANK = {kind: rank for rank, kinds in enumerate([
    [StepKind.GITOPS_SUSPEND],
    [StepKind.MAINTENANCE_ENTER],
    [StepKind.MONITORING_SUSPEND],
    [StepKind.DATABASE_CHECK, StepKind.DATABASE_BACKUP, StepKind.DATABASE_RESTORE,
     StepKind.DATABASE_VERIFY, StepKind.DATABASE_ACTION, StepKind.DATABASE_SWAP],
    [StepKind.SECRETS_RESTORE],
    [StepKind.CONSUMERS_RESTART],
    [StepKind.WORKLOAD_REVISION],
    [StepKind.TLS_VERIFY],
    [StepKind.HTTP_CHECK, StepKind.SQL_CHECK, StepKind.TLS_CHECK],
    [StepKind.MAINTENANCE_EXIT],
    [StepKind.MONITORING_RESUME],
    [StepKind.GITOPS_HOLD],
]) for kind in kinds}


def deadline_for(severity: str, started: datetime.datetime) -> datetime.datetime:
    return started + DEADLINES[severity]


def order(found: list[PlanStep]) -> list[PlanStep]:
    """The plan: every step found, in the runbook's order (stable within a kind's rank)."""
    names = [s.name for s in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two plan steps share a name: {', '.join(duplicates)}")
    return sorted(found, key=lambda s: RANK[StepKind(s.kind)])


def workload_step_name(kind: str, name: str) -> str:
    return f"{kind.lower()}/{name}"


def initial_ledger(plan: list[PlanStep]) -> list[StepRecord]:
    return [StepRecord(name=s.name, state=StepState.PENDING) for s in plan]


def current_index(steps: list[StepRecord]) -> int | None:
    """Index of the first step not yet finished (done, failed or interrupted), or None when all are."""
    for i, s in enumerate(steps):
        if s.state not in FINISHED_STATES:
            return i
    return None


def progress(steps: list[StepRecord]) -> str:
    i = current_index(steps)
    total = len(steps)
    return f"{total}/{total}" if i is None else f"{i + 1}/{total}"


def format_duration(delta: datetime.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"
