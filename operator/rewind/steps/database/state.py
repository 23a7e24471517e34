"""What every database step reads of the Rollback (spec.database) and where each writes what it
found (status.database), which exists only once a step has something to say."""

from __future__ import annotations

from rewind.api.v1alpha1 import DatabaseSpec, DatabaseStatus
from rewind.context import Context


def spec(ctx: Context) -> DatabaseSpec:
    return ctx.rollback.spec.database


def status(ctx: Context) -> DatabaseStatus:
    if ctx.status.database is None:
        ctx.status.database = DatabaseStatus()
    return ctx.status.database
