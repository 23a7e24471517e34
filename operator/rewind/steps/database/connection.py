"""The operator's own connection to PostgreSQL, for the work it does itself rather than in a Job
(preflight, the restore's fence, verify, actions, the swap).

The URL is read from the Secret at each use and held only in memory. The adapter's errors become
step failures with their reason and message kept: those name host, port, user and database,
never the password, and that is all of them that reaches status.
"""

from __future__ import annotations

import base64
import datetime
from contextlib import contextmanager
from typing import Callable, Iterator

from rewind.adapters import db
from rewind.adapters.kube import Kube
from rewind.api.v1alpha1 import DatabaseSpec, PlanStep
from rewind.context import Context, StepFailed, Wait
from rewind.steps.secrets import read_secret

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


def call(fn: Callable, *args, **kw):
    """An adapter call, its errors as step failures."""
    try:
        return fn(*args, **kw)
    except db.DatabaseError as e:
        raise StepFailed(e.reason, e.message) from None


@contextmanager
def connect(target: db.Target, dbname: str | None = None) -> Iterator:
    """db.connect, its errors as step failures."""
    try:
        with db.connect(target, dbname) as conn:
            yield conn
    except db.DatabaseError as e:
        raise StepFailed(e.reason, e.message) from None


def locked(ctx: Context, step: PlanStep) -> Wait:
    """Another operator instance holds this step's advisory lock right now: look again shortly."""
    return Wait(at=ctx.clock() + datetime.timedelta(seconds=LOCK_RETRY_SECONDS),
                reason=f"{step.name}: another operator instance is on this step")
