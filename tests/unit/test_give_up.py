"""What the engine does after repeated errors (`give_up`): maintenance exit and monitoring resume
still get their chance, and a rollback caught mid-step ends Interrupted, never Succeeded.

This is the one engine test without the real API server: forcing twelve consecutive unexpected
errors at a chosen step of a live operator cannot be done deterministically. The status writes
go to an in-memory stand-in that returns what it was given (as the API server does); nothing of
Rewind's own is replaced."""

from __future__ import annotations

import datetime

from rewind import engine
from rewind.context import Context

T0 = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.timezone.utc)


class _ConfigMaps:
    """Where the incident report goes when the rollback ends (an in-memory stand-in too)."""

    def __init__(self):
        self.created = []

    def create(self, res, namespace, body):
        assert res.plural == "configmaps"
        self.created.append(body)
        return body


def _ctx(steps: list[tuple[str, str, str, bool]]) -> tuple[Context, list]:
    obj = {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback",
           "metadata": {"name": "rb", "namespace": "ns", "uid": "u-1", "resourceVersion": "1", "generation": 1},
           "spec": {"severity": "High", "reason": "bad", "application": [{"name": "web"}],
                    "maintenance": {"service": {"name": "web", "selector": {"app": "maint"}}}},
           "status": {"phase": "Running", "startedAt": "2026-12-01T10:00:00Z", "deadline": "2026-12-01T10:15:00Z",
                      "plan": [{"name": n, "kind": k, "target": {"kind": "x", "name": "y"}, "action": "Restore",
                                "cleanup": c} for n, k, _, c in steps],
                      "steps": [{"name": n, "state": st} for n, _, st, _ in steps]}}
    events = []

    def save(status):
        obj["status"] = status
        return obj

    return Context(kube=_ConfigMaps(), obj=obj, save_status=save, emit=lambda *e: events.append(e),
                   clock=lambda: T0 + datetime.timedelta(minutes=6)), events


PLAN = [("maintenance/enter", "MaintenanceEnter", "Succeeded", False),
        ("deployment/web", "WorkloadRevision", "Running", False),
        ("maintenance/exit", "MaintenanceExit", "Pending", True)]


def test_a_step_caught_mid_way_is_interrupted_and_the_cleanup_gets_its_chance():
    ctx, events = _ctx(PLAN)
    assert engine.give_up(ctx, "Stopped after 12 consecutive errors.") is True
    st = ctx.status
    assert [s.state for s in st.steps] == ["Succeeded", "Interrupted", "Pending"]
    assert st.phase == "Running"                       # not over: the exit step runs next
    assert any("Exiting maintenance" in e[2] for e in events)


def test_a_cleanup_that_keeps_failing_ends_interrupted_with_the_hook_named():
    ctx, _ = _ctx(PLAN)
    engine.give_up(ctx, "Stopped after 12 consecutive errors.")
    ctx.status.steps[2].state = "Running"             # the exit step started, and errors again
    assert engine.give_up(ctx, "Stopped again.") is True   # once more, for the notification/report
    st = ctx.status
    assert st.phase == "Interrupted"
    assert [s.state for s in st.steps] == ["Succeeded", "Interrupted", "Failed"]
    ready = next(c for c in st.conditions if c.type == "Ready")
    assert ready.status == "False" and ready.reason == "Interrupted"
    assert "maintenance/exit failed" in ready.message
    hooks = next(c for c in st.conditions if c.type == "HooksUndone")
    assert hooks.status == "False"
    assert engine.give_up(ctx, "and again") is False   # terminal: nothing more to do


def test_a_cleanup_that_never_started_gets_one_chance_only():
    ctx, _ = _ctx(PLAN)
    assert engine.give_up(ctx, "errors") is True
    assert engine.give_up(ctx, "errors before the exit step could even start") is True
    st = ctx.status
    assert st.phase == "Interrupted"
    assert st.steps[2].state == "Failed" and "Could not run" in st.steps[2].message


def test_errors_between_steps_never_end_succeeded():
    ctx, _ = _ctx([("deployment/web", "WorkloadRevision", "Succeeded", False),
                   ("verify/http/x", "HttpCheck", "Pending", False)])
    engine.give_up(ctx, "errors")
    st = ctx.status
    assert st.phase == "Failed"
    assert st.steps[1].state == "Failed" and st.steps[1].reason == "OperatorError"
    assert next(c for c in st.conditions if c.type == "Ready").status == "False"
