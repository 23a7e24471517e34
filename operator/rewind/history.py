"""Secret history: Kubernetes keeps no earlier versions of a Secret, so Rewind does.

For Secrets labelled `rewind.dev/track: "true"` the operator writes, on every change, an immutable
copy `<name>.rewind.<n>` in the same namespace (owned by the Secret, so it goes when the Secret
goes), labelled with the Secret's name and the revision, annotated with a hash of the data, and
prunes beyond the history limit. The Secret rollback step restores from these copies; the
`kubectl rewind history` command lists them (key names, sizes and hashes; never values).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json

from rewind.adapters.kube import SECRETS, Kube, KubeError, owner_reference

TRACK_LABEL = "rewind.dev/track"
HISTORY_OF_LABEL = "rewind.dev/history-of"
REVISION_LABEL = "rewind.dev/revision"
HASH_ANNOTATION = "rewind.dev/data-hash"
LIMIT_ANNOTATION = "rewind.dev/history-limit"
DEFAULT_HISTORY_LIMIT = 10


# --- pure helpers ----------------------------------------------------------------------------


def data_hash(secret: dict) -> str:
    """Of the type and the data, canonically; equal data gives an equal hash."""
    canonical = json.dumps({"type": secret.get("type", "Opaque"), "data": secret.get("data") or {}},
                           sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def key_summary(secret: dict) -> list[str]:
    return [f"{k} ({len(base64.b64decode(v))} bytes)" for k, v in sorted((secret.get("data") or {}).items())]


def copy_name(name: str, revision: int) -> str:
    return f"{name}.rewind.{revision}"


def build_copy(secret: dict, revision: int, recorded_at: str) -> dict:
    meta = secret["metadata"]
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != TRACK_LABEL}
    labels.update({HISTORY_OF_LABEL: meta["name"], REVISION_LABEL: str(revision),
                   "app.kubernetes.io/managed-by": "rewind"})
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": copy_name(meta["name"], revision), "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {HASH_ANNOTATION: data_hash(secret), "rewind.dev/recorded-at": recorded_at,
                            "rewind.dev/source-resource-version": meta.get("resourceVersion", "")},
            "ownerReferences": [owner_reference({"apiVersion": "v1", "kind": "Secret", **secret})],
        },
        "type": secret.get("type", "Opaque"),
        "data": secret.get("data") or {},
        "immutable": True,
    }


def revision_of(copy: dict) -> int:
    return int(copy["metadata"]["labels"][REVISION_LABEL])


# --- history ---------------------------------------------------------------------------------


def history(kube: Kube, namespace: str, name: str) -> list[dict]:
    """The Secret's recorded versions, oldest first."""
    copies = kube.list(SECRETS, namespace, label_selector=f"{HISTORY_OF_LABEL}={name}")
    return sorted((c for c in copies if c["metadata"]["name"] == copy_name(name, revision_of(c))),
                  key=revision_of)


def record(kube: Kube, secret: dict) -> int | None:
    """Keeps the Secret's current version as a history entry unless the newest entry already
    holds it; returns the new revision (None when nothing was recorded). Prunes old entries."""
    meta = secret["metadata"]
    entries = history(kube, meta["namespace"], meta["name"])
    if entries and entries[-1]["metadata"]["annotations"].get(HASH_ANNOTATION) == data_hash(secret):
        return None
    revision = revision_of(entries[-1]) + 1 if entries else 1
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        kube.create(SECRETS, meta["namespace"], build_copy(secret, revision, now))
    except KubeError as e:
        if e.status == 409:
            return None   # another event (or operator) recorded this revision first
        raise
    for old in entries[:max(0, len(entries) + 1 - _limit(secret))]:
        _delete(kube, meta["namespace"], old["metadata"]["name"])
    return revision


def _limit(secret: dict) -> int:
    value = (secret["metadata"].get("annotations") or {}).get(LIMIT_ANNOTATION, "")
    return int(value) if value.isdigit() and int(value) >= 1 else DEFAULT_HISTORY_LIMIT


def _delete(kube: Kube, namespace: str, name: str) -> None:
    try:
        kube.request("DELETE", SECRETS.path(namespace, name))
    except KubeError as e:
        if not e.not_found:
            raise
