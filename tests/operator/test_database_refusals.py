"""The database rollback refuses what is not this database's backup, and never waits blind:
real PostgreSQL, real Jobs (run by the test bed's Job runner, read-only mounts and user
honoured), the operator as a ServiceAccount. Each refusal asserts production is untouched."""

from __future__ import annotations

import subprocess

import pytest

from dbhelpers import (
    CLAIM, add_rows, allows_connections, checksums, database_names, db_rollback, db_secret, make_dump, pg_bin,
    uid8,
)
from helpers import condition, get_rollback, kubectl_apply, wait_for, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]
TERMINAL = {"Succeeded", "Failed", "Interrupted"}


def _step(rb, name):
    return next((s for s in (rb.get("status") or {}).get("steps") or [] if s["name"] == name), {})


def test_a_dump_of_another_database_with_the_same_name_is_refused(
        cluster, api_client, postgres, booking_db, job_runner, restricted, operator):
    ns = restricted
    backup = job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump"
    # Another application's database, under the very same name, dumped; the real one put back.
    with postgres.connect(autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{booking_db}" RENAME TO "{booking_db}_real"')
    try:
        postgres.create_database(booking_db)
        with postgres.connect(booking_db) as conn:
            conn.execute("CREATE TABLE settings (k text PRIMARY KEY, v text)")
            conn.commit()
        make_dump(postgres, booking_db, backup)
        postgres.drop_database(booking_db)
    finally:
        with postgres.connect(autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{booking_db}_real" RENAME TO "{booking_db}"')
    db_secret(api_client, ns, postgres.dsn(booking_db))
    before, names_before = checksums(postgres, booking_db), database_names(postgres)

    kubectl_apply(cluster, ns, db_rollback("foreign"))
    rb = wait_phase(api_client, ns, "foreign", TERMINAL, timeout=180)
    assert rb["status"]["phase"] == "Failed", rb["status"]
    ready = condition(rb, "Ready")
    assert ready["reason"] == "BackupMismatch", (ready, operator.output()[-3000:])
    assert "1 table(s) only in the backup: public.settings" in ready["message"]
    assert "3 table(s) only in the live database: public.appointments" in ready["message"]
    assert "acceptMismatchReason" in ready["message"]
    assert [s["state"] for s in rb["status"]["steps"]][:1] == ["Failed"]
    assert checksums(postgres, booking_db) == before
    assert database_names(postgres) == names_before


def test_a_table_added_since_the_backup_is_accepted_with_a_reason(
        cluster, api_client, postgres, booking_db, job_runner, restricted, operator):
    ns = restricted
    make_dump(postgres, booking_db, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    with postgres.connect(booking_db) as conn:
        conn.execute("CREATE TABLE audit_log (id int)")   # the migration being rolled back
        conn.commit()
    db_secret(api_client, ns, postgres.dsn(booking_db))

    kubectl_apply(cluster, ns, db_rollback("refused"))
    rb = wait_phase(api_client, ns, "refused", TERMINAL, timeout=180)
    assert condition(rb, "Ready")["reason"] == "BackupMismatch"
    assert "1 table(s) only in the live database: public.audit_log" in condition(rb, "Ready")["message"]

    kubectl_apply(cluster, ns, db_rollback("accepted", acceptMismatchReason="rolling back migration 42"))
    rb = wait_phase(api_client, ns, "accepted", TERMINAL, timeout=180)
    assert rb["status"]["phase"] == "Succeeded", rb["status"]
    check = _step(rb, "database/check")
    assert "public.audit_log" in check["message"] and "rolling back migration 42" in check["message"]
    with postgres.connect(booking_db) as conn:
        assert conn.execute("SELECT to_regclass('audit_log') IS NULL").fetchone()[0]


def test_a_plain_sql_backup_of_this_database_passes_the_check(
        cluster, api_client, postgres, booking_db, job_runner, restricted, operator):
    """`pg_dump > file.sql`, as the seed's own procedure makes it."""
    ns = restricted
    backup = job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.sql"
    backup.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([pg_bin("pg_dump"), f"--dbname={postgres.dsn(booking_db)}", "-f", str(backup)],
                   check=True, capture_output=True)
    db_secret(api_client, ns, postgres.dsn(booking_db))

    kubectl_apply(cluster, ns, db_rollback("plain", "nightly/backup.sql"))
    rb = wait_for("the check's outcome", lambda: (lambda r: r if _step(r, "database/check").get("state")
                                                  in ("Succeeded", "Failed") else None)(
        get_rollback(api_client, ns, "plain")), timeout=180)
    check = _step(rb, "database/check")
    assert check["state"] == "Succeeded", (rb["status"], operator.output()[-3000:])
    assert "is a plain-SQL pg_dump of" in check["message"] and "3 tables" in check["message"]


def test_a_lock_held_during_the_backup_fails_the_step_naming_its_holder(
        cluster, api_client, postgres, booking_db, job_runner, restricted, operator):
    ns = restricted
    pvc = job_runner.create_pvc(ns, CLAIM)
    make_dump(postgres, booking_db, pvc / "nightly" / "backup.dump")
    db_secret(api_client, ns, postgres.dsn(booking_db))
    before, names_before = checksums(postgres, booking_db), database_names(postgres)
    holder = postgres.connect(booking_db, application_name="migration-tool")
    try:
        holder.execute("LOCK TABLE appointments IN ACCESS EXCLUSIVE MODE")
        pid = holder.info.backend_pid
        rollback = db_rollback("locked")
        rollback["spec"]["severity"] = "Critical"         # pg_dump waits 15 s for a lock
        kubectl_apply(cluster, ns, rollback)
        rb = wait_phase(api_client, ns, "locked", TERMINAL, timeout=240)
        holder.rollback()
    finally:
        holder.close()
    assert rb["status"]["phase"] == "Failed", rb["status"]
    ready = condition(rb, "Ready")
    assert ready["reason"] == "PreRollbackBackupFailed", (ready, operator.output()[-3000:])
    assert "waited 15s for a lock on table public.appointments" in ready["message"]
    assert f"pid {pid} (user 'postgres', application 'migration-tool') holds AccessExclusiveLock " \
           "on appointments" in ready["message"], ready["message"]
    assert "LOCK TABLE" not in ready["message"]           # never what the holder runs
    assert not list(pvc.rglob("*.partial")) and not list(pvc.rglob("pre-rollback.dump"))
    assert checksums(postgres, booking_db) == before
    # The restore into staging ran alongside the backup (registry.ALONGSIDE) and was followed to its
    # end; it is never swapped in, and status names it, so `kubectl rewind leftovers` lists it.
    staging = f"{booking_db[:40]}_restore_{uid8(rb)}"
    assert _step(rb, "database/swap")["state"] == "Skipped", rb["status"]["steps"]
    assert rb["status"]["database"]["stagingDatabase"] == staging, rb["status"].get("database")
    assert database_names(postgres) == names_before | {staging}


def test_a_session_on_staging_refuses_the_swap_before_production_is_touched(
        cluster, api_client, postgres, booking_db, job_runner, restricted, idle_operator, monkeypatch):
    ns = restricted
    make_dump(postgres, booking_db, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    db_secret(api_client, ns, postgres.dsn(booking_db))
    before = checksums(postgres, booking_db)
    # The operator stops itself once the staging database is verified, before the swap.
    monkeypatch.setenv("REWIND_CRASH_AT", "DatabaseVerify:after-outcome")
    op = idle_operator.start()
    kubectl_apply(cluster, ns, db_rollback("inspected"))
    wait_for("the operator stopped after verify", lambda: op.proc.poll() is not None, timeout=180)
    rb = get_rollback(api_client, ns, "inspected")
    staging = f"{booking_db[:40]}_restore_{uid8(rb)}"
    inspector, user = postgres.connect(staging), postgres.connect(booking_db)
    try:
        monkeypatch.delenv("REWIND_CRASH_AT")
        op.start()
        rb = wait_phase(api_client, ns, "inspected", TERMINAL, timeout=120)
        assert user.execute("SELECT count(*) FROM users").fetchone() == (50,)   # never ended
        assert inspector.execute("SELECT 1").fetchone() == (1,)
    finally:
        inspector.close()
        user.close()
    assert rb["status"]["phase"] == "Failed", rb["status"]
    ready = condition(rb, "Ready")
    assert ready["reason"] == "SwapBlocked", ready
    assert f"1 session(s) are connected to the staging database {staging}" in ready["message"]
    assert checksums(postgres, booking_db) == before
    assert allows_connections(postgres, booking_db) and allows_connections(postgres, staging)
    assert not [n for n in database_names(postgres) if "_pre_" in n and uid8(rb) in n]


def test_the_database_dropping_the_restore_connection_fails_the_step_and_changes_nothing(
        cluster, api_client, postgres, booking_db, job_runner, restricted, operator):
    """A hostile answer from PostgreSQL: the restore's session is ended by the server mid-way (an
    administrator's pg_terminate_backend, a failover, an OOM kill of the backend). The restore's
    one transaction never commits; the rollback fails with a reason, production is untouched."""
    ns, live = restricted, booking_db
    add_rows(postgres, live, 1000, 300_000)             # enough rows that the restore takes a while
    make_dump(postgres, live, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    add_rows(postgres, live, 400_000, 7)
    before = checksums(postgres, live)
    db_secret(api_client, ns, postgres.dsn(live))
    kubectl_apply(cluster, ns, db_rollback("dropped"))

    killed = []

    def end_the_restore_session() -> bool:
        with postgres.connect("postgres") as conn:
            rows = conn.execute("SELECT pid, datname FROM pg_stat_activity WHERE datname LIKE %s "
                                "AND state <> 'idle' AND pid <> pg_backend_pid()",
                                (f"{live[:40]}_restore_%",)).fetchall()
            for pid, _ in rows:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                killed.append(pid)
        return bool(killed)

    wait_for("the restore's session on staging", end_the_restore_session, timeout=120, interval=0.02)
    rb = wait_phase(api_client, ns, "dropped", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    assert rb["status"]["phase"] == "Failed", (condition(rb, "Ready"), rb["status"]["steps"])
    ready = condition(rb, "Ready")
    assert ready["reason"] == "RestoreFailed", ready
    assert "nothing of it was committed" in ready["message"], ready["message"]
    restore = next(s for s in rb["status"]["steps"] if s["name"] == "database/restore")
    assert restore["state"] == "Failed"
    # Production: the same rows, under its name, open; the half-restored staging is kept, named.
    assert checksums(postgres, live) == before
    assert allows_connections(postgres, live)
    staging = rb["status"]["database"]["stagingDatabase"]
    assert staging in database_names(postgres)
    with postgres.connect(staging) as conn:         # the one transaction never committed
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
