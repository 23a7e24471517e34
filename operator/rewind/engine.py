"""Drives one Rollback forward: plan and preflight, then the plan's steps, one at a time.

`advance` is called with the Rollback as it is now (freshly read) and does as much as it can
without waiting. The ledger in status is the truth: intent is saved before each side effect and
the outcome after it, each save guarded by resourceVersion, so a crash at any point leaves a
ledger from which a restarted operator continues without repeating a write. When it must wait,
`advance` returns a `Wait`: the time to look again, and the object whose change wakes it earlier.
"""

from __future__ import annotations

import logging

from rewind import plan as planning
from rewind.api import conditions as C
from rewind.api.v1alpha1 import (
    TERMINAL_PHASES, NotificationEvent, Phase, PlanStep, ReportRef, StepAction, StepKind, StepRecord, StepState,
)
from rewind import authz, gate, idempotency, metrics, registry
from rewind.api.errors import ReasonedError
from rewind.context import Context, Wait, earliest, utcnow
from rewind.steps import gitops, hooks, jobs, notifications, report

log = logging.getLogger(__name__)

def advance(ctx: Context) -> Wait | None:
    """Moves the rollback on as far as it goes without waiting; returns what it waits for next
    (a time, and the object whose change wakes it earlier), or None when it reached a terminal
    phase (or already was in one) and nothing is left to send or write."""
    if ctx.status.phase in TERMINAL_PHASES:
        wait = None
    elif ctx.status.started_at is None or not ctx.status.plan:
        # Not planned yet, or planning was interrupted (a crash, an API error) before the plan
        # was saved: preflight only reads, so it simply runs again.
        wait = _plan(ctx)
    else:
        wait = _execute(ctx)
    # After the steps (and also once the rollback is over): the outbox, then the report.
    retry = notifications.deliver(ctx)
    rewrite = None
    if ctx.status.phase in TERMINAL_PHASES and ctx.status.phase != Phase.PLANNED.value:
        rewrite = report.sync(ctx)
    return earliest(wait, retry, rewrite)


def pending(obj) -> bool:
    """Whether a Rollback, as the API server has it, still has work for the operator: not
    finished, or finished with notifications or its report still to go out. Reads nothing."""
    status = obj.get("status") or {}
    if status.get("phase") not in TERMINAL_PHASES:
        return True
    if any(c.get("reason") == "InvalidSpec" for c in status.get("conditions") or []):
        return False          # never read, never acted on (handlers._unreadable): nothing to send
    if any(n.get("state") in (None, "Pending") for n in status.get("notifications") or []):
        return True
    if status.get("phase") == Phase.PLANNED.value or not status.get("report"):
        return status.get("phase") != Phase.PLANNED.value
    ref = ReportRef.model_validate(dict(status["report"]))
    return ref.config_map_ref is None and not report.gave_up(ref, utcnow())


# --- planning --------------------------------------------------------------------------------


def _plan(ctx: Context) -> Wait | None:
    spec = ctx.rollback.spec
    started = ctx.status.started_at or ctx.clock()
    ctx.status.started_at = started
    ctx.status.deadline = planning.deadline_for(spec.severity, started)
    ctx.status.phase = Phase.RUNNING.value
    # Nothing is saved before preflight (it only reads): the first write carries the plan, or the
    # refusal. It is guarded by resourceVersion and generation, so a spec changed meanwhile is
    # planned again; from that write on the spec is immutable (CEL rule on status.startedAt).

    # Who asks, under which policy: an identity the API server did not stamp, or a policy the
    # operator cannot read, refuses the rollback before anything else is even read.
    try:
        requester = authz.check_identity(ctx.kube, spec)
        ctx.status.policy = ctx.policy_name
        ctx.status.deadline = started + authz.target_time(ctx.policy, spec.severity)
        authz.check_images(spec, ctx.request.job_images)
        authz.check_break_glass(ctx.policy, spec)
        # A Rollback that already ran (deleted since, and applied again by a GitOps pipeline)
        # is refused before anything else is read.
        key = None if spec.dry_run else idempotency.key_of(ctx.obj, spec)
        idempotency.check(ctx.kube, ctx.namespace, ctx.name, ctx.uid, key)
    except ReasonedError as e:
        message = f"Preflight refused the rollback; nothing was changed: {e.message}"
        ctx.condition(C.PLANNED, "False", e.reason, message)
        return _terminal(ctx, Phase.FAILED, e.reason, message)

    found, warnings, problems = [], [], []
    for preflight in registry.PREFLIGHTS:
        try:
            result = preflight(ctx.kube, ctx.request)
        except ReasonedError as e:   # StepFailed, or an adapter's own error (same shape)
            problems.append(e)
            continue
        found += result.steps
        warnings += result.warnings
    if problems:
        message = "Preflight refused the rollback; nothing was changed: " + \
            "; ".join(p.message for p in problems) + "."
        reason = problems[0].reason
        ctx.condition(C.PLANNED, "False", reason, message)
        return _terminal(ctx, Phase.FAILED, reason, message)

    steps = planning.order(found)
    try:
        # Rewind never lends its rights: each write of the plan, asked of the API server for
        # the requester himself.
        authz.check_rights(ctx.kube, requester, ctx.namespace, authz.required(spec, steps))
    except ReasonedError as e:
        message = f"Preflight refused the rollback; nothing was changed: {e.message}"
        ctx.condition(C.PLANNED, "False", e.reason, message)
        return _terminal(ctx, Phase.FAILED, e.reason, message)
    ctx.status.plan = steps
    ctx.status.steps = planning.initial_ledger(steps)
    ctx.status.progress = planning.progress(ctx.status.steps)
    summary = "; ".join(_describe(s) for s in steps)
    ctx.condition(C.PLANNED, "True", C.PLAN_READY, f"Plan of {len(steps)} step(s): {summary}."
                  + "".join(f" Warning: {w}." for w in warnings))
    for w in warnings:
        ctx.emit_once_saved("Warning", "ManagedSecret", w)
    if spec.dry_run:
        message = f"Dry run: {summary}. Nothing was changed; the diffs are in status.plan."
        return _terminal(ctx, Phase.PLANNED, C.DRY_RUN, message, ready=True)
    try:
        idempotency.claim(ctx.kube, ctx.namespace, ctx.name, ctx.uid, key)   # before the plan's write
    except ReasonedError as e:
        return refuse(ctx, e.reason, f"Preflight refused the rollback; nothing was changed: {e.message}")
    ctx.status.idempotency_key = key
    ctx.condition(C.READY, "False", C.EXECUTING, "The plan is fixed; executing it.")
    ctx.condition(C.RECONCILING, "True", C.EXECUTING, "The plan is fixed; executing it.")
    notifications.queue(ctx, NotificationEvent.STARTED,
                        f"{spec.severity} rollback started ({spec.reason}); plan of {len(steps)} step(s): {summary}.")
    # Not saved here: the first write of the run carries the plan, whether the outbox's (it saves
    # before sending) or the first step's (every step saves its intent, or its outcome, before
    # any side effect), so the plan and the first intent cost one write.
    ctx.emit_once_saved("Normal", "Planned", f"{spec.severity} rollback requested ({spec.reason}); plan of "
                                             f"{len(steps)} step(s): {summary}")
    notifications.deliver(ctx)   # people hear of it before the first step, not after
    return _execute(ctx)


def _describe(step: PlanStep) -> str:
    what = f"{step.target.kind} {step.target.name}"
    if step.kind != "WorkloadRevision":
        return f"{step.name} of {what}"
    if step.action == StepAction.NO_OP.value:
        return f"{what} already runs revision {step.to_revision}'s template"
    return f"{what} from revision {step.current_revision} to revision {step.to_revision}'s template"


# --- execution -------------------------------------------------------------------------------


ABORT_ANNOTATION = "rewind.dev/abort"


def abort_requested(obj: dict) -> str | None:
    """Who asked to stop the rollback (the annotation's value), or None."""
    return (obj["metadata"].get("annotations") or {}).get(ABORT_ANNOTATION)


# Steps that only look (checks, verification): stopping them mid-way leaves nothing half-done.
READ_ONLY = {StepKind.HTTP_CHECK.value, StepKind.SQL_CHECK.value, StepKind.TLS_CHECK.value,
             StepKind.TLS_VERIFY.value, StepKind.DATABASE_VERIFY.value}


def _abort(ctx: Context, who: str) -> None:
    """Stops between steps: no step that has not started starts; a step that is waiting (for a
    rollout, a Job, sessions to end, its next measurement or retry) stops waiting, what it wrote
    staying written (a waiting swap opens production again); a step in the middle of its side
    effect finishes it first. The cleanup steps (exit maintenance, resume monitoring) still run."""
    now, changed = ctx.clock(), False
    for s, rec in zip(ctx.status.plan, ctx.status.steps):
        if s.cleanup or rec.state in planning.FINISHED_STATES:
            continue
        waiting = rec.state == StepState.WAITING.value or rec.state == StepState.RUNNING.value and (
            rec.deadline is not None or rec.next_attempt_at is not None or s.kind in READ_ONLY)
        if rec.state == StepState.RUNNING.value and not waiting:
            continue
        if waiting:
            _release(ctx, s, rec)
            rec.state = StepState.FAILED.value
            rec.message = f"Aborted by {who} while waiting ({rec.message}); what this step wrote stays written."
        else:
            rec.state, rec.message = StepState.SKIPPED.value, f"Not run: the rollback was aborted by {who}."
        rec.reason, rec.finished_at, rec.deadline, rec.next_attempt_at = C.ABORTED, now, None, None
        changed = True
    if changed:
        ctx.save()
        ctx.emit("Warning", C.ABORTED, f"Rollback aborted by {who}: no further step starts; the hooks are undone.")


def refuse(ctx: Context, reason: str, message: str) -> None:
    """Ends a planned rollback before its first step (a denial, a held target the policy will not
    wait for): every step Skipped, nothing changed."""
    now = ctx.clock()
    for rec in ctx.status.steps:
        if rec.state == StepState.PENDING.value:
            rec.state, rec.reason, rec.finished_at = StepState.SKIPPED.value, reason, now
            rec.message = f"Not run: {message}"
    return _terminal(ctx, Phase.FAILED, reason, message)


def _execute(ctx: Context) -> Wait | None:
    _check_deadline(ctx)
    who = abort_requested(ctx.obj)
    if who:
        _abort(ctx, who)
    elif (ctx.status.approved_at is None or not ctx.status.leases) and any(
            not s.cleanup and r.state == StepState.PENDING.value for s, r in zip(ctx.status.plan, ctx.status.steps)):
        # Before the first step: the policy's approvals (the deadline clock runs meanwhile), then
        # one lease per target. Either may wait, or end the rollback (a denial, a refused target).
        wait = gate.approvals(ctx) if ctx.status.approved_at is None else None
        if wait is None and ctx.status.phase not in TERMINAL_PHASES:
            wait = gate.acquire(ctx)
        if wait is not None or ctx.status.phase in TERMINAL_PHASES:
            return wait
    while True:
        i = planning.current_index(ctx.status.steps)
        if i is None:
            return _finish(ctx)
        step, rec = ctx.status.plan[i], ctx.status.steps[i]
        ctx.status.progress = planning.progress(ctx.status.steps)
        failed = _first_failure(ctx)
        if failed and not step.cleanup and rec.state == StepState.PENDING.value:
            # A step failed: the rest is not run; only the cleanup steps (exit maintenance,
            # resume monitoring) still are, and a step that was started alongside the failed one
            # (registry.ALONGSIDE) is followed to its end: its Job is not left running unwatched.
            rec.state, rec.finished_at, rec.reason = StepState.SKIPPED.value, ctx.clock(), "NotRun"
            rec.message = f"Not run: step {failed.name} {'was interrupted' if failed.state == StepState.INTERRUPTED.value else 'failed'}."
            ctx.save()
            continue
        try:
            wait = registry.ADVANCE[StepKind(step.kind)](ctx, step, rec)
        except ReasonedError as e:   # StepFailed, or an adapter's own error (same shape)
            _record_failure(ctx, step, rec, e.reason, e.message)
            continue
        if wait is not None:
            _alongside(ctx, i)
            return wait


def _alongside(ctx: Context, i: int) -> None:
    """While step i waits: the next step, when registry.ALONGSIDE lets it run at the same time and
    nothing has failed, is started or moved on as well (it may even finish first)."""
    step, nxt = ctx.status.plan[i], i + 1
    if nxt >= len(ctx.status.plan) or registry.ALONGSIDE.get(StepKind(step.kind)) != ctx.status.plan[nxt].kind:
        return
    other, rec = ctx.status.plan[nxt], ctx.status.steps[nxt]
    if rec.state in planning.FINISHED_STATES or _first_failure(ctx):
        return
    try:
        registry.ADVANCE[StepKind(other.kind)](ctx, other, rec)
    except ReasonedError as e:
        _record_failure(ctx, other, rec, e.reason, e.message)


def abandon(ctx: Context) -> Wait | None:
    """The Rollback is being deleted before it finished: nothing more of the plan is done, except
    its cleanup steps (exit maintenance, resume monitoring), so deleting a Rollback never leaves the
    site in maintenance. Returns a delay while the cleanup waits, None once it is over."""
    if ctx.status.phase in TERMINAL_PHASES or not ctx.status.plan:
        return None
    now = ctx.clock()
    for s, rec in zip(ctx.status.plan, ctx.status.steps):
        if s.cleanup or rec.state in planning.FINISHED_STATES:
            continue
        if rec.state == StepState.RUNNING.value:
            _release(ctx, s, rec)
            rec.state, rec.message = StepState.INTERRUPTED.value, ("The Rollback was deleted while this "
                                                                   "step ran; check its target.")
        else:
            rec.state, rec.message = StepState.SKIPPED.value, "Not run: the Rollback was deleted."
        rec.reason, rec.finished_at = C.DELETED, now
    ctx.save()
    wait = _execute(ctx)
    notifications.deliver(ctx)
    return wait


def _release(ctx: Context, step: PlanStep, rec: StepRecord) -> None:
    """A step stopped mid-way that will not run again undoes what must not stay (the swap opens
    production again); a failure to do so is logged and left to the step's Interrupted message."""
    release = registry.RELEASE.get(StepKind(step.kind))
    if release is None:
        return
    try:
        release(ctx, step, rec)
    except Exception as e:  # noqa: BLE001 - the step is Interrupted either way; a person checks
        log.error("rollback %s/%s: could not release step %s (%s); check its target by hand",
                  ctx.namespace, ctx.name, step.name, type(e).__name__)


def _first_failure(ctx: Context) -> StepRecord | None:
    return next((r for s, r in zip(ctx.status.plan, ctx.status.steps) if not s.cleanup
                 and r.state in (StepState.FAILED.value, StepState.INTERRUPTED.value)), None)


def _check_deadline(ctx: Context) -> None:
    deadline = ctx.status.deadline
    if deadline and ctx.clock() > deadline and ctx.status.within_target is not False:
        ctx.status.within_target = False
        msg = (f"The {ctx.rollback.spec.severity} deadline ({deadline:%H:%M:%S}Z) passed before the "
               "rollback completed; it goes on.")
        ctx.condition(C.WITHIN_TARGET, "False", C.DEADLINE_MISSED, msg)
        notifications.queue(ctx, NotificationEvent.DEADLINE_MISSED, msg)
        ctx.save()
        ctx.emit("Warning", C.DEADLINE_MISSED, msg)


def _record_failure(ctx: Context, step: PlanStep, rec: StepRecord, reason: str, message: str) -> None:
    """A step failed, or its outcome cannot be known (Interrupted: a person must look)."""
    interrupted = reason == C.INTERRUPTED
    rec.state = (StepState.INTERRUPTED if interrupted else StepState.FAILED).value
    rec.finished_at = ctx.clock()
    rec.message, rec.reason = message, reason
    rec.deadline = rec.next_attempt_at = None
    metrics.observe_step(step.kind, rec)
    domain = registry.DOMAINS.get(StepKind(step.kind))
    if domain:
        ctx.condition(domain, "False", reason, message)
    if not step.cleanup:
        notifications.queue(ctx, NotificationEvent.STEP_FAILED, f"Step {rec.name} "
                            f"{'was interrupted' if interrupted else 'failed'}: {message}")
    ctx.save()
    ctx.emit("Warning", reason, f"Step {rec.name} {'was interrupted' if interrupted else 'failed'}: {message}")


def _finish(ctx: Context) -> None:
    """Every step has run (or was not run after a failure): the outcome."""
    # The hooks' cleanup steps (the GitOps hold puts nothing back: gitops.note says what stays).
    cleanup = [(s, r) for s, r in zip(ctx.status.plan, ctx.status.steps)
               if s.cleanup and s.kind != StepKind.GITOPS_HOLD.value]
    undone = [r for _, r in cleanup if r.state == StepState.FAILED.value]
    hooks_note, undone_text = "", ""
    if any(r.state == StepState.SUCCEEDED.value for _, r in cleanup) or undone:
        if undone:
            undone_text = "; ".join(f"{r.name} failed: {r.message}" for r in undone)
            ctx.condition(C.HOOKS_UNDONE, "False", C.HOOK_FAILED, f"Put it back by hand: {undone_text}.")
            hooks_note = f" Not undone, put it back by hand: {undone_text}."
        else:
            ctx.condition(C.HOOKS_UNDONE, "True", C.HOOKS_RESTORED, "; ".join(
                r.message for _, r in cleanup if r.state == StepState.SUCCEEDED.value and r.message))
            hooks_note = " " + " ".join(f"{r.name}: {r.message}" for _, r in cleanup
                                        if r.state == StepState.SUCCEEDED.value and r.message)
    failed = _first_failure(ctx)
    if not failed and any(r.reason == C.ABORTED for r in ctx.status.steps):
        return _terminal(ctx, Phase.FAILED, C.ABORTED, f"Aborted by {abort_requested(ctx.obj)} between steps; "
                         "the steps that had run stay done." + hooks_note)
    if not failed and any(r.reason == C.DELETED for r in ctx.status.steps):
        return _terminal(ctx, Phase.FAILED, C.DELETED, "The Rollback was deleted before it finished; "
                         "the steps that had run stay done." + hooks_note)
    if failed:
        interrupted = failed.state == StepState.INTERRUPTED.value
        return _terminal(ctx, Phase.INTERRUPTED if interrupted else Phase.FAILED,
                         failed.reason or (C.INTERRUPTED if interrupted else C.STEP_FAILED),
                         f"Step {failed.name} {'was interrupted' if interrupted else 'failed'}: "
                         f"{failed.message}" + hooks_note)
    if undone:
        return _terminal(ctx, Phase.FAILED, C.HOOK_FAILED,
                         "The rollback's steps succeeded, but not everything around them was put "
                         f"back: {undone_text}.")
    return _succeed(ctx)


def _succeed(ctx: Context) -> None:
    done = [r for r in ctx.status.steps if r.state == StepState.SUCCEEDED.value]
    skipped = [r for r in ctx.status.steps if r.state == StepState.SKIPPED.value]
    workloads = [s for s in ctx.status.plan if s.kind == "WorkloadRevision"]
    parts = []
    if ctx.status.database and ctx.status.database.pre_rollback_database:
        parts.append(f"database {ctx.status.database.live_database} restored (the previous one "
                     f"kept as {ctx.status.database.pre_rollback_database})")
    if workloads:
        restored = [r for r in done if r.name.startswith(("deployment/", "statefulset/", "daemonset/"))]
        parts.append(f"{len(restored)} workload(s) restored and rolled out"
                     f"{f', {len(skipped)} already at the wanted revision' if skipped else ''}")
        ctx.condition(C.APPLICATION_RESTORED, "True", C.ROLLED_BACK if restored else C.ALREADY_AT_REVISION,
                      f"Every workload runs its wanted revision: {parts[-1]}.")
    if any(s.kind == "SecretsRestore" for s in ctx.status.plan):
        parts.append(f"{sum(len(s.secrets) for s in ctx.status.plan if s.kind == 'SecretsRestore')} "
                     "Secret(s) restored")
    message = "Rolled back: " + ("; ".join(parts) or "every step of the plan succeeded") + "."
    checks = ctx.status.verification
    failed = [v for v in checks if v.outcome == "Failed"]
    unsure = [v for v in checks if v.outcome == "Inconclusive"]
    verified = (["every restored workload runs its wanted revision's template and is available"]
                if any(r.state == StepState.SUCCEEDED.value for r in ctx.status.steps
                       if r.name.startswith(("deployment/", "statefulset/", "daemonset/"))) else []) \
        + ([f"{len(checks)} check(s) passed"] if checks else [])
    if not verified:
        ctx.condition(C.VERIFIED, "Unknown", C.NO_CHECKS, "Nothing was verified: no workload was "
                      "restored and the spec lists no checks (spec.database.verify).")
    elif failed or unsure:
        # onFailure: Warn. The worst outcome decides, whatever the order the checks ran in.
        text = "; ".join(f"{v.name} {v.outcome.lower()}: {v.detail}" for v in [*failed, *unsure])
        ctx.condition(C.VERIFIED, "False" if failed else "Unknown",
                      C.VERIFICATION_FAILED if failed else C.VERIFICATION_INCONCLUSIVE,
                      f"{len(failed)} check(s) failed and {len(unsure)} inconclusive (onFailure: Warn): {text}")
        message += f" Warning: {len(failed) + len(unsure)} of {len(checks)} check(s) did not pass; see Verified."
    else:
        ctx.condition(C.VERIFIED, "True", C.WORKLOADS_AVAILABLE if not checks else C.CHECKS_PASSED,
                      "Verified: " + "; ".join(verified) + ".")
    return _terminal(ctx, Phase.SUCCEEDED, C.SUCCEEDED, message, ready=True)


CHANCE = "CleanupAfterOperatorError"


def give_up(ctx: Context, message: str) -> bool:
    """Ends the rollback after repeated errors outside any step's own handling. A step caught
    mid-way (Running: its side effect may or may not have happened) becomes Interrupted. When a
    maintenance window or a monitoring silence was entered and not yet undone, the cleanup steps
    get their chance first: returns True, and the caller drives the rollback again."""
    if ctx.status.phase in TERMINAL_PHASES:
        return False
    now = ctx.clock()
    pairs = list(zip(ctx.status.plan, ctx.status.steps))
    main = [(s, r) for s, r in pairs if not s.cleanup]
    for s, rec in main:
        if rec.state == StepState.RUNNING.value:
            _release(ctx, s, rec)
            rec.state, rec.finished_at, rec.reason = StepState.INTERRUPTED.value, now, C.INTERRUPTED
            rec.message = (f"Interrupted: {message} Check its target, then create a new Rollback; "
                           "the step ledger in status shows how far it got.")
    if main and not any(r.state in (StepState.FAILED.value, StepState.INTERRUPTED.value) for _, r in main):
        rec = next((r for _, r in main if r.state not in planning.DONE_STATES), None)
        if rec is not None:
            rec.state, rec.finished_at, rec.reason = StepState.FAILED.value, now, C.OPERATOR_ERROR
            rec.message = f"{message} The step ledger in status shows how far the rollback got."
    cleanup = [(s, r) for s, r in pairs if s.cleanup]
    for _, rec in cleanup:
        if rec.state == StepState.RUNNING.value:   # it was running when the errors piled up
            rec.state, rec.finished_at, rec.reason = StepState.FAILED.value, now, C.HOOK_FAILED
            rec.message = f"Could not finish: {message}"
    chance = [r for s, r in cleanup if r.state == StepState.PENDING.value and hooks.counterpart_started(ctx, s)]
    if chance and not any(r.reason == CHANCE for r in chance):
        # The cleanup steps still get their chance, once: the next round of errors ends it.
        for rec in chance:
            rec.reason = CHANCE
        ctx.save()
        ctx.emit("Warning", C.OPERATOR_ERROR, f"{message} Exiting maintenance and resuming monitoring first.")
        return True
    for s, rec in cleanup:
        if rec.state == StepState.PENDING.value and hooks.counterpart_started(ctx, s):
            rec.state, rec.finished_at, rec.reason = StepState.FAILED.value, now, C.HOOK_FAILED
            rec.message = f"Could not run: {message}"
        elif rec.state == StepState.PENDING.value:
            rec.state, rec.finished_at, rec.message = StepState.SKIPPED.value, now, "Nothing to undo."
    if not ctx.status.plan:
        _terminal(ctx, Phase.FAILED, C.OPERATOR_ERROR, f"{message} The step ledger in status shows how far the rollback got.")
    else:
        _finish(ctx)
    return True   # once more: the Failed notification and the report go out on the next call


def _terminal(ctx: Context, phase: Phase, reason: str, message: str, ready: bool = False) -> None:
    now = ctx.clock()
    message += gitops.note(ctx)   # owners left suspended, and what Git must hold: said everywhere
    ctx.status.phase = phase.value
    ctx.status.completed_at = now
    ctx.status.progress = planning.progress(ctx.status.steps) if ctx.status.steps else "0/0"
    ctx.status.duration = planning.format_duration(now - ctx.status.started_at)
    ctx.condition(C.READY, "True" if ready else "False", reason, message)
    ctx.drop_condition(C.RECONCILING)
    if not ready:
        ctx.condition(C.STALLED, "True", reason, message)
    if phase != Phase.PLANNED:
        within = ready and now <= ctx.status.deadline
        ctx.status.within_target = within
        ctx.condition(C.WITHIN_TARGET, "True" if within else "False",
                      C.DEADLINE_MET if within else C.DEADLINE_MISSED if ready or now > ctx.status.deadline
                      else C.NOT_COMPLETED,
                      f"Finished in {ctx.status.duration}; the {ctx.rollback.spec.severity} target "
                      f"is {planning.format_duration(ctx.status.deadline - ctx.status.started_at)}."
                      if ready else "The rollback did not complete.")
    if ctx.status.leases:
        gate.release(ctx)             # the targets are free again: with the terminal write
    gate.record_late_approvals(ctx)
    if phase != Phase.PLANNED:
        if ready and now > ctx.status.deadline:
            notifications.queue(ctx, NotificationEvent.DEADLINE_MISSED, f"The {ctx.rollback.spec.severity} "
                                f"deadline passed: the rollback took {ctx.status.duration}.")
        notifications.queue(ctx, NotificationEvent.SUCCEEDED if ready else NotificationEvent.FAILED,
                            f"{phase.value}: {message}")
        if ctx.rollback.spec.database and ctx.status.report is None:
            jobs.delete_all(ctx.kube, ctx.namespace, ctx.uid)   # any a crash left behind
        report.sync(ctx, save=False)   # the report and the end: one status write
    ctx.save()
    severity = ctx.rollback.spec.severity
    metrics.ROLLBACKS_FINISHED.labels(severity, phase.value, reason).inc()
    if phase != Phase.PLANNED:
        metrics.TIME_TO_RESTORE.labels(severity, phase.value).observe((now - ctx.status.started_at).total_seconds())
        metrics.WITHIN_TARGET.labels(severity, str(bool(ctx.status.within_target)).lower()).inc()
    ctx.emit("Normal" if ready else "Warning", reason, message)
    log.info("rollback %s/%s is %s: %s", ctx.namespace, ctx.name, phase.value, message)
    return None
