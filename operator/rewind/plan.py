"""Planning: a pure function of the spec and what preflight found. No cluster access here."""

from __future__ import annotations

import datetime

from rewind.api.v1alpha1 import PlanStep, RollbackSpec, StepRecord, StepState

# The seed's decision matrix: how fast each severity must be resolved.
DEADLINES = {
    "Critical": datetime.timedelta(minutes=5),
    "High": datetime.timedelta(minutes=15),
    "Medium": datetime.timedelta(minutes=30),
    "Low": datetime.timedelta(hours=2),
}

DONE_STATES = {StepState.SUCCEEDED.value, StepState.SKIPPED.value}
FINISHED_STATES = DONE_STATES | {StepState.FAILED.value, StepState.INTERRUPTED.value}


def deadline_for(severity: str, started: datetime.datetime) -> datetime.datetime:
    return started + DEADLINES[severity]


def order(spec: RollbackSpec, data: list[PlanStep], workloads: dict[str, PlanStep]) -> list[PlanStep]:
    """The plan's order, as in the seed's runbook: the data first (the database's steps, then the
    Secrets), then the application's workloads in the order the spec lists them."""
    return [*data, *(workloads[workload_step_name(t.kind, t.name)] for t in spec.application or [])]


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
