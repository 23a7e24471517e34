"""What maintenance and monitoring hooks share: the runner that does a hook step's actions
each exactly once, retries the retryable ones on the step's own timer, and the rule that a
cleanup step (exit maintenance, resume monitoring) runs only when its counterpart started.

What a hook changes is recorded in status.hooks *before* it is changed (the Service's selector,
the replicas), so exit and resume put back exactly that, also after an operator restart.
Failing to enter maintenance or to silence monitoring fails the rollback before anything else
changed; failing to exit or resume is retried, then recorded, and the rollback ends Failed with
reason HookFailed so that a person puts it back by hand.
"""

from __future__ import annotations

import datetime
from typing import Callable

from rewind.api.v1alpha1 import HookStatus, PlanStep, StepRecord, StepState
from rewind.api.errors import ReasonedError
from rewind.context import Context, StepFailed, Wait

ENTER, EXIT, SUSPEND, RESUME = "maintenance/enter", "maintenance/exit", "monitoring/suspend", "monitoring/resume"
COUNTERPART = {EXIT: ENTER, RESUME: SUSPEND}
ATTEMPTS = {ENTER: 3, SUSPEND: 3, EXIT: 6, RESUME: 6}

Actions = list[tuple[str, Callable[[], str]]]


class HookFailed(StepFailed):
    def __init__(self, reason: str, message: str, retryable: bool = True):
        super().__init__(reason, message)
        self.retryable = retryable


def counterpart_started(ctx: Context, step: PlanStep) -> bool:
    other = COUNTERPART.get(step.name)
    rec = next((r for r in ctx.status.steps if r.name == other), None)
    return rec is not None and rec.state not in (StepState.PENDING.value, StepState.SKIPPED.value)


def run(ctx: Context, step: PlanStep, rec: StepRecord, actions_for: Callable[[Context], Actions]) -> Wait | None:
    now = ctx.clock()
    if step.cleanup and rec.state == StepState.PENDING.value and not counterpart_started(ctx, step):
        ctx.skip(step, rec, f"Nothing to undo: {COUNTERPART[step.name]} did not run.")
        return None
    began = False
    if rec.state == StepState.PENDING.value:
        ctx.status.hooks = ctx.status.hooks or HookStatus()
        # Intent, with the first attempt counted: from here the cleanup step undoes it.
        began = ctx.begin(step, rec, f"{step.name}: starting.")
    if rec.next_attempt_at and now < rec.next_attempt_at:
        return Wait(at=rec.next_attempt_at, reason=f"{step.name}: {rec.message}")
    if not began:
        rec.attempts += 1
    messages, errors = [], []
    for key, action in actions_for(ctx):
        done = ctx.status.hooks.done
        if key not in done:
            try:
                done[key] = action()
            except ReasonedError as e:
                errors.append(e)
                if not step.cleanup:
                    break        # entering stops at the first failure; undoing tries everything
                continue
            ctx.save()           # each action once: a retry or a restart skips what is done
        messages.append(done[key])
    if errors:
        message = "; ".join(e.message for e in errors)
        if not any(getattr(e, "retryable", False) for e in errors) or rec.attempts >= ATTEMPTS[step.name]:
            if messages:
                message += f" (done: {'; '.join(messages)})"
            raise StepFailed(errors[0].reason, f"{message} (after {rec.attempts} attempt(s))")
        return ctx.retry_at(step, rec, f"attempt {rec.attempts} of {ATTEMPTS[step.name]} failed: "
                            f"{message}; retrying", now + datetime.timedelta(seconds=2 ** rec.attempts))
    text = "; ".join(messages) + "." if messages else "Nothing to do."
    ctx.succeed(step, rec, text, emit=False)
    ctx.emit("Normal", "HookDone", f"{step.name}: {text}")
    return None
