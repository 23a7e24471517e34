"""Certificate rollback: a kubernetes.io/tls Secret goes back (with the other Secrets, all or
none, see secrets.py) only after its new content is validated as a verifying client would judge
it (adapters/tls.py); afterwards a TLS check confirms that the endpoint serves the restored
certificate, trusted the same way. If it does not by the check's deadline, the Secret is put
back as it was before the rollback, as a failed write is. Secrets owned by cert-manager or an
external-secrets controller are flagged: their owner may overwrite the restored value."""

from __future__ import annotations

import base64
import datetime

from rewind import egress
from rewind.adapters import tls
from rewind.adapters.kube import JSON_PATCH, SECRETS, KubeError
from rewind.adapters.secrets import read_secret
from rewind.api import conditions as C
from rewind.api.errors import ReasonedError
from rewind.api.v1alpha1 import (
    CertificateTarget, PlanStep, SecretChange, StepAction, StepKind, StepRecord, TargetRef,
    VerificationResult,
)
from rewind.context import Context, StepFailed, Wait
from rewind.history import HASH_ANNOTATION, data_hash, history

TLS_TYPE = "kubernetes.io/tls"
POLL_SECONDS = 1.0

CERTIFICATE_NOT_SERVED = "CertificateNotServed"
"""The TlsVerify step failed: by its deadline the endpoint did not serve the restored certificate
trusted and for the expected name; the Secret was put back (set on the step and the rollback)."""

PUT_BACK = "PutBack"
"""SecretsRestored is False: a restored certificate's Secret was put back to its data before the
rollback, because the endpoint check failed."""


def _field(secret: dict, key: str) -> bytes | None:
    value = (secret.get("data") or {}).get(key)
    return base64.b64decode(value) if value is not None else None


def require_tls(secret: dict, what: str) -> None:
    if secret.get("type") != TLS_TYPE:
        raise StepFailed("NotATLSSecret", f"{what} {secret['metadata']['name']} is of type "
                         f"{secret.get('type', 'Opaque')}, not {TLS_TYPE}")


def trust_of(target: CertificateTarget, source: dict, source_name: str) -> tls.Trust:
    """Whom clients trust, as the spec says: a pinned leaf, the restored Secret's ca.crt when the
    spec trusts it, else the system's roots. A ca.crt the spec does not trust is not looked at."""
    trust = target.trust
    if trust and trust.pinned_fingerprint_sha256:
        return tls.Trust(pinned=trust.pinned_fingerprint_sha256, what="the pinned certificate")
    if trust and trust.ca_from_secret:
        ca = _field(source, "ca.crt")
        if not ca:
            raise StepFailed("TrustAnchorsInvalid", f"{source_name} has no ca.crt, which "
                                                    "trust.caFromSecret says to trust")
        try:
            return tls.Trust.of_pem(ca, f"the CA in {source_name}'s ca.crt")
        except tls.CertificateError as e:
            raise StepFailed(e.reason, e.message) from None
    return tls.SYSTEM


def validate(target: CertificateTarget, source: dict, source_name: str) -> str:
    """The certificate to restore is fit to serve; returns its leaf's fingerprint."""
    require_tls(source, "the certificate to restore from")
    crt, key = _field(source, "tls.crt"), _field(source, "tls.key")
    if not crt or not key:
        raise StepFailed("CertificateInvalid", f"{source_name} lacks tls.crt or tls.key")
    try:
        checked = tls.check_pair(crt, key, hosts=target.hosts, trust=trust_of(target, source, source_name),
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


# --- after the swap --------------------------------------------------------------------------


def _served_problem(ctx: Context, step: PlanStep, cert: CertificateTarget, trust: tls.Trust,
                    name: str, now: datetime.datetime) -> str | None:
    """What is wrong with what the endpoint serves, or None: a verifying client (same trust as
    the validation before the swap) accepts it for `name`, and it is the restored certificate."""
    change = step.secrets[0]
    try:
        served = tls.served(cert.verify.host, cert.verify.port, name, trust=trust,
                            rules=egress.rules_of(ctx.policy))
    except egress.EgressDenied as e:
        raise StepFailed(e.reason, f"{step.target.name}: {e.message}") from None
    except (egress.HostNotFound, tls.CertificateError) as e:
        return e.message
    except (OSError, ValueError) as e:
        return f"cannot complete a TLS handshake with {step.target.name}: {egress.failure(e)}"
    got = tls.fingerprint(served)
    if got != change.fingerprint:
        return f"{step.target.name} serves certificate {got[:16]}..., not the restored {change.fingerprint[:16]}..."
    if not tls.matches(served, name):
        return f"the served certificate does not cover {name}"
    if not served.not_valid_before_utc <= now < served.not_valid_after_utc:
        return "the served certificate is not valid now"
    return None


def put_back(ctx: Context, change: SecretChange) -> str:
    """Puts a swapped Secret back to the data it held before the rollback (kept in its history
    before the write), at most once: a Secret that holds that data already is not written again,
    and one that holds neither the restored nor the earlier data is left alone. Returns what was
    done, as a sentence."""
    secret = read_secret(ctx.kube, ctx.namespace, change.name, "Secret")
    here = data_hash(secret)
    if here == change.from_hash:
        return f"Secret {change.name} holds what it held before the rollback again"
    if here != change.to_hash:
        return (f"Secret {change.name} was changed by someone else after the swap, so it was left as "
                "it is: check what it holds now")
    kept = next((e for e in reversed(history(ctx.kube, ctx.namespace, change.name))
                 if e["metadata"]["annotations"].get(HASH_ANNOTATION) == change.from_hash), None)
    if kept is None:
        return (f"Secret {change.name} could not be put back: no copy of what it held before the "
                "rollback is kept; restore it by hand")
    try:
        ctx.kube.patch(SECRETS, ctx.namespace, change.name, [
            {"op": "test", "path": "/metadata/resourceVersion", "value": secret["metadata"]["resourceVersion"]},
            {"op": "replace", "path": "/data", "value": kept.get("data") or {}},
        ], JSON_PATCH)
    except KubeError as e:
        return (f"putting Secret {change.name} back failed ({e.status} {e.reason}); restore it by hand "
                f"from {kept['metadata']['name']}")
    return f"Secret {change.name} was put back to what it held before the rollback"


def advance(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    """After the swap: the endpoint serves the restored certificate (by fingerprint), trusted as
    before the swap, valid now, for the expected name. The server may take a while to reload;
    the check waits that long, on its own timer. Past that, the Secret is put back."""
    change = step.secrets[0]
    cert = next(c for c in ctx.rollback.spec.certificates if c.secret_name == step.spec_key)
    name = cert.verify.server_name or cert.hosts[0]
    ctx.begin(step, rec, f"Checking that {step.target.name} serves the restored certificate for {name}.")
    now = ctx.clock()
    try:
        trusts_ca = bool(cert.trust and cert.trust.ca_from_secret)
        source = read_secret(ctx.kube, ctx.namespace, change.source, "the Secret restored from") if trusts_ca else {}
        problem = _served_problem(ctx, step, cert, trust_of(cert, source, change.source), name, now)
    except StepFailed:
        raise
    except ReasonedError as e:     # the CA to trust cannot be read: nothing is trusted
        problem = e.message
    deadline = rec.started_at + datetime.timedelta(seconds=cert.verify.timeout_seconds)
    if problem and now < deadline:
        return ctx.waiting(step, rec, problem + "; waiting for the server to reload.", deadline,
                           look_again=POLL_SECONDS)
    if problem:
        done = put_back(ctx, change)
        detail = f"{problem}; {done}"
        ctx.condition(C.SECRETS_RESTORED, "False", PUT_BACK, f"{done}, because {step.target.name} "
                      f"did not serve the restored certificate: {problem}.")
    else:
        detail = f"{step.target.name} serves the restored certificate {change.fingerprint[:16]}... for {name}"
    ctx.status.verification = [v for v in ctx.status.verification if v.name != step.name] + [
        VerificationResult(name=step.name, kind="TLS", outcome="Failed" if problem else "Passed",
                           detail=detail, checked_at=now)]
    if problem:
        ctx.condition(C.VERIFIED, "False", C.VERIFICATION_FAILED, detail)
        raise StepFailed(CERTIFICATE_NOT_SERVED, detail)
    ctx.succeed(step, rec, detail + ".", "CertificateServed")
    return None
