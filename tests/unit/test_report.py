"""The incident report is a pure function of the Rollback: what it says must be what the status
says. (The operator test checks the ConfigMap the operator wrote against the live status.)"""

from __future__ import annotations

from rewind import incident


def _rollback(**status):
    return {
        "apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback",
        "metadata": {"name": "booking-oauth-outage", "namespace": "booking", "uid": "1234-abcd"},
        "spec": {"severity": "High", "reason": "OAuth failure after 2.4.0", "requestedBy": "alice@example.com",
                 "application": [{"name": "appointmentbooking"}]},
        "status": {
            "phase": "Succeeded", "startedAt": "2026-12-01T10:00:00Z", "completedAt": "2026-12-01T10:01:12Z",
            "deadline": "2026-12-01T10:15:00Z", "duration": "1m12s", "withinTarget": True,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                            "lastTransitionTime": "2026-12-01T10:01:12Z", "message": "Rolled back: 1 workload(s)."}],
            "plan": [
                {"name": "maintenance/enter", "kind": "MaintenanceEnter", "target": {"kind": "Service", "name": "web"}, "action": "Restore"},
                {"name": "deployment/appointmentbooking", "kind": "WorkloadRevision", "action": "Restore",
                 "target": {"kind": "Deployment", "name": "appointmentbooking"}, "currentRevision": 2, "toRevision": 1},
                {"name": "verify/http/health", "kind": "HttpCheck", "action": "Restore", "target": {"kind": "HTTP", "name": "http://x"}},
                {"name": "maintenance/exit", "kind": "MaintenanceExit", "action": "Restore", "cleanup": True,
                 "target": {"kind": "Service", "name": "web"}},
            ],
            "steps": [
                {"name": "maintenance/enter", "state": "Succeeded", "startedAt": "2026-12-01T10:00:01Z",
                 "finishedAt": "2026-12-01T10:00:02Z", "message": "Service web points at the maintenance backend."},
                {"name": "deployment/appointmentbooking", "state": "Succeeded", "startedAt": "2026-12-01T10:00:02Z",
                 "finishedAt": "2026-12-01T10:00:40Z", "message": "rolled out"},
                {"name": "verify/http/health", "state": "Succeeded", "message": "3 of 3 measurement(s), 0 failed"},
                {"name": "maintenance/exit", "state": "Succeeded", "message": "Service web points at its own pods again."},
            ],
            "verification": [{"name": "verify/http/health", "kind": "HTTP", "outcome": "Passed",
                              "detail": "3 of 3 | measurement(s)", "checkedAt": "2026-12-01T10:01:00Z"}],
            "notifications": [
                {"channel": "ops", "event": "Started", "key": "k1", "message": "m", "state": "Sent", "attempts": 2,
                 "queuedAt": "2026-12-01T10:00:00Z", "sentAt": "2026-12-01T10:00:03Z"},
                {"channel": "pager", "event": "Succeeded", "key": "k2", "message": "m", "state": "Failed", "attempts": 5,
                 "queuedAt": "2026-12-01T10:01:12Z", "lastError": "the webhook answered 503"},
            ],
            **status,
        },
    }


def test_the_report_follows_the_seed_template_and_the_status():
    text = incident.render(_rollback())
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == ["## Incident Summary", "## Trigger", "## Timeline", "## Actions Taken", "## Verification",
                        "## Notifications", "## Resolution Time", "## Lessons Learned", "## Follow-up Actions"]
    assert text.startswith("# Incident Report - Emergency Rollback\n")
    assert "**Severity:** HIGH" in text
    assert "**Incident ID:** booking/booking-oauth-outage (uid 1234-abcd)" in text
    assert "**Duration:** 1m12s (target 15m0s; met)" in text
    assert "OAuth failure after 2.4.0" in text.split("## Trigger")[1].split("##")[0]
    timeline = text.split("## Timeline")[1].split("## ")[0]
    assert timeline.count("| Succeeded |") == 4
    assert "| 2026-12-01 10:00:02 UTC | 2026-12-01 10:00:40 UTC | deployment/appointmentbooking | Succeeded | rolled out |" in timeline
    actions = text.split("## Actions Taken")[1].split("## ")[0]
    assert "- [x] Maintenance mode entered" in actions
    assert "- [x] Application rollback executed: deployment/appointmentbooking (revision 2 -> revision 1's template)" in actions
    assert "- [ ] Database rollback (not part of this rollback)" in actions
    assert "- [ ] Stakeholders notified: 1 of 2 notification(s) sent" in actions
    assert "- [x] Verification completed: 1 of 1 check(s) passed" in actions
    assert "3 of 3 \\| measurement(s)" in text          # table cells are escaped
    assert "| pager | Succeeded | Failed | 5 | - | the webhook answered 503 |" in text
    assert "Tell the people behind pager by hand" in text
    assert "From 2026-12-01 10:00:00 UTC to 2026-12-01 10:01:12 UTC: 1m12s" in text


def test_a_failed_rollback_says_so_and_lists_the_failure_as_follow_up():
    rb = _rollback(phase="Failed", withinTarget=False, conditions=[
        {"type": "Ready", "status": "False", "reason": "VerificationFailed", "lastTransitionTime": "2026-12-01T10:01:12Z",
         "message": "Step verify/http/health failed: answered 500."},
        {"type": "WithinTarget", "status": "False", "reason": "NotCompleted", "lastTransitionTime": "2026-12-01T10:01:12Z",
         "message": "The rollback did not complete."}])
    rb["status"]["steps"][2] |= {"state": "Failed", "message": "answered 500, expected 200"}
    rb["status"]["verification"][0] |= {"outcome": "Failed", "detail": "answered 500, expected 200"}
    text = incident.render(rb)
    assert "**Outcome:** Failed (VerificationFailed)" in text
    assert "Step verify/http/health failed: answered 500." in text.split("## Incident Summary")[1]
    assert "- [ ] Step verify/http/health failed: answered 500, expected 200" in text
    assert text.count("answered 500, expected 200\n") == 1          # listed once, not per check and step
    # Fast, but not complete: "not met", not a missed deadline.
    assert "**Duration:** 1m12s (target 15m0s; not met: the rollback did not complete)" in text
    assert "missed" not in text


def test_steps_not_run_after_a_failure_are_not_ticked():
    rb = _rollback(phase="Failed", withinTarget=False)
    steps = rb["status"]["steps"]
    steps[0] |= {"state": "Failed", "message": "the maintenance enter hook answered 403"}
    steps[1] |= {"state": "Skipped", "reason": "NotRun", "message": "Not run: step maintenance/enter failed."}
    steps[2] |= {"state": "Skipped", "reason": "NotRun", "message": "Not run: step maintenance/enter failed."}
    steps[3] |= {"state": "Succeeded", "message": "the maintenance exit hook answered 200."}
    rb["status"]["verification"] = []
    actions = incident.render(rb).split("## Actions Taken")[1].split("## ")[0]
    assert "- [ ] Maintenance mode entered" in actions
    assert "- [ ] Application rollback executed: deployment/appointmentbooking" in actions
    assert "- [x] Maintenance mode exited" in actions
    assert "- [ ] Verification completed: 0 of 1 check(s) passed, 1 not run" in actions
    assert "- [ ] Check verify/http/health did not run; verify by hand." in incident.render(rb)


def test_a_workload_already_at_its_revision_counts_as_done():
    rb = _rollback()
    rb["status"]["steps"][1] |= {"state": "Skipped", "message": "already runs revision 1's template"}
    assert "- [x] Application rollback executed" in incident.render(rb)
