"""Named SQL actions (clearing columns, such as OAuth tokens the restore brought back) run on the
staging database before the swap, so production never serves, even for a moment, what they
remove. Each is idempotent: running it again after a crash changes nothing more."""

from __future__ import annotations

from rewind.adapters import db
from rewind.api import conditions as C
from rewind.api.v1alpha1 import PlanStep, StepRecord
from rewind.context import Context, Wait
from rewind.steps.database import connection, state
from rewind.steps.database.names import staging_name


def advance_action(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = state.spec(ctx)
    action = next(a for a in spec.after_restore if a.name == step.spec_key)
    staging = staging_name(step.target.name, ctx.uid)
    ctx.begin(step, rec, f"Running {action.action} ({action.name}) on {action.table} in {staging}.", C.DATABASE_RESTORED)
    target = connection.target(ctx.kube, ctx.namespace, spec)
    filters = [(f.column, f.equals) for f in action.where or []]
    with db.connect(target, staging) as conn:
        rows = db.clear_columns(conn, action.table, action.columns, filters,
                               action.statement_timeout_seconds)
    where = " and ".join(f"{c} matches" for c, _ in filters) or "all rows"
    ctx.succeed(step, rec, f"{action.action} ({action.name}): {', '.join(action.columns)} cleared in "
                f"{rows} row(s) of {action.table} ({where}).", "ActionApplied")
    return None
