"""Secret rollback, from the Secret history Rewind keeps (rewind.history) or from another Secret.

A rollback of Secrets is one step for all of them: first each current version is kept as a
history entry (so the rollback can itself be undone), then each Secret is written, guarded by
resourceVersion. If any write fails, the Secrets already written are put back: all change or
none. After a crash, each Secret's data hash says whether it is done, still to do, or changed by
someone else. No value ever leaves a Secret: status holds key names, sizes and hashes.
"""

from __future__ import annotations

from rewind.adapters.kube import JSON_PATCH, SECRETS, Kube, KubeError
from rewind.adapters.secrets import read_secret
from rewind.api import conditions as C
from rewind.api.v1alpha1 import (
    PREVIOUS, CertificateTarget, PlanStep, SecretChange, SecretTarget, StepAction, StepKind,
    StepRecord, StepState, TargetRef,
)
from rewind import crashpoints
from rewind.api.errors import ReasonedError
from rewind.context import Context, Found, Request, StepFailed
from rewind.history import HASH_ANNOTATION, TRACK_LABEL, data_hash, history, key_summary, record, revision_of
from rewind.steps import certificates, consumers


# --- planning ---------------------------------------------------------------------------------


def _source(kube: Kube, namespace: str, target: SecretTarget, current: dict) -> tuple[str, dict]:
    if target.from_secret:
        src = read_secret(kube, namespace, target.from_secret, "the Secret to restore from")
        return src["metadata"]["name"], src
    entries = history(kube, namespace, target.name)
    if not entries:
        raise StepFailed("RevisionNotFound", f"Secret {namespace}/{target.name} has no history: "
                                             f"label it {TRACK_LABEL}=true so that Rewind keeps its versions")
    listing = ", ".join(str(revision_of(e)) for e in entries)
    if target.to_revision == PREVIOUS:
        here = data_hash(current)
        older = [e for e in entries if e["metadata"]["annotations"].get(HASH_ANNOTATION) != here]
        if not older:
            raise StepFailed("RevisionNotFound", f"Secret {namespace}/{target.name} has no earlier "
                                                 f"version that differs from its current data (revisions kept: {listing})")
        chosen = older[-1]
    else:
        chosen = next((e for e in entries if revision_of(e) == target.to_revision), None)
        if chosen is None:
            raise StepFailed("RevisionNotFound", f"revision {target.to_revision} of Secret "
                                                 f"{namespace}/{target.name} not found (revisions kept: {listing})")
    return chosen["metadata"]["name"], chosen


def preflight(kube: Kube, req: Request) -> Found:
    """The Secrets and certificates step, the TLS checks of the restored certificates, and the
    restart of the workloads that use the restored Secrets (spec.restartConsumers)."""
    spec = req.spec
    if not spec.secrets and not spec.certificates:
        return Found()
    step, warnings = resolve(kube, req.namespace, spec.secrets or [], spec.certificates or [])
    steps = [step, *certificates.verify_steps(spec.certificates or [], step.secrets)]
    if spec.restart_consumers:
        excluded = {(t.kind, t.name) for t in spec.application or []}
        restart = consumers.resolve(kube, req.namespace, [c.name for c in step.secrets], excluded)
        steps += [restart] if restart else []
    return Found(steps=steps, warnings=warnings)


def resolve(kube: Kube, namespace: str, targets: list[SecretTarget],
            certs: list[CertificateTarget]) -> tuple[PlanStep, list[str]]:
    """Preflight for the Secrets and certificates: each exists, its source exists and is of the
    same type, a certificate's source is fit to serve. Returns the step and warnings (Secrets that
    a controller may overwrite)."""
    changes, problems, warnings = [], [], []
    as_targets = [(t, None) for t in targets] + [
        (SecretTarget(name=c.secret_name, namespace=c.namespace, to_revision=c.to_revision,
                      from_secret=c.from_secret), c) for c in certs]
    for t, cert in as_targets:
        try:
            if t.namespace and t.namespace != namespace:
                raise StepFailed(C.NAMESPACE_NOT_ALLOWED,
                                 f"Secret {t.namespace}/{t.name} is in another namespace; a Rollback "
                                 f"only touches its own namespace ({namespace})")
            current = read_secret(kube, namespace, t.name, "Secret")
            if cert:
                certificates.require_tls(current, "Secret")
            source_name, source = _source(kube, namespace, t, current)
            if source.get("type", "Opaque") != current.get("type", "Opaque"):
                raise StepFailed("SecretTypeMismatch", f"{source_name} is of type {source.get('type')}, "
                                 f"Secret {t.name} of type {current.get('type')}")
            fp = certificates.validate(cert, source, source_name) if cert else None
            owner = certificates.managed_by(current)
            if owner:
                warnings.append(f"Secret {t.name} is managed by {owner}, which may overwrite the "
                                "restored value; pause it or pin it to the restored version")
            changes.append(SecretChange(name=t.name, source=source_name, from_hash=data_hash(current),
                                        to_hash=data_hash(source), keys=key_summary(source),
                                        fingerprint=fp))
        except ReasonedError as e:
            problems.append(e)
    if problems:
        raise StepFailed(problems[0].reason, "; ".join(p.message for p in problems))
    same = all(c.from_hash == c.to_hash for c in changes)
    return PlanStep(name="secrets", kind=StepKind.SECRETS_RESTORE,
                    target=TargetRef(kind="Secrets", name=",".join(c.name for c in changes)),
                    action=StepAction.NO_OP if same else StepAction.RESTORE, secrets=changes), warnings


# --- execution -------------------------------------------------------------------------------


def _write(kube: Kube, namespace: str, secret: dict, source: dict) -> None:
    kube.patch(SECRETS, namespace, secret["metadata"]["name"], [
        {"op": "test", "path": "/metadata/resourceVersion", "value": secret["metadata"]["resourceVersion"]},
        {"op": "replace", "path": "/data", "value": source.get("data") or {}},
    ], JSON_PATCH)


def advance(ctx: Context, step: PlanStep, rec: StepRecord) -> None:
    names = ", ".join(c.name for c in step.secrets)
    if rec.state == StepState.PENDING.value and step.action == StepAction.NO_OP.value:
        ctx.skip(step, rec, f"Secrets {names} already hold the data to restore; nothing to change.")
        return None
    ctx.begin(step, rec, f"Restoring Secrets {names}.", C.SECRETS_RESTORED)   # intent, before the writes

    ns = ctx.namespace
    current = {c.name: read_secret(ctx.kube, ns, c.name, "Secret") for c in step.secrets}
    for c in step.secrets:   # what they hold now is kept, so the rollback can be undone
        if data_hash(current[c.name]) == c.from_hash:
            record(ctx.kube, current[c.name])
    written: list[str] = []
    try:
        for c in step.secrets:
            secret = current[c.name]
            here = data_hash(secret)
            if here == c.to_hash:
                continue
            if here != c.from_hash:
                raise StepFailed(C.CONFLICT, f"Secret {c.name} changed after planning; nothing of "
                                             "it was written")
            source = read_secret(ctx.kube, ns, c.source, "the Secret to restore from")
            if data_hash(source) != c.to_hash:
                raise StepFailed(C.CONFLICT, f"{c.source} changed after planning")
            try:
                _write(ctx.kube, ns, secret, source)
                crashpoints.reach("SecretsRestore:after-write")
            except KubeError as e:
                if e.transient:
                    raise
                raise StepFailed(C.CONFLICT if e.status in (409, 422) else C.OPERATOR_ERROR,
                                 f"writing Secret {c.name} failed ({e.status} {e.reason})") from None
            written.append(c.name)
    except ReasonedError as e:
        _undo(ctx, step, written)
        raise StepFailed(e.reason, f"{e.message}; every Secret was put back as it was "
                                   f"({', '.join(written) or 'none had been written'})") from None
    message = f"Secrets {names} hold their earlier data again; what they held is kept in their history."
    ctx.condition(C.SECRETS_RESTORED, "True", "Restored", message)
    ctx.succeed(step, rec, message, "SecretsRestored")
    return None


def _undo(ctx: Context, step: PlanStep, written: list[str]) -> None:
    """Puts the written Secrets back to the version kept in their history before the writes."""
    for c in step.secrets:
        if c.name not in written:
            continue
        kept = next((e for e in reversed(history(ctx.kube, ctx.namespace, c.name))
                     if e["metadata"]["annotations"].get(HASH_ANNOTATION) == c.from_hash), None)
        secret = read_secret(ctx.kube, ctx.namespace, c.name, "Secret")
        if kept is not None:
            _write(ctx.kube, ctx.namespace, secret, kept)
