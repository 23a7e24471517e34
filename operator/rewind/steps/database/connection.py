"""The operator's own connection to PostgreSQL, for the work it does itself rather than in a Job
(preflight, the restore's fence, verify, actions, the swap).

The URL is read from the Secret at each use and held only in memory. The adapter's errors are the
one error shape the engine records (reason and message): they name host, port, user and database,
never the password, and that is all of them that reaches status.
"""

from __future__ import annotations

import base64
import datetime

from rewind.adapters import db
from rewind.adapters.kube import Kube
from rewind.api.v1alpha1 import DatabaseSpec, PlanStep
from rewind.context import Context, StepFailed, Wait
from rewind.adapters.secrets import read_secret

# The ledger lives here: the live database cannot hold it, since the swap renames it.
MAINTENANCE_DB = "postgres"
LOCK_RETRY_SECONDS = 1.0


def target(kube: Kube, namespace: str, spec: DatabaseSpec) -> db.Target:
    """The server and database the connection Secret names."""
    ref = spec.connection.secret_ref
    secret = read_secret(kube, namespace, ref.name, "the connection Secret")
    value = (secret.get("data") or {}).get(ref.key)
    if value is None:
        raise StepFailed("SecretKeyNotFound",
                         f"Secret {namespace}/{ref.name} has no key {ref.key!r} "
                         f"(keys: {', '.join(sorted(secret.get('data') or {})) or 'none'})")
    try:
        url = base64.b64decode(value).decode("utf-8").strip()
    except (ValueError, UnicodeDecodeError):
        raise StepFailed("InvalidConnection", f"Secret {namespace}/{ref.name} key {ref.key!r} "
                                              "is not a UTF-8 URL") from None
    try:
        return db.parse_url(url)
    except db.DatabaseError as e:
        raise StepFailed(e.reason, f"Secret {namespace}/{ref.name} key {ref.key!r}: {e.message}") from None


def locked(ctx: Context, step: PlanStep) -> Wait:
    """Another operator instance holds this step's advisory lock right now: look again shortly."""
    return Wait(at=ctx.clock() + datetime.timedelta(seconds=LOCK_RETRY_SECONDS),
                reason=f"{step.name}: another operator instance is on this step")
