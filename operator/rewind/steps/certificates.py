"""Certificate rollback: a kubernetes.io/tls Secret goes back (with the other Secrets, all or
none, see secrets.py) only after its new content is validated; afterwards a TLS check confirms
that the endpoint serves the restored certificate. Secrets owned by cert-manager or an
external-secrets controller are flagged: their owner may overwrite the restored value."""

from __future__ import annotations

import base64
import datetime

from rewind import egress
from rewind.adapters import tls
from rewind.api import conditions as C
from rewind.api.v1alpha1 import (
    CertificateTarget, PlanStep, SecretChange, StepAction, StepKind, StepRecord, TargetRef,
    VerificationResult,
)
from rewind.context import Context, StepFailed, Wait

TLS_TYPE = "kubernetes.io/tls"
POLL_SECONDS = 1.0


def _field(secret: dict, key: str) -> bytes | None:
    value = (secret.get("data") or {}).get(key)
    return base64.b64decode(value) if value is not None else None


def require_tls(secret: dict, what: str) -> None:
    if secret.get("type") != TLS_TYPE:
        raise StepFailed("NotATLSSecret", f"{what} {secret['metadata']['name']} is of type "
                         f"{secret.get('type', 'Opaque')}, not {TLS_TYPE}")


def validate(target: CertificateTarget, source: dict, source_name: str) -> str:
    """The certificate to restore is fit to serve; returns its leaf's fingerprint."""
    require_tls(source, "the certificate to restore from")
    crt, key = _field(source, "tls.crt"), _field(source, "tls.key")
    if not crt or not key:
        raise StepFailed("CertificateInvalid", f"{source_name} lacks tls.crt or tls.key")
    try:
        checked = tls.check_pair(crt, key, hosts=target.hosts, ca=_field(source, "ca.crt"),
                                 min_valid=datetime.timedelta(days=target.min_valid_days))
    except tls.CertificateError as e:
        raise StepFailed(e.reason, f"{source_name}: {e.message}") from None
    return checked.fingerprint


def managed_by(secret: dict) -> str | None:
    """Who else writes this Secret, if a controller does."""
    meta = secret["metadata"]
    annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    if "cert-manager.io/certificate-name" in annotations:
        return f"cert-manager (Certificate {annotations['cert-manager.io/certificate-name']})"
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "ExternalSecret" or "external-secrets.io" in ref.get("apiVersion", ""):
            return f"external-secrets (ExternalSecret {ref.get('name')})"
    if any(k.startswith("reconcile.external-secrets.io") for k in labels):
        return "external-secrets"
    return None


def verify_steps(certs: list[CertificateTarget], changes: list[SecretChange]) -> list[PlanStep]:
    by_name = {c.name: c for c in changes}
    steps = []
    for cert in certs:
        if cert.verify:
            endpoint = f"{cert.verify.host}:{cert.verify.port}"
            steps.append(PlanStep(name=f"certificate/{cert.secret_name}/served", kind=StepKind.TLS_VERIFY,
                                  target=TargetRef(kind="Endpoint", name=endpoint),
                                  action=StepAction.RESTORE, secrets=[by_name[cert.secret_name]],
                                  spec_key=cert.secret_name))
    return steps


def advance(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    """After the swap: the endpoint serves the restored certificate (by fingerprint), valid now,
    for the expected name. The server may take a while to reload; the check waits that long, on
    its own timer."""
    change = step.secrets[0]
    cert = next(c for c in ctx.rollback.spec.certificates if c.secret_name == step.spec_key)
    name = cert.verify.server_name or cert.hosts[0]
    ctx.begin(step, rec, f"Checking that {step.target.name} serves the restored certificate for {name}.")
    now = ctx.clock()
    try:
        served = tls.served(cert.verify.host, cert.verify.port, name, rules=egress.rules_of(ctx.policy))
        got = tls.fingerprint(served)
        problem = None
        if got != change.fingerprint:
            problem = f"{step.target.name} serves certificate {got[:16]}..., not the restored {change.fingerprint[:16]}..."
        elif not tls.covers(tls._names(served), name):
            problem = f"the served certificate does not cover {name}"
        elif served.not_valid_after_utc <= now:
            problem = "the served certificate has expired"
    except egress.EgressDenied as e:
        raise StepFailed(e.reason, f"{step.target.name}: {e.message}") from None
    except egress.HostNotFound as e:
        problem = e.message
    except (OSError, ValueError) as e:
        problem = f"cannot complete a TLS handshake with {step.target.name}: {egress.failure(e)}"
    deadline = rec.started_at + datetime.timedelta(seconds=cert.verify.timeout_seconds)
    if problem and now < deadline:
        return ctx.waiting(step, rec, problem + "; waiting for the server to reload.", deadline,
                           look_again=POLL_SECONDS)
    outcome = "Failed" if problem else "Passed"
    detail = problem or f"{step.target.name} serves the restored certificate {change.fingerprint[:16]}... for {name}"
    ctx.status.verification = [v for v in ctx.status.verification if v.name != step.name] + [
        VerificationResult(name=step.name, kind="TLS", outcome=outcome, detail=detail, checked_at=now)]
    if problem:
        ctx.condition(C.VERIFIED, "False", "VerificationFailed", detail)
        raise StepFailed("VerificationFailed", detail)
    ctx.succeed(step, rec, detail + ".", "CertificateServed")
    return None
