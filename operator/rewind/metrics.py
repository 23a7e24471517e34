"""Prometheus metrics of the operator (served by `rewind run --metrics-address`).

Counters and histograms are recorded where the engine moves a Rollback (a step finishes, a
rollback ends, a check is measured, a notification fails); `rewind_rollbacks` is a gauge of the
Rollbacks this process drives, by phase and severity. No label ever holds a name, URL or value
from a spec or Secret: only Rewind's own vocabulary (phases, severities, step kinds, outcomes).
"""

from __future__ import annotations

import datetime
import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)

ROLLBACKS_FINISHED = Counter(
    "rewind_rollbacks_finished", "Rollbacks that reached a terminal phase, by outcome.",
    ["severity", "phase", "reason"])
TIME_TO_RESTORE = Histogram(
    "rewind_time_to_restore_seconds", "From the start of a rollback to its end, by severity.",
    ["severity", "phase"], buckets=_BUCKETS)
WITHIN_TARGET = Counter(
    "rewind_rollbacks_within_target", "Finished rollbacks, by whether they met the severity's deadline.",
    ["severity", "within"])
TARGET_SECONDS = Gauge("rewind_severity_target_seconds", "The deadline of each severity.", ["severity"])
STEP_DURATION = Histogram(
    "rewind_step_duration_seconds", "How long each step took, by step kind and outcome.",
    ["kind", "state"], buckets=_BUCKETS)
VERIFICATIONS = Counter(
    "rewind_verification_outcomes", "Verification check outcomes, by check kind.", ["kind", "outcome"])
NOTIFICATION_FAILURES = Counter(
    "rewind_notification_failures", "Notifications that could not be delivered (an attempt, or for good).",
    ["event", "final"])
APPROVALS_WAITED = Histogram(
    "rewind_approval_wait_seconds", "How long rollbacks waited for their approvals.", ["severity"],
    buckets=_BUCKETS)
LEADER = Gauge("rewind_leader", "1 while this operator process is the one that drives rollbacks.")
ACTIVE = Gauge("rewind_rollbacks", "Rollbacks this process drives, by phase and severity.", ["phase", "severity"])
ERRORS = Counter("rewind_operator_errors", "Unexpected errors while driving a rollback (retried).")

OVERDUE = Gauge("rewind_rollbacks_overdue",
                 "Rollbacks this process drives that are past their severity's deadline and not finished.")

_lock = threading.Lock()
_active: dict[str, tuple[str, str]] = {}
_deadlines: dict[str, datetime.datetime] = {}


def _overdue() -> int:
    now = datetime.datetime.now(datetime.timezone.utc)
    with _lock:
        return sum(1 for d in _deadlines.values() if d < now)


OVERDUE.set_function(_overdue)


def track(uid: str, phase: str | None, severity: str, deadline: datetime.datetime | None = None) -> None:
    """The Rollback `uid` is in `phase` now, due by `deadline` (phase None: no longer driven here)."""
    with _lock:
        old = _active.pop(uid, None)
        _deadlines.pop(uid, None)
        if old:
            ACTIVE.labels(*old).dec()
        if phase:
            _active[uid] = (phase, severity)
            ACTIVE.labels(phase, severity).inc()
            if deadline:
                _deadlines[uid] = deadline


def observe_step(kind: str, rec) -> None:
    if rec.started_at and rec.finished_at:
        STEP_DURATION.labels(kind, rec.state).observe((rec.finished_at - rec.started_at).total_seconds())


def serve(address: str) -> None:
    """Serves /metrics on `address` ("host:port" or ":port")."""
    host, _, port = address.rpartition(":")
    from rewind import plan
    for severity, delta in plan.DEADLINES.items():
        TARGET_SECONDS.labels(severity).set(delta.total_seconds())
    start_http_server(int(port), addr=host or "0.0.0.0", registry=REGISTRY)
