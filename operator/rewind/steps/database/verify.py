"""Verify the staging database before it goes live: a restore that ran clean can still be the
wrong or a truncated dump, and after the swap production would serve it. Each listed table must
exist with at least minRows rows, or exactly as many as the backup's manifest says."""

from __future__ import annotations

from rewind.adapters import db
from rewind.api import conditions as C
from rewind.api.v1alpha1 import PlanStep, StepRecord, VerificationResult
from rewind.context import Context, StepFailed, Wait
from rewind.steps.database import connection, state
from rewind.steps.database.names import staging_of


def advance_verify(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = state.spec(ctx)
    staging = staging_of(spec, step.target.name, ctx.uid)
    ctx.begin(step, rec, f"Verifying the staging database {staging}.", C.DATABASE_RESTORED)
    target = connection.target(ctx.kube, ctx.namespace, spec)
    expected = (ctx.status.database.backup_row_counts if ctx.status.database else None) or {}
    tables = list(dict.fromkeys([*spec.verify.tables, *sorted(expected)]))
    with db.connect(target, staging) as conn:
        counts = db.table_counts(conn, tables)
    now = ctx.clock()
    results, failures = [], []
    for table, count in counts.items():
        want = expected.get(table)
        if count is None:
            outcome, detail = "Failed", f"table {table} does not exist in the restored database"
        elif want is not None and count != want:
            outcome, detail = "Failed", f"table {table} has {count} rows; the backup's manifest says {want}"
        elif count < spec.verify.min_rows:
            outcome, detail = "Failed", f"table {table} has {count} rows, fewer than {spec.verify.min_rows}"
        else:
            outcome, detail = "Passed", f"table {table} has {count} rows" + (
                ", as the backup's manifest says" if want is not None else "")
        results.append(VerificationResult(name=f"database/table/{table}", kind="SQL",
                                          outcome=outcome, detail=detail, checked_at=now))
        if outcome == "Failed":
            failures.append(detail)
    ctx.status.verification = [v for v in ctx.status.verification
                               if not v.name.startswith("database/")] + results
    if failures:
        ctx.condition(C.VERIFIED, "False", "VerificationFailed", "; ".join(failures))
        raise StepFailed("VerificationFailed", "; ".join(failures) + f"; the swap did not happen and "
                         f"the live database {step.target.name} is unchanged")
    ctx.succeed(step, rec, f"The staging database {staging} holds every listed table "
                f"({', '.join(f'{t}: {c}' for t, c in counts.items())}).", "StagingVerified")
    return None
