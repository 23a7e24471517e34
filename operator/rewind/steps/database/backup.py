"""The pre-rollback dump of the live database, taken before anything changes, so that the
rollback itself can be undone. On by default; waiving it takes a reason in the spec (CEL).

It never waits blind: pg_dump waits for its table locks only a short time (job.lock_wait_timeout,
from the severity's target), the Job's deadline is what is left of the target, and while the Job
runs, or once it gave up on a lock, the step says who holds the lock it waits for (pid, user,
application, table and mode; never what that session runs)."""

from __future__ import annotations

import re

from rewind.adapters import db
from rewind.api import conditions as C
from rewind.api.v1alpha1 import PlanStep, StepRecord
from rewind.context import Context, StepFailed, Wait
from rewind.steps import jobs
from rewind.steps.database import connection, job, state
from rewind.steps.database.names import backup_to

# The backup script's exit code when pg_dump gave up waiting for a lock (scripts/backup.sh).
EXIT_LOCK_TIMEOUT = 23
LOCK_WAIT = "pg_dump waits for a lock: "
# spec.backupCompression -> pg_dump's --compress ("": its own default, gzip level 6).
COMPRESS_LEVEL = {"None": "0", "Fast": "1", "Default": ""}


def advance_backup(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = state.spec(ctx)
    live = step.target.name
    place = backup_to(spec, ctx.namespace, ctx.name, ctx.uid)
    ref = place.ref
    started = f"Dumping the live database {live} to {ref} before anything changes."
    ctx.begin(step, rec, started, C.DATABASE_RESTORED)
    outcome = job.run(ctx, step, rec, lambda seconds: job.build(
        ctx, step, place=place, script=job.BACKUP_SCRIPT, seconds=seconds, read_only=False,
        extra_env=dict(ROLLBACK_UID=ctx.uid, LOCK_WAIT_TIMEOUT=job.lock_wait_timeout(ctx),
                       COMPRESS=COMPRESS_LEVEL[spec.backup_compression]),
        s3_env=dict(ROLLBACK_UID=ctx.uid)), f"pg_dump to {ref}")
    if isinstance(outcome, Wait):
        return _say_what_it_waits_for(ctx, step, rec, live, started) or outcome
    if outcome.state == "failed":
        message = outcome.message or "the pre-rollback backup Job failed"
        if outcome.exit_code == EXIT_LOCK_TIMEOUT:
            message += "; " + _holders(ctx, live, _table(outcome.message))
        raise StepFailed("PreRollbackBackupFailed", f"{message}; nothing was changed")
    result = outcome.result()
    st = state.status(ctx)
    st.pre_rollback_backup, st.pre_rollback_backup_sha256 = ref, result.get("sha256")
    st.pre_rollback_backup_bytes = result.get("bytes")
    ctx.succeed(step, rec, f"The live database {live} is saved to {ref} "
                f"({result.get('bytes')} bytes).", "PreRollbackBackupTaken")
    jobs.delete_job(ctx.kube, ctx.namespace, step.job_name)   # after the outcome is recorded
    return None


def _say_what_it_waits_for(ctx: Context, step: PlanStep, rec: StepRecord, live: str,
                           started: str) -> Wait | None:
    """While the Job runs: if pg_dump waits for a lock, the step's message names its holder (and
    goes back to the plain one once it does not). None: the message stays as it is."""
    with db.connect(connection.target(ctx.kube, ctx.namespace, state.spec(ctx)), live) as conn:
        held = db.lock_waits(conn, "pg_dump")
    if held:
        message = LOCK_WAIT + "; ".join(map(str, held)) + f" (it gives up after {job.lock_wait_timeout(ctx)})."
    elif (rec.message or "").startswith(LOCK_WAIT):
        message = started
    else:
        return None
    return job.wait(ctx, step, rec, message, seconds=job.deadline_seconds(ctx, rec))


def _table(message: str) -> str | None:
    found = re.search(r"for a lock on table (\S+) and gave up", message or "")
    return found.group(1) if found else None


def _holders(ctx: Context, live: str, table: str | None) -> str:
    """Who holds an exclusive lock on `table` (or any table of the live database) right now."""
    try:
        with db.connect(connection.target(ctx.kube, ctx.namespace, state.spec(ctx)), live) as conn:
            held = db.exclusive_locks(conn, table)
    except db.DatabaseError as e:
        return f"who holds it is unknown ({e.message})"
    if not held:
        return "no session holds it any more"
    return "held by " + "; ".join(map(str, held))
