"""A Rollback applied by a GitOps pipeline runs once.

Argo CD and Flux apply what Git holds: a re-sync after a prune, a `Replace=true` sync, or a second
copy of the same file in another path re-creates a Rollback that already ran, with a new UID, and
a re-created `toRevision: previous` would roll back once more. So a rollback claims its key
(`spec.idempotencyKey`; for a Rollback that Argo CD or Flux applied, its name by default) as a
Lease `rewind-key-<hash>` in its namespace when its plan is fixed. The Lease is owned by nothing:
it outlives the Rollback. A Rollback whose key another Rollback (another UID) claimed ends at
once, before preflight, `Failed` with reason `AlreadyApplied`, changing nothing. Deleting the
Lease lets the key run again (a person's decision).
"""

from __future__ import annotations

import hashlib

from rewind.adapters.kube import KubeError, Resource
from rewind.api.errors import ReasonedError

LEASES = Resource("coordination.k8s.io", "v1", "leases")
KEY_ANNOTATION = "rewind.dev/idempotency-key"
ALREADY_APPLIED = "AlreadyApplied"
# What Argo CD and Flux put on what they apply: such a Rollback gets its name as its key.
APPLIED_BY_GITOPS = ("argocd.argoproj.io/tracking-id", "kustomize.toolkit.fluxcd.io/name",
                     "helm.toolkit.fluxcd.io/name", "app.kubernetes.io/instance")


def key_of(obj: dict, spec) -> str | None:
    if spec.idempotency_key:
        return spec.idempotency_key
    meta = obj["metadata"]
    marks = {**(meta.get("labels") or {}), **(meta.get("annotations") or {})}
    return f"rollback/{meta['name']}" if any(m in marks for m in APPLIED_BY_GITOPS) else None


def lease_name(key: str) -> str:
    return "rewind-key-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def holder(namespace: str, name: str, uid: str) -> str:
    return f"{namespace}/{name}/{uid}"


def _refuse(key: str, lease: dict) -> ReasonedError:
    spec, meta = lease.get("spec") or {}, lease["metadata"]
    return ReasonedError(ALREADY_APPLIED, f"idempotency key {key!r} was already used by Rollback "
                         f"{spec.get('holderIdentity', '?')} (claimed {meta.get('creationTimestamp', '?')}); "
                         f"a Rollback runs once, nothing was changed. To run it again on purpose, delete "
                         f"Lease {meta['name']} or use another spec.idempotencyKey")


def check(kube, namespace: str, name: str, uid: str, key: str | None) -> None:
    """Raises AlreadyApplied when another Rollback claimed the key. Reads only."""
    if key is None:
        return
    try:
        lease = kube.get(LEASES, namespace, lease_name(key))
    except KubeError as e:
        if e.not_found:
            return
        raise
    if (lease.get("spec") or {}).get("holderIdentity") != holder(namespace, name, uid):
        raise _refuse(key, lease)


def claim(kube, namespace: str, name: str, uid: str, key: str | None) -> None:
    """Claims the key for this Rollback (get-or-create; ours again after a crash is fine)."""
    if key is None:
        return
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name(key), "annotations": {KEY_ANNOTATION: key},
                         "labels": {"app.kubernetes.io/managed-by": "rewind"}},
            "spec": {"holderIdentity": holder(namespace, name, uid)}}
    try:
        kube.create(LEASES, namespace, body)
    except KubeError as e:
        if not e.conflict:
            raise
        check(kube, namespace, name, uid, key)
