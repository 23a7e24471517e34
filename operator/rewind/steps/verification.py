"""Verification checks after the rollback (HTTP for now), each a step with Argo-style semantics:
`count` measurements `intervalSeconds` apart; the check fails as soon as more than
`failureLimit` of them failed, and passes when all were taken. The outcome goes to
status.verification; what a failure does is the spec's choice (Fail the rollback, or Warn)."""

from __future__ import annotations

import datetime

from rewind.adapters import http
from rewind.api import conditions as C
from rewind.api.v1alpha1 import (
    PlanStep, StepAction, StepKind, StepRecord, StepState, TargetRef, Verification, VerificationResult,
)
from rewind.context import Context, StepFailed


def plan(verification: Verification | None) -> list[PlanStep]:
    return [PlanStep(name=f"verify/http/{c.name}", kind=StepKind.HTTP_CHECK,
                     target=TargetRef(kind="HTTP", name=c.url), action=StepAction.RESTORE)
            for c in (verification.http or [] if verification else [])]


def advance(ctx: Context, step: PlanStep, rec: StepRecord) -> float | None:
    spec = ctx.rollback.spec.verification
    check = next(c for c in spec.http if f"verify/http/{c.name}" == step.name)
    now = ctx.clock()
    if rec.state == StepState.PENDING.value:
        rec.state, rec.started_at = StepState.RUNNING.value, now
    due = rec.started_at + datetime.timedelta(seconds=check.interval_seconds * rec.attempts)
    if now < due:
        return (due - now).total_seconds()
    m = http.measure(check)
    rec.attempts += 1
    rec.failures += 0 if m.ok else 1
    rec.message = f"{rec.attempts} of {check.count} measurement(s), {rec.failures} failed; last: {m.detail}"
    failed = rec.failures > check.failure_limit
    if not failed and rec.attempts < check.count:
        ctx.save()
        return float(check.interval_seconds)
    outcome = "Failed" if failed else "Passed"
    ctx.status.verification = [v for v in ctx.status.verification if v.name != step.name] + [
        VerificationResult(name=step.name, kind="HTTP", outcome=outcome, detail=rec.message, checked_at=now)]
    if failed:
        ctx.condition(C.VERIFIED, "False", "VerificationFailed", f"Check {check.name}: {rec.message}")
        if spec.on_failure == "Fail":
            raise StepFailed("VerificationFailed", f"check {check.name}: {rec.message}")
        ctx.emit("Warning", "VerificationFailed", f"check {check.name}: {rec.message}")
    rec.state, rec.finished_at = StepState.SUCCEEDED.value, now
    ctx.save()
    return None
