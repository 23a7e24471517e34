"""Verification checks after the rollback (HTTP, SQL and TLS), each a step with Argo-style semantics:
`count` measurements `intervalSeconds` apart. A measurement passes, fails, or is inconclusive
(the check itself could not get an answer). The check fails as soon as more than `failureLimit`
measurements failed or more than `consecutiveFailureLimit` failed in a row, is Inconclusive as
soon as more than `inconclusiveLimit` were inconclusive, and passes when all were taken. The
outcome goes to status.verification and the Verified condition; what a failed or inconclusive
check does is the spec's choice (Fail the rollback, or Warn and finish)."""

from __future__ import annotations

import datetime

from rewind import egress, metrics
from rewind.adapters import db, http, sqlcheck, tls
from rewind.adapters.kube import Kube
from rewind.adapters.measurement import Measurement
from rewind.api import conditions as C
from rewind.api.v1alpha1 import (
    PlanStep, RollbackSpec, SqlCheck, TlsCheck, StepAction, StepKind, StepRecord, StepState, TargetRef,
    VerificationResult,
)
from rewind.api.errors import ReasonedError
from rewind.context import Context, Found, Request, StepFailed, Wait
from rewind.adapters.secrets import read_key


def preflight(kube: Kube, req: Request) -> Found:
    """One step per check; refused when a check cannot work (see `resolve`). Reads only."""
    resolve(kube, req.namespace, req.spec)
    return Found(steps=plan(req.spec))


def plan(spec: RollbackSpec) -> list[PlanStep]:
    v = spec.verification
    if not v:
        return []
    return [PlanStep(name=f"verify/http/{c.name}", kind=StepKind.HTTP_CHECK, spec_key=c.name,
                     target=TargetRef(kind="HTTP", name=http.redact(c.url)), action=StepAction.RESTORE)
            for c in v.http or []] + \
           [PlanStep(name=f"verify/sql/{c.name}", kind=StepKind.SQL_CHECK, spec_key=c.name,
                     target=TargetRef(kind="SQL", name=_connection_ref(spec, c)), action=StepAction.RESTORE)
            for c in v.sql or []] + \
           [PlanStep(name=f"verify/tls/{c.name}", kind=StepKind.TLS_CHECK, spec_key=c.name,
                     target=TargetRef(kind="TLS", name=f"{c.host}:{c.port}"), action=StepAction.RESTORE)
            for c in v.tls or []]


def _connection_ref(spec: RollbackSpec, check: SqlCheck) -> str:
    conn = check.connection or (spec.database.connection if spec.database else None)
    return f"secret/{conn.secret_ref.name}#{conn.secret_ref.key}" if conn else "-"


def resolve(kube: Kube, namespace: str, spec: RollbackSpec) -> None:
    """Preflight: HTTP checks have usable URLs; SQL checks have a connection whose Secret holds a
    valid URL."""
    for c in (spec.verification.http or []) if spec.verification else []:
        http.check_url(c.url, f"the URL of HTTP check {c.name}")
    for check in (spec.verification.sql or []) if spec.verification else []:
        conn = check.connection or (spec.database.connection if spec.database else None)
        if conn is None:
            raise StepFailed(C.INVALID_SPEC, f"SQL check {check.name} has no connection: give "
                             "verification.sql[].connection, or spec.database")
        _url(kube, namespace, check, conn.secret_ref)


def _url(kube: Kube, namespace: str, check: SqlCheck, ref) -> str:
    url = read_key(kube, namespace, ref.name, ref.key, f"the connection Secret of SQL check {check.name}")
    try:
        db.parse_url(url)
    except db.DatabaseError as e:
        raise StepFailed(e.reason, f"SQL check {check.name}: Secret {namespace}/{ref.name} key "
                                   f"{ref.key!r}: {e.message}") from None
    return url


CHECKS = {StepKind.HTTP_CHECK.value: "http", StepKind.SQL_CHECK.value: "sql", StepKind.TLS_CHECK.value: "tls"}


def _check(spec: RollbackSpec, step: PlanStep):
    return next(c for c in getattr(spec.verification, CHECKS[step.kind]) if c.name == step.spec_key)


def measure_tls(check: TlsCheck, now: datetime.datetime, rules) -> Measurement:
    where = f"{check.host}:{check.port}"
    try:
        cert = tls.served(check.host, check.port, check.server_name, timeout=check.timeout_seconds,
                          rules=rules)
    except ReasonedError as e:      # the egress policy refused it, or the name does not resolve
        return Measurement("Failed", e.message)
    except (OSError, ValueError) as e:
        return Measurement("Failed", f"no TLS handshake with {where}: {egress.failure(e)}")
    got = tls.fingerprint(cert)
    if check.fingerprint_sha256 and got != check.fingerprint_sha256:
        return Measurement("Failed", f"{where} serves certificate {got[:16]}..., not {check.fingerprint_sha256[:16]}...")
    if not tls.covers(tls._names(cert), check.server_name):
        return Measurement("Failed", f"the certificate {where} serves does not cover {check.server_name}")
    if cert.not_valid_before_utc > now or cert.not_valid_after_utc <= now:
        return Measurement("Failed", f"the certificate {where} serves is not valid now")
    left = cert.not_valid_after_utc - now
    if left < datetime.timedelta(days=check.min_valid_days):
        return Measurement("Failed", f"the certificate {where} serves expires in {left.days} day(s), "
                                     f"under {check.min_valid_days}")
    return Measurement("Passed", f"{where} serves {got[:16]}... for {check.server_name}, valid {left.days} more day(s)")


def _measure(ctx: Context, step: PlanStep, check) -> tuple[str, Measurement]:
    spec = ctx.rollback.spec
    rules = egress.rules_of(ctx.policy)
    if step.kind == StepKind.HTTP_CHECK.value:
        return "HTTP", http.measure(check, rules)
    if step.kind == StepKind.TLS_CHECK.value:
        return "TLS", measure_tls(check, ctx.clock(), rules)
    conn = check.connection or spec.database.connection
    try:
        url = _url(ctx.kube, ctx.namespace, check, conn.secret_ref)
    except ReasonedError as e:
        return "SQL", Measurement("Inconclusive", e.message)
    return "SQL", sqlcheck.measure(url, check, rules)


def advance(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    """Takes the measurement that is due, or waits for it on the step's own timer (measurements
    only read, so nothing is recorded before one)."""
    policy = ctx.rollback.spec.verification.on_failure
    now = ctx.clock()
    if rec.state == StepState.PENDING.value:
        rec.state, rec.started_at = StepState.RUNNING.value, now
    check = _check(ctx.rollback.spec, step)
    due = rec.started_at + datetime.timedelta(seconds=check.interval_seconds * rec.attempts)
    if now < due:
        return Wait(at=due, reason=f"{step.name}: measurement {rec.attempts + 1} of {check.count} is due")
    kind, m = _measure(ctx, step, check)
    rec.attempts += 1
    if m.outcome == "Failed":
        rec.failures += 1
        rec.consecutive_failures += 1
    else:
        rec.consecutive_failures = 0
    rec.inconclusive += 1 if m.outcome == "Inconclusive" else 0
    rec.message = (f"{rec.attempts} of {check.count} measurement(s), {rec.failures} failed"
                   + (f", {rec.inconclusive} inconclusive" if rec.inconclusive else "") + f"; last: {m.detail}")
    limit = check.consecutive_failure_limit
    if rec.failures > check.failure_limit or (limit is not None and rec.consecutive_failures > limit):
        outcome = "Failed"
    elif rec.inconclusive > check.inconclusive_limit:
        outcome = "Inconclusive"
    elif rec.attempts < check.count:
        ctx.save()
        return Wait(at=rec.started_at + datetime.timedelta(seconds=check.interval_seconds * rec.attempts),
                    reason=f"{step.name}: measurement {rec.attempts + 1} of {check.count} is due")
    else:
        outcome = "Passed"
    ctx.status.verification = [v for v in ctx.status.verification if v.name != step.name] + [
        VerificationResult(name=step.name, kind=kind, outcome=outcome, detail=rec.message, checked_at=now)]
    metrics.VERIFICATIONS.labels(kind, outcome).inc()
    if outcome != "Passed":
        reason = "VerificationFailed" if outcome == "Failed" else "VerificationInconclusive"
        what = "failed" if outcome == "Failed" else "was inconclusive"
        ctx.condition(C.VERIFIED, "False" if outcome == "Failed" else "Unknown", reason,
                      f"Check {check.name} {what}: {rec.message}")
        if policy == "Fail":
            raise StepFailed(reason, f"check {check.name} {what}: {rec.message}")
        ctx.emit("Warning", reason, f"check {check.name} {what}: {rec.message}")
    ctx.succeed(step, rec, rec.message, emit=False)
    return None

