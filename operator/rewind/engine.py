"""Drives one Rollback forward: plan and preflight, then the plan's steps, one at a time.

`advance` is called with the Rollback as it is now (freshly read) and does as much as it can
without waiting. The ledger in status is the truth: intent is saved before each side effect and
the outcome after it, each save guarded by resourceVersion, so a crash at any point leaves a
ledger from which a restarted operator continues without repeating a write. When it must wait,
`advance` returns the delay after which to call it again; kopf turns that into a retry.
"""

from __future__ import annotations

import logging

from rewind import plan as planning
from rewind.api import conditions as C
from rewind.api.v1alpha1 import TERMINAL_PHASES, Phase, PlanStep, StepAction, StepRecord, StepState
from rewind.context import Context, StepFailed
from rewind.steps import certificates, consumers, database, secrets, verification, workload

log = logging.getLogger(__name__)

def advance(ctx: Context) -> float | None:
    """Moves the rollback on; returns seconds until it should be called again, or None when it
    reached a terminal phase (or already was in one)."""
    if ctx.status.phase in TERMINAL_PHASES:
        return None
    if ctx.status.started_at is None or not ctx.status.plan:
        # Not planned yet, or planning was interrupted (a crash, an API error) before the plan
        # was saved: preflight only reads, so it simply runs again.
        return _plan(ctx)
    return _execute(ctx)


# --- planning --------------------------------------------------------------------------------


def _plan(ctx: Context) -> float | None:
    spec = ctx.rollback.spec
    started = ctx.status.started_at or ctx.clock()
    ctx.status.started_at = started
    ctx.status.deadline = planning.deadline_for(spec.severity, started)
    ctx.status.phase = Phase.RUNNING.value
    ctx.condition(C.RECONCILING, "True", C.PLANNING, "Resolving the targets of the rollback.")
    ctx.condition(C.READY, "False", C.PLANNING, "Resolving the targets of the rollback.")
    ctx.save()   # from here on the spec is immutable (CEL rule on status.startedAt)
    ctx.emit("Normal", "Planning", f"{spec.severity} rollback requested: {spec.reason}")

    resolved: dict[str, PlanStep] = {}
    problems: list[StepFailed] = []
    database_steps: list[PlanStep] = []
    if spec.database:
        try:
            database_steps = database.resolve(ctx.kube, ctx.obj, spec.database)
        except StepFailed as e:
            problems.append(e)
    secret_steps: list[PlanStep] = []
    tls_steps: list[PlanStep] = []
    warnings: list[str] = []
    if spec.secrets or spec.certificates:
        try:
            step, warnings = secrets.resolve(ctx.kube, ctx.namespace, spec.secrets or [],
                                             spec.certificates or [])
            secret_steps = [step]
            tls_steps = certificates.verify_steps(spec.certificates or [], step.secrets)
            if spec.restart_consumers:
                excluded = {(t.kind, t.name) for t in spec.application or []}
                restart = consumers.resolve(ctx.kube, ctx.namespace, [c.name for c in step.secrets], excluded)
                secret_steps += [restart] if restart else []
        except StepFailed as e:
            problems.append(e)
    for target in spec.application or []:
        try:
            r = workload.resolve(ctx.kube, ctx.namespace, target)
            resolved[r.step.name] = r.step
        except StepFailed as e:
            problems.append(e)
    if problems:
        message = "Preflight refused the rollback; nothing was changed: " + \
            "; ".join(p.message for p in problems) + "."
        reason = problems[0].reason
        ctx.condition(C.PLANNED, "False", reason, message)
        return _terminal(ctx, Phase.FAILED, reason, message)

    steps = planning.order(spec, [*database_steps, *secret_steps], resolved) + tls_steps \
        + verification.plan(spec.verification)
    ctx.status.plan = steps
    ctx.status.steps = planning.initial_ledger(steps)
    ctx.status.progress = planning.progress(ctx.status.steps)
    summary = "; ".join(_describe(s) for s in steps)
    ctx.condition(C.PLANNED, "True", C.PLAN_READY, f"Plan of {len(steps)} step(s): {summary}."
                  + "".join(f" Warning: {w}." for w in warnings))
    for w in warnings:
        ctx.emit("Warning", "ManagedSecret", w)
    if spec.dry_run:
        message = f"Dry run: {summary}. Nothing was changed; the diffs are in status.plan."
        return _terminal(ctx, Phase.PLANNED, C.DRY_RUN, message, ready=True)
    ctx.condition(C.READY, "False", C.EXECUTING, "The plan is fixed; executing it.")
    ctx.condition(C.RECONCILING, "True", C.EXECUTING, "The plan is fixed; executing it.")
    ctx.save()
    ctx.emit("Normal", "Planned", f"Plan of {len(steps)} step(s): {summary}")
    return _execute(ctx)


def _describe(step: PlanStep) -> str:
    what = f"{step.target.kind} {step.target.name}"
    if step.kind != "WorkloadRevision":
        return f"{step.name} of {what}"
    if step.action == StepAction.NO_OP.value:
        return f"{what} already runs revision {step.to_revision}'s template"
    return f"{what} from revision {step.current_revision} to revision {step.to_revision}'s template"


# --- execution -------------------------------------------------------------------------------


STEP_KINDS = {
    "WorkloadRevision": workload,
    **{kind: database for kind in database.ADVANCE},
    "SecretsRestore": secrets,
    "TlsVerify": certificates,
    "ConsumersRestart": consumers,
    "HttpCheck": verification,
}


def _execute(ctx: Context) -> float | None:
    _check_deadline(ctx)
    while True:
        i = planning.current_index(ctx.status.steps)
        if i is None:
            return _succeed(ctx)
        step, rec = ctx.status.plan[i], ctx.status.steps[i]
        ctx.status.progress = planning.progress(ctx.status.steps)
        if rec.state in (StepState.FAILED.value, StepState.INTERRUPTED.value):
            # Recorded as failed but the phase is not terminal yet (a crash in between).
            interrupted = rec.state == StepState.INTERRUPTED.value
            return _terminal(ctx, Phase.INTERRUPTED if interrupted else Phase.FAILED,
                             C.INTERRUPTED if interrupted else C.STEP_FAILED,
                             rec.message or f"Step {rec.name} failed.")
        try:
            delay = STEP_KINDS[step.kind].advance(ctx, step, rec)
        except StepFailed as e:
            return _fail_step(ctx, step, rec, e.reason, e.message)
        if delay is not None:
            return delay


def _check_deadline(ctx: Context) -> None:
    deadline = ctx.status.deadline
    if deadline and ctx.clock() > deadline and ctx.status.within_target is not False:
        ctx.status.within_target = False
        msg = (f"The {ctx.rollback.spec.severity} deadline ({deadline:%H:%M:%S}Z) passed before the "
               "rollback completed; it goes on.")
        ctx.condition(C.WITHIN_TARGET, "False", C.DEADLINE_MISSED, msg)
        ctx.save()
        ctx.emit("Warning", C.DEADLINE_MISSED, msg)


def _fail_step(ctx: Context, step: PlanStep, rec: StepRecord, reason: str, message: str) -> None:
    """A step that failed, or whose outcome cannot be known (Interrupted: a person must look)."""
    interrupted = reason == C.INTERRUPTED
    rec.state = (StepState.INTERRUPTED if interrupted else StepState.FAILED).value
    rec.finished_at = ctx.clock()
    rec.message = message
    domain = C.APPLICATION_RESTORED if step.kind == "WorkloadRevision" else C.DATABASE_RESTORED
    ctx.condition(domain, "False", reason, message)
    return _terminal(ctx, Phase.INTERRUPTED if interrupted else Phase.FAILED, reason,
                     f"Step {rec.name} {'was interrupted' if interrupted else 'failed'}: {message}")


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
    message = "Rolled back: " + "; ".join(parts) + "."
    checks = ctx.status.verification
    verified = (["every restored workload runs its wanted revision's template and is available"]
                if any(r.state == StepState.SUCCEEDED.value for r in ctx.status.steps
                       if r.name.startswith(("deployment/", "statefulset/", "daemonset/"))) else []) \
        + ([f"{len(checks)} check(s) passed"] if checks else [])
    if not verified:
        ctx.condition(C.VERIFIED, "Unknown", C.NO_CHECKS, "Nothing was verified: no workload was "
                      "restored and the spec lists no checks (spec.database.verify).")
    elif all(v.outcome == "Passed" for v in checks):
        ctx.condition(C.VERIFIED, "True", C.WORKLOADS_AVAILABLE if not checks else C.CHECKS_PASSED,
                      "Verified: " + "; ".join(verified) + ".")
    return _terminal(ctx, Phase.SUCCEEDED, C.SUCCEEDED, message, ready=True)


def give_up(ctx: Context, message: str) -> None:
    """Ends the rollback after repeated errors outside any step's own handling. A step caught
    mid-way (Running: its side effect may or may not have happened) makes it Interrupted."""
    if ctx.status.phase in TERMINAL_PHASES:
        return None
    running = [r for r in ctx.status.steps if r.state == StepState.RUNNING.value]
    for rec in running:
        rec.state = StepState.INTERRUPTED.value
        rec.finished_at = ctx.clock()
        rec.message = f"Interrupted: {message}"
    if running:
        return _terminal(ctx, Phase.INTERRUPTED, C.INTERRUPTED,
                         f"Step {running[0].name} was interrupted: {message} Check its target, "
                         "then create a new Rollback; the step ledger in status shows how far it got.")
    return _terminal(ctx, Phase.FAILED, C.OPERATOR_ERROR,
                     f"{message} The step ledger in status shows how far the rollback got.")


def _terminal(ctx: Context, phase: Phase, reason: str, message: str, ready: bool = False) -> None:
    now = ctx.clock()
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
                      f"is {planning.format_duration(planning.DEADLINES[ctx.rollback.spec.severity])}."
                      if ready else "The rollback did not complete.")
    ctx.save()
    ctx.emit("Normal" if ready else "Warning", reason, message)
    log.info("rollback %s/%s is %s: %s", ctx.namespace, ctx.name, phase.value, message)
    return None
