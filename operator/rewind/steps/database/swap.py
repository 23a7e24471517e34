"""The swap: the verified staging database takes the live name, and the old live database is
kept as <db>_pre_<uid8>. Two renames and the ledger's move to `swapped` commit in one
transaction, so after any crash the catalog and the ledger agree: nothing was renamed (the swap
runs again) or all of it was (it is adopted). Nothing is dropped.

PostgreSQL renames only a database nobody is connected to. What can be known beforehand is
checked before production is touched: the staging database is closed to new sessions and must
have none (someone inspecting it would make the rename fail after production's sessions were
already ended), else SwapBlocked with production's sessions left alone.

Then, with terminateConnections (the default), the live database is closed to new sessions and
its sessions are ended; those that remain (a superuser's, which this role may not end) are
waited for on a timer, the live database staying closed meanwhile (opening it between looks
would let a connection pool straight back in), for SESSIONS_WAIT at most. Without it, the live
database stays open while its sessions are waited for, and is closed only once none is left
(for the instant of the rename; a session that slipped in between opens it again and the wait
goes on). Whenever the swap gives up or fails, both databases are opened again before the step's
failure is recorded: production is never left closed by a swap that did not happen. An
operator that crashes mid-way leaves it closed until it (or its standby) is back and runs the
step again; a Rollback deleted, or given up after repeated errors, while the step waits gets
`release_swap` from the engine, which opens it again unless the swap committed.
"""

from __future__ import annotations

import datetime
import time

import psycopg

from rewind import crashpoints
from rewind.adapters import db
from rewind.api import conditions as C
from rewind.api.v1alpha1 import PlanStep, StepRecord
from rewind.context import Context, StepFailed, Wait
from rewind.steps.database import connection, state
from rewind.steps.database.connection import MAINTENANCE_DB
from rewind.steps.database.names import is_kept, pre_name, staging_comment, staging_of

# How long production may stay closed to new sessions while the remaining ones end.
SESSIONS_WAIT = datetime.timedelta(seconds=10)
SESSIONS_LOOK_AGAIN_SECONDS = 1.0
# How long a statement of the swap waits for a lock (another ALTER DATABASE on the same database).
LOCK_TIMEOUT = "5s"


def advance_swap(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = state.spec(ctx)
    live = step.target.name
    staging, pre = staging_of(spec, live, ctx.uid), pre_name(live, ctx.uid)
    ctx.begin(step, rec, f"Swapping {staging} in as {live}; the current {live} becomes {pre}.", C.DATABASE_RESTORED)
    target = connection.target(ctx.kube, ctx.namespace, spec)
    with db.connect(target, MAINTENANCE_DB) as conn:
        conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        db.ensure_ledger(conn)
        if not db.try_lock(conn, f"rewind:{ctx.uid}:swap"):
            return connection.locked(ctx, step)
        fence = db.ledger_state(conn, ctx.uid, "swap")
        if fence != "swapped":
            if fence is None:
                db.ledger_advance(conn, ctx.uid, "swap", None, "swapping")
            try:
                # Checked inside the try: a crash after production was closed (before-rename) may
                # be followed by someone dropping staging, and production must be opened again.
                exists, comment = db.database_comment(conn, staging)
                fenced = is_kept(comment, live) if spec.restore_from.kept_database else comment == staging_comment(ctx.uid)
                if not exists:
                    raise StepFailed("StagingDatabaseGone", f"the database {staging} to swap in is gone (dropped "
                                     f"after it was restored); nothing was renamed and {live} is as it was "
                                     "and accepts connections. Create a new Rollback to restore again")
                if not fenced:
                    raise StepFailed(C.INTERRUPTED, f"the database {staging} to swap in is not there as "
                                                    f"Rewind left it; nothing was renamed and {live} accepts "
                                                    "connections")
                _staging_free(conn, live, staging)
                terminate = spec.terminate_connections
                if not terminate and db.sessions(conn, live):
                    # Left open while they go on their own: closing it now would refuse new
                    # connections for as long as we wait, for nothing if the wait is in vain.
                    return _sessions_wait(ctx, step, rec, live, db.sessions(conn, live), terminate)
                db.set_allow_connections(conn, live, False)
                left = db.end_sessions(conn, live, terminate)
                if left:
                    if not terminate:   # one slipped in before the close
                        db.set_allow_connections(conn, live, True)
                    return _sessions_wait(ctx, step, rec, live, left, terminate)
                crashpoints.reach("DatabaseSwap:before-rename")
                try:
                    db.swap(conn, live=live, staging=staging, pre=pre, uid=ctx.uid,
                            ledger_step="swap")
                except psycopg.errors.LockNotAvailable:
                    raise StepFailed("SwapBlocked", f"the rename waited {LOCK_TIMEOUT} for a lock on "
                                     f"{live} or {staging} (another ALTER DATABASE); nothing was "
                                     f"renamed and {live} accepts connections again") from None
                crashpoints.reach("DatabaseSwap:after-rename")
            except BaseException:
                _reopen_after_failed_swap(target, live, ctx.uid, staging)
                raise
        db.set_allow_connections(conn, live, True)
        db.set_allow_connections(conn, pre, True)
    st = state.status(ctx)
    st.live_database, st.staging_database, st.pre_rollback_database = live, None, pre
    st.swapped_at = ctx.clock()
    message = f"{live} now holds the restored data; the previous {live} is kept as {pre}."
    ctx.condition(C.DATABASE_RESTORED, "True", "Swapped", message)
    ctx.succeed(step, rec, message, "DatabaseSwapped")
    return None


STAGING_SESSIONS_GRACE_SECONDS = 2.0


def _staging_free(conn, live: str, staging: str) -> None:
    """The rename of staging must not fail after production's sessions were ended: staging is
    closed to new sessions, and any it has refuse the swap now (SwapBlocked), production as it
    was."""
    db.set_allow_connections(conn, staging, False)
    # The restore Job's own session may outlive its pod by a moment (the server ends a backend a
    # little after its client went): a short look lets such a one go, not a session someone holds.
    deadline = time.monotonic() + STAGING_SESSIONS_GRACE_SECONDS
    while (on_staging := db.sessions(conn, staging)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if on_staging:
        raise StepFailed("SwapBlocked", f"{on_staging} session(s) are connected to the staging "
                         f"database {staging}; the swap cannot rename it while they are. Nothing was "
                         f"renamed and the sessions on {live} were left alone; end those on {staging}, "
                         "then create a new Rollback")


def _sessions_wait(ctx: Context, step: PlanStep, rec: StepRecord, live: str, left: int,
                   terminate: bool) -> Wait:
    """Sessions remain on the live database: look again shortly, until the deadline set at the
    first look (kept in status, so a restarted operator does not wait longer); then SwapBlocked."""
    why = "" if terminate else " (terminateConnections is false)"
    meanwhile = "refuses" if terminate else "accepts"

    def give_up() -> None:
        raise StepFailed("SwapBlocked", f"{left} session(s) on {live} did not end{why}; "
                                        f"nothing was renamed and {live} accepts connections again")

    deadline = rec.deadline or ctx.clock() + SESSIONS_WAIT
    return ctx.waiting(step, rec, f"Waiting for {left} session(s) on {live} to end{why}; {live} "
                       f"{meanwhile} new connections meanwhile.", deadline,
                       look_again=SESSIONS_LOOK_AGAIN_SECONDS, on_deadline=give_up)


def _reopen_after_failed_swap(target: db.Target, live: str, uid: str, staging: str | None = None) -> None:
    """Production must not stay closed because a swap failed: on a fresh connection (the old one
    may be what failed), allow connections to the live database again, and to staging (kept for
    inspection), unless the swap did commit (then `live` is the restored database and the next
    attempt adopts it)."""
    try:
        with db.connect(target, MAINTENANCE_DB) as conn:
            if db.ledger_state(conn, uid, "swap") == "swapped":
                return
            for name in (live, staging):
                if name and db.database_comment(conn, name)[0]:
                    db.set_allow_connections(conn, name, True)
    except db.DatabaseError:
        pass   # unreachable right now: the step's failure says to check the live database


def release_swap(ctx: Context, step: PlanStep, rec: StepRecord) -> None:
    """The engine stops this step mid-way (the Rollback deleted, or given up): production must not
    stay closed to connections by a swap that will not go on."""
    spec = state.spec(ctx)
    _reopen_after_failed_swap(connection.target(ctx.kube, ctx.namespace, spec), step.target.name, ctx.uid,
                              staging_of(spec, step.target.name, ctx.uid))
