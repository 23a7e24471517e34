"""The restore, into a staging database and never into the live one, so that production keeps
serving (and a bad dump changes nothing) until the swap.

It is the one step whose side effect must not happen twice and whose Job may finish while no
operator watches, so it is fenced in PostgreSQL itself: a ledger row (claimed -> job-created ->
restored | failed) moved under an advisory lock, and a staging database that only Rewind's
comment marks as its own. A Job that vanished after `job-created` without an outcome leaves the
result unknowable: the step stops as Interrupted for a person, it does not restore again.
"""

from __future__ import annotations

from rewind import crashpoints
from rewind.adapters import db
from rewind.api import conditions as C
from rewind.api.v1alpha1 import PlanStep, StepRecord
from rewind.context import Context, StepFailed, Wait
from rewind.steps import jobs
from rewind.steps.database import connection, job, names, state
from rewind.steps.database.connection import MAINTENANCE_DB
from rewind.steps.database.names import staging_comment, staging_name

# The restore script's exit codes (scripts/restore.sh); any other is RestoreFailed.
EXIT_REASONS = {30: "BackupCorrupt", 31: "RestoreFailed", 32: "SourceDiffers", 33: "BackupCorrupt",
                10: "BackupNotFound", 12: "BackupCorrupt", 14: "BackupAccessDenied", 15: "BackupUnreachable",
                16: "BackupChecksumMissing"}   # 10-16: fetching the object (adapters/s3.py)


def advance_restore(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = state.spec(ctx)
    live = step.target.name
    staging = staging_name(live, ctx.uid)
    place = names.source(spec)
    ref = place.ref
    ctx.begin(step, rec, f"Restoring {ref} into the staging database {staging}.", C.DATABASE_RESTORED)
    target = connection.target(ctx.kube, ctx.namespace, spec)
    with db.connect(target, MAINTENANCE_DB) as conn:
        db.ensure_ledger(conn)
        if not db.try_lock(conn, f"rewind:{ctx.uid}:restore"):
            return connection.locked(ctx, step)
        fence = db.ledger_state(conn, ctx.uid, "restore")
        if fence is None:
            db.ledger_advance(conn, ctx.uid, "restore", None, "claimed", staging)
            fence = db.ledger_state(conn, ctx.uid, "restore")
        if fence == "claimed":
            exists, comment = db.database_comment(conn, staging)
            if exists and comment is None and db.is_empty(target, staging):
                # Our CREATE DATABASE went through and the crash came before its COMMENT.
                db.set_comment(conn, staging, staging_comment(ctx.uid))
                comment = staging_comment(ctx.uid)
            if exists and comment != staging_comment(ctx.uid):
                raise StepFailed("StagingNameTaken", f"the staging database name {staging!r} is "
                                                     "taken by a database Rewind did not create")
            like = db.database_properties(conn, live)
            if like is None:
                raise StepFailed("DatabaseNotFound", f"the live database {live!r} is gone; nothing was restored")
            if not exists:
                db.create_database(conn, staging, staging_comment(ctx.uid), like=like)
            state.status(ctx).staging_database = staging
            # An object is fetched again, and must be what the check step checked.
            checked = state.status(ctx).backup_source_sha256
            jobs.ensure_job(ctx.kube, job.build(
                ctx, step, place=place, script=job.RESTORE_SCRIPT, seconds=job.deadline_seconds(ctx, rec),
                read_only=True, extra_env=dict(TARGET_DB=staging, **source_expectation(like, spec)),
                s3_env={"EXPECT_SHA256": checked} if checked else {}))
            crashpoints.reach(f"{step.kind}:after-job-created")
            db.ledger_advance(conn, ctx.uid, "restore", "claimed", "job-created", staging)
            return job.wait(ctx, step, rec, f"Job {step.job_name} restores {ref} into {staging}.",
                            seconds=job.deadline_seconds(ctx, rec))
        if fence == "restored":
            return _restored(ctx, step, rec, staging, ref)
        if fence == "failed":
            raise StepFailed("RestoreFailed", f"the restore into {staging} failed earlier; "
                                              f"the live database {live} is unchanged")
        outcome = jobs.job_outcome(ctx.kube, ctx.namespace, step.job_name)
        if outcome.state == "running":
            return job.wait(ctx, step, rec, rec.message, outcome, job.deadline_seconds(ctx, rec))
        if outcome.state == "missing":
            raise StepFailed(C.INTERRUPTED, f"the restore Job {step.job_name} disappeared before its "
                                            f"outcome was recorded; the staging database {staging} "
                                            f"may be partly restored. The live database {live} is "
                                            "unchanged; inspect staging, then create a new Rollback")
        if outcome.state == "failed":
            db.ledger_advance(conn, ctx.uid, "restore", "job-created", "failed")
            raise StepFailed(EXIT_REASONS.get(outcome.exit_code, "RestoreFailed"),
                             f"{outcome.message or 'the restore Job failed'}; "
                             f"the live database {live} is unchanged and the "
                             f"staging database {staging} is kept for inspection")
        db.ledger_advance(conn, ctx.uid, "restore", "job-created", "restored", staging)
    return _restored(ctx, step, rec, staging, ref)


def source_expectation(live: db.DatabaseProperties, spec) -> dict[str, str]:
    """What the restore Job compares with the archive's own record of its source database: a
    backup of a database created otherwise (another encoding or collation) restores into one
    created like the live one, where text may sort, compare or convert differently; it is refused
    (SourceDiffers) unless the spec says why it may be restored anyway."""
    expect = {"SOURCE_EXPECT": f"encoding={live.encoding} provider={live.provider} collate={live.collate} "
                                f"ctype={live.ctype} locale={live.locale or ''}"}
    if spec.accept_source_differences_reason:
        expect["ACCEPT_SOURCE_DIFFERENCES"] = "true"
    return expect


def _restored(ctx: Context, step: PlanStep, rec: StepRecord, staging: str, ref: str) -> None:
    state.status(ctx).staging_database = staging
    ctx.succeed(step, rec, f"{ref} is restored into the staging database {staging}.", "StagingRestored")
    jobs.delete_job(ctx.kube, ctx.namespace, step.job_name)   # after the outcome is recorded
    return None
