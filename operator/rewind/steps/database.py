"""Database rollback, out of place, never losing data:

1. check   (Job, read-only): the backup file exists, is not empty, is a pg_dump archive of the
           live database; its SHA-256 is recorded.
2. backup  (Job): `pg_dump -Fc` of the live database next to the backups, checked and hashed,
           before anything changes. Waived only with a reason in the spec.
3. restore (Job): into a staging database named from the Rollback's UID, created by the operator
           (CREATE DATABASE can succeed only once), with `pg_restore --single-transaction`.
4. verify  (operator): the listed tables exist in staging, with enough rows.
5. swap    (operator): connections to the live database ended per policy, then one transaction
           renames live -> <db>_pre_<uid8> and staging -> live, and marks the ledger. The old
           database is kept. The operator never drops a database.

The restore ledger lives in the server's `postgres` database (schema `rewind`), keyed by the
Rollback UID and step; it fences the restore and the swap, so that a restarted operator knows
exactly what happened, or stops as Interrupted when it cannot know.
"""

from __future__ import annotations

import base64
import datetime
import json
from contextlib import contextmanager
from typing import Callable, Iterator

from rewind.adapters import db
from rewind.adapters.kube import Kube
from rewind.api import conditions as C
from rewind.api.v1alpha1 import (
    DatabaseSpec, DatabaseStatus, PlanStep, StepAction, StepKind, StepRecord, TargetRef,
    VerificationResult,
)
from rewind import crashpoints
from rewind.context import Context, Found, Request, StepFailed, Wait, Watched
from rewind.steps import jobs
from rewind.steps.secrets import read_secret

MAINTENANCE_DB = "postgres"
# A watch on the Job wakes the step when it finishes; a pod that cannot start (a bad image) shows
# only on the pod, so the step also looks every few seconds.
JOB_LOOK_AGAIN_SECONDS = 5.0
JOB_DEADLINE_MARGIN_SECONDS = 60
LOCK_RETRY_SECONDS = 1.0

# pg_dump/pg_restore print DETAIL and CONTEXT lines that can carry row values; only their own
# "pg_restore: error: ..." lines go into the termination message (and from there into status).
ERRORS = r"""errors() { grep -E '^pg_(dump|restore): (error|warning|detail)?' /tmp/err | grep -v -E '^pg_(dump|restore): detail:' | "$@"; }
"""

CHECK_SCRIPT = ERRORS + r"""set -eu
fail() { printf '%s' "$2" > /dev/termination-log; exit "$1"; }
[ -e "$DUMP_PATH" ] || fail 10 "backup file not found: $DUMP_REF"
[ -s "$DUMP_PATH" ] || fail 11 "backup file is empty (0 bytes): $DUMP_REF"
pg_restore --list "$DUMP_PATH" > /tmp/toc 2> /tmp/err || fail 12 "not a readable pg_dump custom-format archive: $DUMP_REF: $(errors head -c 300)"
db=$(sed -n 's/^;[[:space:]]*dbname: //p' /tmp/toc | head -n 1)
sum=$(sha256sum "$DUMP_PATH" | cut -d ' ' -f 1)
size=$(wc -c < "$DUMP_PATH" | tr -d ' ')
manifest=""
if [ -f "$DUMP_PATH.manifest.json" ]; then
  [ "$(wc -c < "$DUMP_PATH.manifest.json")" -le 2048 ] || fail 13 "the backup's manifest is larger than 2 KiB: $DUMP_REF.manifest.json"
  manifest=$(base64 < "$DUMP_PATH.manifest.json" | tr -d '\n')
fi
printf '{"dbname":"%s","sha256":"%s","bytes":%s,"manifest":"%s"}' "$db" "$sum" "$size" "$manifest" > /dev/termination-log
"""

BACKUP_SCRIPT = ERRORS + r"""set -eu
fail() { printf '%s' "$2" > /dev/termination-log; exit "$1"; }
[ ! -e "$DUMP_PATH" ] || fail 20 "refusing to overwrite an existing file: $DUMP_REF"
mkdir -p "$(dirname "$DUMP_PATH")"
pg_dump --format=custom --no-password --dbname="$DATABASE_URL" --file="$DUMP_PATH.partial" 2> /tmp/err \
  || fail 21 "pg_dump failed: $(errors head -c 500)"
pg_restore --list "$DUMP_PATH.partial" > /dev/null 2> /tmp/err || fail 22 "the new dump does not read back: $(errors head -c 300)"
mv "$DUMP_PATH.partial" "$DUMP_PATH"
sum=$(sha256sum "$DUMP_PATH" | cut -d ' ' -f 1)
size=$(wc -c < "$DUMP_PATH" | tr -d ' ')
printf '{"sha256":"%s","bytes":%s}' "$sum" "$size" > /dev/termination-log
"""

# The Secret's URL names the live database; the restore goes to the staging database on the
# same server, so the script swaps the URL's path (keeping any ?query) without ever printing it.
RESTORE_SCRIPT = ERRORS + r"""set -eu
fail() { printf '%s' "$2" > /dev/termination-log; exit "$1"; }
base="${DATABASE_URL%%\?*}"; query=""
case "$DATABASE_URL" in *\?*) query="?${DATABASE_URL#*\?}";; esac
target="${base%/*}/${TARGET_DB}${query}"
pg_restore --single-transaction --exit-on-error --no-owner --no-password --dbname="$target" "$DUMP_PATH" 2> /tmp/err \
  || fail 30 "pg_restore into $TARGET_DB failed: $(errors tail -c 600)"
printf '{"restored":"%s"}' "$TARGET_DB" > /dev/termination-log
"""


# --- names (all derived from the Rollback's UID) ---------------------------------------------


def uid8(uid: str) -> str:
    return uid.replace("-", "")[:8]


def staging_name(live: str, uid: str) -> str:
    return f"{live[:40]}_restore_{uid8(uid)}"


def pre_name(live: str, uid: str) -> str:
    return f"{live[:44]}_pre_{uid8(uid)}"


def job_name(uid: str, what: str) -> str:
    return f"rewind-{uid8(uid)}-{what}"


def staging_comment(uid: str) -> str:
    return f"rewind:{uid}:staging"


def backup_to(spec: DatabaseSpec, namespace: str, name: str, uid: str) -> tuple[str, str]:
    if spec.backup_to:
        return spec.backup_to.claim_name, spec.backup_to.path
    return (spec.restore_from.persistent_volume_claim.claim_name,
            f"rewind/{namespace}/{name}-{uid8(uid)}/pre-rollback.dump")


# --- the connection --------------------------------------------------------------------------


def connection(kube: Kube, namespace: str, spec: DatabaseSpec) -> db.Target:
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


def _db_call(fn: Callable, *args, **kw):
    try:
        return fn(*args, **kw)
    except db.DatabaseError as e:
        raise StepFailed(e.reason, e.message) from None


@contextmanager
def _connect(target: db.Target, dbname: str | None = None) -> Iterator:
    """db.connect, with its errors as step failures (reason and message kept)."""
    try:
        with db.connect(target, dbname) as conn:
            yield conn
    except db.DatabaseError as e:
        raise StepFailed(e.reason, e.message) from None


# --- planning --------------------------------------------------------------------------------


def preflight(kube: Kube, req: Request) -> Found:
    """The database's steps, when the spec has a database."""
    if not req.spec.database:
        return Found()
    return Found(steps=resolve(kube, req.namespace, req.uid, req.spec.database))


def resolve(kube: Kube, ns: str, uid: str, spec: DatabaseSpec) -> list[PlanStep]:
    """Preflight: the Secret, the URL, the server, the names. Reads only; raises StepFailed."""
    target = connection(kube, ns, spec)
    live = target.dbname
    with _connect(target) as conn:
        conn.execute("SELECT 1")
    with _connect(target, MAINTENANCE_DB) as conn:
        _db_call(db.ensure_ledger, conn)
        if not db.can_swap(conn, live):
            raise StepFailed(C.FORBIDDEN, f"role {target.user!r} may not rename database {live!r}: "
                                          "it needs CREATEDB and to own the database (or be superuser)")
        for name, what in ((staging_name(live, uid), "staging"), (pre_name(live, uid), "pre-rollback")):
            exists, comment = db.database_comment(conn, name)
            if exists and comment != staging_comment(uid):
                raise StepFailed("StagingNameTaken", f"the {what} database name {name!r} is already "
                                                     "taken by a database Rewind did not create")
    target_ref = TargetRef(kind="Database", name=live)
    steps = [PlanStep(name="database/check", kind=StepKind.DATABASE_CHECK, target=target_ref,
                      action=StepAction.RESTORE, job_name=job_name(uid, "check"))]
    if spec.pre_rollback_backup:
        steps.append(PlanStep(name="database/backup", kind=StepKind.DATABASE_BACKUP, target=target_ref,
                              action=StepAction.RESTORE, job_name=job_name(uid, "backup")))
    steps.append(PlanStep(name="database/restore", kind=StepKind.DATABASE_RESTORE, target=target_ref,
                          action=StepAction.RESTORE, job_name=job_name(uid, "restore")))
    if spec.verify:
        steps.append(PlanStep(name="database/verify", kind=StepKind.DATABASE_VERIFY,
                              target=target_ref, action=StepAction.RESTORE))
    for action in spec.after_restore or []:
        steps.append(PlanStep(name=f"database/action/{action.name}", kind=StepKind.DATABASE_ACTION,
                              target=target_ref, action=StepAction.RESTORE, spec_key=action.name))
    steps.append(PlanStep(name="database/swap", kind=StepKind.DATABASE_SWAP, target=target_ref,
                          action=StepAction.RESTORE))
    return steps


# --- execution -------------------------------------------------------------------------------


def _job_wait(ctx: Context, step: PlanStep, rec: StepRecord, message: str,
              outcome: jobs.JobOutcome | None = None) -> Wait:
    """The step waits for its Job: woken by a watch on the Job, bounded by the Job's own deadline."""
    deadline = rec.started_at + datetime.timedelta(
        seconds=_spec(ctx).job_deadline_seconds + JOB_DEADLINE_MARGIN_SECONDS)
    rv = outcome.resource_version if outcome else None
    return ctx.waiting(step, rec, message, deadline, look_again=JOB_LOOK_AGAIN_SECONDS,
                       watch=Watched(jobs.JOBS, step.job_name, rv))


def _locked(ctx: Context, step: PlanStep) -> Wait:
    """Another operator instance holds this step's lock right now: look again shortly."""
    return Wait(at=ctx.clock() + datetime.timedelta(seconds=LOCK_RETRY_SECONDS),
                reason=f"{step.name}: another operator instance is on this step")


def _done(ctx: Context, step: PlanStep, rec: StepRecord, message: str, reason: str) -> None:
    ctx.succeed(step, rec, message, reason)


def _dbstatus(ctx: Context) -> DatabaseStatus:
    if ctx.status.database is None:
        ctx.status.database = DatabaseStatus()
    return ctx.status.database


def _spec(ctx: Context) -> DatabaseSpec:
    return ctx.rollback.spec.database


def _job_env(spec: DatabaseSpec, dump_path: str, dump_ref: str, **extra: str) -> list[dict]:
    ref = spec.connection.secret_ref
    env = [jobs.secret_env("DATABASE_URL", ref.name, ref.key),
           {"name": "DUMP_PATH", "value": f"{jobs.MOUNT}/{dump_path}"},
           {"name": "DUMP_REF", "value": dump_ref}]
    env += [{"name": k, "value": v} for k, v in extra.items()]
    return env


def _run_job(ctx: Context, step: PlanStep, rec: StepRecord, manifest: Callable[[], dict],
             what: str) -> jobs.JobOutcome | Wait:
    """Get-or-create the step's Job; a Wait while it runs, else its outcome."""
    outcome = jobs.job_outcome(ctx.kube, ctx.namespace, step.job_name)
    if outcome.state == "missing":
        how = jobs.ensure_job(ctx.kube, manifest())
        crashpoints.reach(f"{step.kind}:after-job-created")
        return _job_wait(ctx, step, rec, f"Job {step.job_name} {how}: {what}.")
    if outcome.state == "running":
        return _job_wait(ctx, step, rec, rec.message or f"Job {step.job_name}: {what}.", outcome)
    return outcome


def advance_check(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = _spec(ctx)
    src = spec.restore_from.persistent_volume_claim
    ref = f"{src.claim_name}:{src.path}"
    ctx.begin(step, rec, f"Checking the backup {ref}.", C.DATABASE_RESTORED)
    outcome = _run_job(ctx, step, rec, lambda: jobs.build_job(
        name=step.job_name, rollback=ctx.obj, step="check", image=spec.image, script=CHECK_SCRIPT,
        env=_job_env(spec, src.path, ref), claim_name=src.claim_name,
        deadline_seconds=spec.job_deadline_seconds, read_only_backups=True), f"checking {ref}")
    if isinstance(outcome, Wait):
        return outcome
    if outcome.state == "failed":
        reason = {10: "BackupNotFound", 11: "BackupEmpty", 12: "BackupCorrupt"}.get(outcome.exit_code, "BackupCheckFailed")
        raise StepFailed(reason, f"{outcome.message or 'the backup check Job failed'}; nothing was changed")
    result = outcome.result()
    if "sha256" not in result:
        raise StepFailed("BackupCheckFailed", "the backup check Job reported no result; nothing was changed")
    live = step.target.name
    if result.get("dbname") and result["dbname"] != live:
        raise StepFailed("BackupMismatch", f"the backup {ref} is a dump of database "
                                           f"{result['dbname']!r}, not of {live!r}; nothing was changed")
    st = _dbstatus(ctx)
    st.live_database, st.backup_source, st.backup_source_sha256 = live, ref, result.get("sha256")
    st.backup_row_counts = _manifest_counts(result.get("manifest") or "", ref)
    _done(ctx, step, rec, f"The backup {ref} is a pg_dump archive of {live} "
                    f"({result.get('bytes')} bytes, sha256 {str(result.get('sha256'))[:12]}...).", "BackupChecked")
    jobs.delete_job(ctx.kube, ctx.namespace, step.job_name)   # after the outcome is recorded
    return None


def _manifest_counts(encoded: str, ref: str) -> dict[str, int] | None:
    """Row counts from the backup's optional manifest (`<dump>.manifest.json`:
    {"tables": {"appointments": 400, ...}}), which verification compares against."""
    if not encoded:
        return None
    try:
        manifest = json.loads(base64.b64decode(encoded))
        tables = manifest["tables"]
        if not isinstance(tables, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for k, v in tables.items()):
            raise ValueError
        return dict(tables)
    except (ValueError, KeyError, TypeError):
        raise StepFailed("BackupManifestInvalid", f"{ref}.manifest.json is not a manifest of the form "
                         '{"tables": {"<table>": <rows>, ...}}; nothing was changed') from None


def advance_backup(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = _spec(ctx)
    claim, path = backup_to(spec, ctx.namespace, ctx.name, ctx.uid)
    ref = f"{claim}:{path}"
    ctx.begin(step, rec, f"Dumping the live database {step.target.name} to {ref} before anything changes.", C.DATABASE_RESTORED)
    outcome = _run_job(ctx, step, rec, lambda: jobs.build_job(
        name=step.job_name, rollback=ctx.obj, step="backup", image=spec.image, script=BACKUP_SCRIPT,
        env=_job_env(spec, path, ref), claim_name=claim,
        deadline_seconds=spec.job_deadline_seconds, read_only_backups=False), f"pg_dump to {ref}")
    if isinstance(outcome, Wait):
        return outcome
    if outcome.state == "failed":
        raise StepFailed("PreRollbackBackupFailed",
                         f"{outcome.message or 'the pre-rollback backup Job failed'}; nothing was changed")
    result = outcome.result()
    st = _dbstatus(ctx)
    st.pre_rollback_backup, st.pre_rollback_backup_sha256 = ref, result.get("sha256")
    st.pre_rollback_backup_bytes = result.get("bytes")
    _done(ctx, step, rec, f"The live database {step.target.name} is saved to {ref} "
                    f"({result.get('bytes')} bytes).", "PreRollbackBackupTaken")
    jobs.delete_job(ctx.kube, ctx.namespace, step.job_name)   # after the outcome is recorded
    return None


def advance_restore(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = _spec(ctx)
    live = step.target.name
    staging = staging_name(live, ctx.uid)
    src = spec.restore_from.persistent_volume_claim
    ref = f"{src.claim_name}:{src.path}"
    ctx.begin(step, rec, f"Restoring {ref} into the staging database {staging}.", C.DATABASE_RESTORED)
    target = connection(ctx.kube, ctx.namespace, spec)
    with _connect(target, MAINTENANCE_DB) as conn:
        _db_call(db.ensure_ledger, conn)
        if not db.try_lock(conn, f"rewind:{ctx.uid}:restore"):
            return _locked(ctx, step)
        state = db.ledger_state(conn, ctx.uid, "restore")
        if state is None:
            db.ledger_advance(conn, ctx.uid, "restore", None, "claimed", staging)
            state = db.ledger_state(conn, ctx.uid, "restore")
        if state == "claimed":
            exists, comment = db.database_comment(conn, staging)
            if exists and comment is None and _db_call(db.is_empty, target, staging):
                # Our CREATE DATABASE went through and the crash came before its COMMENT.
                db.set_comment(conn, staging, staging_comment(ctx.uid))
                comment = staging_comment(ctx.uid)
            if exists and comment != staging_comment(ctx.uid):
                raise StepFailed("StagingNameTaken", f"the staging database name {staging!r} is "
                                                     "taken by a database Rewind did not create")
            if not exists:
                db.create_database(conn, staging, staging_comment(ctx.uid))
            _dbstatus(ctx).staging_database = staging
            jobs.ensure_job(ctx.kube, jobs.build_job(
                name=step.job_name, rollback=ctx.obj, step="restore", image=spec.image,
                script=RESTORE_SCRIPT, env=_job_env(spec, src.path, ref, TARGET_DB=staging),
                claim_name=src.claim_name, deadline_seconds=spec.job_deadline_seconds,
                read_only_backups=True))
            crashpoints.reach(f"{step.kind}:after-job-created")
            db.ledger_advance(conn, ctx.uid, "restore", "claimed", "job-created", staging)
            return _job_wait(ctx, step, rec, f"Job {step.job_name} restores {ref} into {staging}.")
        if state == "restored":
            return _restored(ctx, step, rec, staging, ref)
        if state == "failed":
            raise StepFailed("RestoreFailed", f"the restore into {staging} failed earlier; "
                                              f"the live database {live} is unchanged")
        outcome = jobs.job_outcome(ctx.kube, ctx.namespace, step.job_name)
        if outcome.state == "running":
            return _job_wait(ctx, step, rec, rec.message, outcome)
        if outcome.state == "missing":
            raise StepFailed(C.INTERRUPTED, f"the restore Job {step.job_name} disappeared before its "
                                            f"outcome was recorded; the staging database {staging} "
                                            f"may be partly restored. The live database {live} is "
                                            "unchanged; inspect staging, then create a new Rollback")
        if outcome.state == "failed":
            db.ledger_advance(conn, ctx.uid, "restore", "job-created", "failed")
            raise StepFailed("BackupCorrupt" if outcome.exit_code == 30 else "RestoreFailed",
                             f"{outcome.message or 'the restore Job failed'}; "
                                              f"the live database {live} is unchanged and the "
                                              f"staging database {staging} is kept for inspection")
        db.ledger_advance(conn, ctx.uid, "restore", "job-created", "restored", staging)
    return _restored(ctx, step, rec, staging, ref)


def _restored(ctx: Context, step: PlanStep, rec: StepRecord, staging: str, ref: str) -> None:
    _dbstatus(ctx).staging_database = staging
    _done(ctx, step, rec, f"{ref} is restored into the staging database {staging}.", "StagingRestored")
    jobs.delete_job(ctx.kube, ctx.namespace, step.job_name)   # after the outcome is recorded
    return None


def advance_verify(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = _spec(ctx)
    staging = staging_name(step.target.name, ctx.uid)
    ctx.begin(step, rec, f"Verifying the staging database {staging}.", C.DATABASE_RESTORED)
    target = connection(ctx.kube, ctx.namespace, spec)
    expected = (ctx.status.database.backup_row_counts if ctx.status.database else None) or {}
    tables = list(dict.fromkeys([*spec.verify.tables, *sorted(expected)]))
    with _connect(target, staging) as conn:
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
    _done(ctx, step, rec, f"The staging database {staging} holds every listed table "
                    f"({', '.join(f'{t}: {c}' for t, c in counts.items())}).", "StagingVerified")
    return None


def advance_action(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    """A named SQL action on the staging database (idempotent: running it twice changes nothing
    more), before the swap, so production never serves what it removes."""
    spec = _spec(ctx)
    action = next(a for a in spec.after_restore if a.name == step.spec_key)
    staging = staging_name(step.target.name, ctx.uid)
    ctx.begin(step, rec, f"Running {action.action} ({action.name}) on {action.table} in {staging}.", C.DATABASE_RESTORED)
    target = connection(ctx.kube, ctx.namespace, spec)
    filters = [(f.column, f.equals) for f in action.where or []]
    with _connect(target, staging) as conn:
        rows = _db_call(db.clear_columns, conn, action.table, action.columns, filters,
                        action.statement_timeout_seconds)
    where = " and ".join(f"{c} matches" for c, _ in filters) or "all rows"
    _done(ctx, step, rec, f"{action.action} ({action.name}): {', '.join(action.columns)} cleared in "
                    f"{rows} row(s) of {action.table} ({where}).", "ActionApplied")
    return None


def advance_swap(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = _spec(ctx)
    live = step.target.name
    staging, pre = staging_name(live, ctx.uid), pre_name(live, ctx.uid)
    ctx.begin(step, rec, f"Swapping {staging} in as {live}; the current {live} becomes {pre}.", C.DATABASE_RESTORED)
    target = connection(ctx.kube, ctx.namespace, spec)
    with _connect(target, MAINTENANCE_DB) as conn:
        _db_call(db.ensure_ledger, conn)
        if not db.try_lock(conn, f"rewind:{ctx.uid}:swap"):
            return _locked(ctx, step)
        state = db.ledger_state(conn, ctx.uid, "swap")
        if state != "swapped":
            if state is None:
                db.ledger_advance(conn, ctx.uid, "swap", None, "swapping")
            exists, comment = db.database_comment(conn, staging)
            if not exists or comment != staging_comment(ctx.uid):
                raise StepFailed(C.INTERRUPTED, f"the staging database {staging} is not there as "
                                                "Rewind left it; nothing was renamed")
            db.set_allow_connections(conn, live, False)
            try:
                left = db.end_sessions(conn, live, spec.terminate_connections)
                if left:
                    raise StepFailed("SwapBlocked", f"{left} session(s) on {live} did not end"
                                     f"{'' if spec.terminate_connections else ' (terminateConnections is false)'}; "
                                     f"nothing was renamed and {live} accepts connections again")
                crashpoints.reach("DatabaseSwap:before-rename")
                _db_call(db.swap, conn, live=live, staging=staging, pre=pre, uid=ctx.uid,
                         ledger_step="swap")
                crashpoints.reach("DatabaseSwap:after-rename")
            except BaseException:
                _reopen_after_failed_swap(target, live, ctx.uid)
                raise
        db.set_allow_connections(conn, live, True)
        db.set_allow_connections(conn, pre, True)
    st = _dbstatus(ctx)
    st.live_database, st.staging_database, st.pre_rollback_database = live, None, pre
    st.swapped_at = ctx.clock()
    message = f"{live} now holds the restored data; the previous {live} is kept as {pre}."
    ctx.condition(C.DATABASE_RESTORED, "True", "Swapped", message)
    _done(ctx, step, rec, message, "DatabaseSwapped")
    return None


def _reopen_after_failed_swap(target: db.Target, live: str, uid: str) -> None:
    """Production must not stay closed because a swap failed: on a fresh connection (the old one
    may be what failed), allow connections to the live database again, unless the swap did commit
    (then `live` is the restored database and the next attempt adopts it)."""
    try:
        with db.connect(target, MAINTENANCE_DB) as conn:
            if db.ledger_state(conn, uid, "swap") != "swapped" and db.database_comment(conn, live)[0]:
                db.set_allow_connections(conn, live, True)
    except db.DatabaseError:
        pass   # unreachable right now; the retry of this step allows connections again either way
