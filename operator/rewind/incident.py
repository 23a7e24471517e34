"""The incident report: the seed's post-incident template, filled from the Rollback.

Pure: a function of the Rollback object (spec and status) only, with no clock and no cluster, so
the same status always renders the same report and a test can compare the two.
"""

from __future__ import annotations

import datetime

from rewind import plan as planning
from rewind.api.v1alpha1 import Rollback

HEADER = "# Incident Report - Emergency Rollback"
NOT_RUN = ("NotRun", "Deleted")
CHECK_KINDS = ("HttpCheck", "SqlCheck", "TlsCheck", "TlsVerify")
# Set on a Rollback by `kubectl rewind undo` (with the caller's rights): the undo's name. The
# report ConfigMap is written when a run ends, so an earlier report does not show it; the report
# rendered from the object (`kubectl rewind report`, when the ConfigMap is gone) does.
UNDONE_BY = "rewind.dev/undone-by"


def _t(ts: datetime.datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _cond(rb: Rollback, type_: str):
    return next((c for c in rb.status.conditions if c.type == type_), None)


def _box(done: bool | None, text: str) -> str:
    return f"- [{'x' if done else ' '}] {text}" + ("" if done is not None else " (not part of this rollback)")


def _target(rb: Rollback) -> str:
    cond = _cond(rb, "WithinTarget")
    if rb.status.within_target:
        return "met"
    if cond is not None and cond.reason == "NotCompleted":
        return "not met: the rollback did not complete"
    return "missed" if rb.status.within_target is False else "not finished"


def render(obj: dict) -> str:
    rb = Rollback.model_validate(obj)
    spec, st = rb.spec, rb.status
    meta = rb.metadata
    ready = _cond(rb, "Ready")
    target = (st.deadline - st.started_at) if st.deadline and st.started_at else planning.DEADLINES[spec.severity]
    out = [HEADER, ""]
    out += [f"**Date/Time:** {_t(st.started_at)}",
            f"**Incident ID:** {meta['namespace']}/{meta['name']} (uid {meta.get('uid', '-')})",
            f"**Severity:** {spec.severity.upper()}",
            f"**Duration:** {st.duration or '-'} (target {planning.format_duration(target)}; {_target(rb)})",
            f"**Outcome:** {st.phase or 'Pending'}" + (f" ({ready.reason})" if ready else ""),
            f"**Requested by:** {spec.requester.username if spec.requester else '-'} (as the API server "
            f"authenticated them){f'; declared: {spec.requested_by}' if spec.requested_by else ''}",
            f"**Policy:** {st.policy or '-'}"
            + (" — **BREAK-GLASS**: started before its approvals" if st.break_glass else "")]
    if spec.undo_of:
        out.append(f"**Undo of:** {meta['namespace']}/{spec.undo_of.name} (uid {spec.undo_of.uid})")
    undone_by = (meta.get("annotations") or {}).get(UNDONE_BY)
    if undone_by:
        out.append(f"**Undone by:** {meta['namespace']}/{undone_by} (`kubectl rewind report {undone_by}`)")
    out.append("")
    if st.approvals or st.approved_at:
        out += ["## Approvals", ""]
        out += [f"- {a.approver}, {a.role}: {a.decision} at {_t(a.at)} ({a.approval})"
                + ("" if a.counted else f" — not counted: {a.reason}") for a in st.approvals]
        out += [f"- Approved at {_t(st.approved_at)}" if st.approved_at and not st.break_glass
                else "- Approvals still missing" if st.break_glass else "", ""]
    out += ["## Incident Summary", "", ready.message if ready else "The rollback has not started yet.", ""]
    out += ["## Trigger", "", spec.reason, ""]

    out += ["## Timeline", "", "| Started | Finished | Step | State | Detail |", "|---|---|---|---|---|"]
    for rec in st.steps:
        out.append(f"| {_t(rec.started_at)} | {_t(rec.finished_at)} | {rec.name} | {rec.state} | "
                   f"{_cell(rec.message)} |")
    out.append("")

    by_kind: dict[str, list] = {}
    for step, rec in zip(st.plan, st.steps):
        by_kind.setdefault(step.kind, []).append(rec)

    def finished(r) -> bool:
        # Skipped counts as done only when nothing had to change (already at the wanted state);
        # a step not run after a failure or a deletion is not done.
        return r.state == "Succeeded" or (r.state == "Skipped" and r.reason not in NOT_RUN
                                          and not (r.message or "").startswith("Nothing to undo"))

    def done(*kinds: str) -> bool | None:
        recs = [r for k in kinds for r in by_kind.get(k, [])]
        if recs and all(r.state == "Skipped" and (r.message or "").startswith("Nothing to undo") for r in recs):
            return None
        return None if not recs else all(finished(r) for r in recs)

    workloads = [f"{s.name} (revision {s.current_revision} -> revision {s.to_revision}'s template"
                 f"{', already there' if s.action == 'NoOp' else ''})"
                 for s in st.plan if s.kind == "WorkloadRevision"]
    db = st.database
    secrets = [c.name for s in st.plan if s.kind == "SecretsRestore" for c in s.secrets if not c.fingerprint]
    certs = [c.name for s in st.plan if s.kind == "SecretsRestore" for c in s.secrets if c.fingerprint]
    secrets_done = done("SecretsRestore")
    sent = [r for r in st.notifications if r.state == "Sent"]
    checks = st.verification
    out += ["## Actions Taken", ""]
    out.append(_box(done("MaintenanceEnter"), "Maintenance mode entered"))
    out.append(_box(done("MonitoringSuspend"), "Monitoring suspended"))
    out.append(_box(done("WorkloadRevision"), "Application rollback executed"
                    + (f": {'; '.join(workloads)}" if workloads else "")))
    db_text = "Database rollback"
    if db and db.pre_rollback_database:
        db_text += f": {db.live_database} restored from {db.backup_source}; the previous database kept as {db.pre_rollback_database}"
    out.append(_box(done("DatabaseCheck", "DatabaseBackup", "DatabaseRestore", "DatabaseVerify",
                         "DatabaseAction", "DatabaseSwap"), db_text))
    out.append(_box(secrets_done if secrets else None,
                    "OAuth configuration reset" + (f": {', '.join(secrets)}" if secrets else "")))
    out.append(_box(secrets_done if certs else None,
                    "SSL certificate rollback" + (f": {', '.join(certs)}" if certs else "")))
    out.append(_box(done("MaintenanceExit"), "Maintenance mode exited"))
    out.append(_box(done("MonitoringResume"), "Monitoring resumed"))
    out.append(_box((len(sent) == len(st.notifications)) if st.notifications else None,
                    f"Stakeholders notified: {len(sent)} of {len(st.notifications)} notification(s) sent"
                    if st.notifications else "Stakeholders notified"))
    planned_checks = [s.name for s in st.plan if s.kind in CHECK_KINDS]
    results = {c.name: c for c in checks}
    total = len(set(planned_checks) | set(results))
    passed = sum(c.outcome == "Passed" for c in checks)
    not_run = [n for n in planned_checks if n not in results]
    out.append(_box(passed == total if total else None,
                    f"Verification completed: {passed} of {total} check(s) passed"
                    + (f", {len(not_run)} not run" if not_run else "") if total else "Verification completed"))
    out.append("")

    out += ["## Verification", ""]
    if checks:
        out += ["| Check | Kind | Outcome | Checked | Detail |", "|---|---|---|---|---|"]
        out += [f"| {c.name} | {c.kind} | {c.outcome} | {_t(c.checked_at)} | {_cell(c.detail)} |" for c in checks]
    else:
        out.append("No checks were recorded.")
    out.append("")

    out += ["## Notifications", ""]
    if st.notifications:
        out += ["| Channel | Event | State | Attempts | Sent | Last error |", "|---|---|---|---|---|---|"]
        out += [f"| {r.channel} | {r.event} | {r.state} | {r.attempts} | {_t(r.sent_at)} | {_cell(r.last_error) or '-'} |"
                for r in st.notifications]
    else:
        out.append("None configured.")
    out.append("")

    out += ["## Resolution Time", ""]
    if st.completed_at and st.started_at:
        out.append(f"From {_t(st.started_at)} to {_t(st.completed_at)}: {st.duration}; the "
                   f"{spec.severity} target is {planning.format_duration(target)} (deadline {_t(st.deadline)}): "
                   f"{_target(rb)}.")
    else:
        out.append(f"Not resolved yet; the {spec.severity} deadline is {_t(st.deadline)}.")
    out += ["", "## Lessons Learned", "", "_To be filled in by the team._", "", "## Follow-up Actions", ""]
    follow = []
    for rec in st.steps:
        if rec.state in ("Failed", "Interrupted"):
            follow.append(f"Step {rec.name} {rec.state.lower()}: {rec.message}")
    if db and db.pre_rollback_database:
        follow.append(f"The pre-rollback database {db.pre_rollback_database} is kept; drop it once it is no longer needed.")
    if db and db.pre_rollback_backup:
        follow.append(f"The pre-rollback dump is at {db.pre_rollback_backup}.")
    failed_steps = {r.name for r in st.steps if r.state in ("Failed", "Interrupted")}
    for c in checks:
        if c.outcome != "Passed" and c.name not in failed_steps:
            follow.append(f"Check {c.name} was {c.outcome.lower()}: {c.detail}")
    for n in not_run:
        follow.append(f"Check {n} did not run; verify by hand.")
    for r in st.notifications:
        if r.state == "Failed":
            follow.append(f"Tell the people behind {r.channel} by hand: its {r.event} notification failed.")
    follow.append("Find and fix the cause of the incident before rolling forward again.")
    out += [f"- [ ] {f}" for f in follow]
    return "\n".join(out) + "\n"
