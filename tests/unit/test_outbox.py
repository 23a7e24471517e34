"""The notification outbox's routing and keys, and the DeadlineMissed event, on the engine's own
code with the status kept in memory (delivery itself is tested against real receivers in
tests/integration/test_notify_adapters.py and the operator tests)."""

from __future__ import annotations

import datetime

from rewind import engine
from rewind.api.v1alpha1 import NotificationEvent
from rewind.context import Context
from rewind.steps import notifications

T0 = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.timezone.utc)
CHANNELS = [
    {"name": "all", "webhook": {"urlSecretRef": {"name": "a", "key": "url"}}},
    {"name": "pager", "severities": ["Critical"], "webhook": {"urlSecretRef": {"name": "p", "key": "url"}}},
    {"name": "ends", "events": ["Succeeded", "Failed"], "slack": {"webhookSecretRef": {"name": "s", "key": "url"}}},
]


def _ctx(severity: str, minutes: float = 1, dry_run: bool = False) -> Context:
    obj = {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback",
           "metadata": {"name": "rb", "namespace": "ns", "uid": "uid-1", "resourceVersion": "1", "generation": 1},
           "spec": {"severity": severity, "reason": "bad", "application": [{"name": "web"}], "dryRun": dry_run,
                    "notifications": CHANNELS},
           "status": {"phase": "Running", "startedAt": "2026-12-01T10:00:00Z",
                      "deadline": "2026-12-01T10:05:00Z" if severity == "Critical" else "2026-12-01T10:15:00Z"}}

    def save(status):
        obj["status"] = status
        return obj

    return Context(kube=None, obj=obj, save_status=save, emit=lambda *e: None,
                   clock=lambda: T0 + datetime.timedelta(minutes=minutes))


def _queued(ctx):
    return sorted((r.channel, r.event) for r in ctx.status.notifications)


def test_events_are_routed_by_severity_and_event():
    high, critical = _ctx("High"), _ctx("Critical")
    for ctx in (high, critical):
        notifications.queue(ctx, NotificationEvent.STARTED, "started")
        notifications.queue(ctx, NotificationEvent.SUCCEEDED, "done")
    assert _queued(high) == [("all", "Started"), ("all", "Succeeded"), ("ends", "Succeeded")]
    assert _queued(critical) == [("all", "Started"), ("all", "Succeeded"), ("ends", "Succeeded"),
                                 ("pager", "Started"), ("pager", "Succeeded")]


def test_an_event_is_queued_once_with_a_key_that_does_not_change():
    ctx = _ctx("High")
    notifications.queue(ctx, NotificationEvent.STARTED, "started")
    notifications.queue(ctx, NotificationEvent.STARTED, "started again (a restart)")
    records = [r for r in ctx.status.notifications if r.channel == "all"]
    assert len(records) == 1 and records[0].message == "started"
    assert records[0].key == notifications.key_for("uid-1", "all", "Started")
    assert records[0].phase == "Running"


def test_a_dry_run_tells_nobody():
    ctx = _ctx("Critical", dry_run=True)
    notifications.queue(ctx, NotificationEvent.STARTED, "started")
    assert ctx.status.notifications == []


def test_a_missed_deadline_is_told_once_while_the_rollback_goes_on():
    ctx = _ctx("Critical", minutes=6)
    engine._check_deadline(ctx)
    engine._check_deadline(ctx)
    assert _queued(ctx) == [("all", "DeadlineMissed"), ("pager", "DeadlineMissed")]
    assert ctx.status.within_target is False and ctx.status.phase == "Running"
    assert "The Critical deadline (10:05:00Z) passed" in ctx.status.notifications[0].message
