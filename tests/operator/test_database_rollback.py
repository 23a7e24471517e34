"""Database rollback end to end: real PostgreSQL, real Jobs (their pods run locally by the test
bed's Job runner, standing in for the kubelet), the operator as a ServiceAccount.

Each refusal asserts the production database is unchanged, by per-table checksums before and
after, and that the Rollback ends with a reason a person can act on."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from kubernetes import client

from dbhelpers import (
    CLAIM, TABLES, add_rows, checksums, database_names, db_rollback, db_secret, make_dump, pg_bin,
)
from helpers import condition, get_rollback, kubectl_apply, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]

def test_database_rollback_restores_the_backup_and_keeps_the_old_database(
        cluster, api_client, postgres, booking_db, job_runner, restricted, operator):
    ns = restricted
    backup = job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump"
    make_dump(postgres, booking_db, backup)
    at_backup = checksums(postgres, booking_db)
    # The backup's manifest (as a nightly backup job would write it): verification compares.
    backup.with_name(backup.name + ".manifest.json").write_text(json.dumps(
        {"tables": {t: count for t, (count, _) in at_backup.items()}}))
    add_rows(postgres, booking_db, 1000, 7)      # written after the backup point
    before = checksums(postgres, booking_db)
    assert before != at_backup
    db_secret(api_client, ns, postgres.dsn(booking_db))

    kubectl_apply(cluster, ns, db_rollback("restore-db"))
    rb = wait_phase(api_client, ns, "restore-db", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    assert rb["status"]["phase"] == "Succeeded", (rb["status"], operator.output()[-4000:])
    uid8 = rb["metadata"]["uid"].replace("-", "")[:8]
    pre = rb["status"]["database"]["preRollbackDatabase"]
    assert pre == f"{booking_db[:44]}_pre_{uid8}"

    # The live name holds exactly the backup's rows; the old database is kept with the rest.
    assert checksums(postgres, booking_db) == at_backup
    assert checksums(postgres, pre) == before
    assert f"{booking_db[:40]}_restore_{uid8}" not in database_names(postgres)

    st = rb["status"]
    assert [s["name"] for s in st["steps"]] == ["database/check", "database/backup", "database/restore",
                                                "database/verify", "database/swap"]
    assert all(s["state"] == "Succeeded" for s in st["steps"])
    assert condition(rb, "DatabaseRestored")["status"] == "True"
    assert condition(rb, "Ready")["status"] == "True"
    assert condition(rb, "Verified")["status"] == "True"
    assert {v["name"]: v["outcome"] for v in st["verification"]} == {
        f"database/table/{t}": "Passed" for t in TABLES}
    # Verification counted the staging database, i.e. the backup's rows, against the manifest.
    assert next(v["detail"] for v in st["verification"] if v["name"].endswith("/users")) == \
        "table users has 50 rows, as the backup's manifest says"
    d = st["database"]
    assert d["preRollbackDatabase"] == pre and d["liveDatabase"] == booking_db
    assert d["backupSourceSha256"] == hashlib.sha256(backup.read_bytes()).hexdigest()
    # The pre-rollback dump is real: it holds the rows from before, written after the backup.
    dump = job_runner.pvc_dir(ns, CLAIM) / d["preRollbackBackup"].split(":", 1)[1]
    assert d["preRollbackBackupSha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    toc = subprocess.run([pg_bin("pg_restore"), "--list", str(dump)], check=True,
                         capture_output=True, text=True).stdout
    assert all(f"TABLE DATA public {t}" in toc for t in TABLES)
    # Jobs are cleaned up after success.
    jobs = client.BatchV1Api(api_client).list_namespaced_job(ns).items
    assert [j.metadata.name for j in jobs if j.metadata.deletion_timestamp is None] == []
    # No credential in the Rollback (status, annotations) or in any Job spec the operator wrote.
    assert postgres.password not in str(get_rollback(api_client, ns, "restore-db"))


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "truncated", "bitflip", "other-database",
                                  "manifest-mismatch", "manifest-invalid",
                                  "wrong-credentials", "unreachable", "verification"])
def test_bad_backups_and_connections_leave_production_unchanged(
        cluster, api_client, postgres, booking_db, job_runner, restricted, operator, case):
    ns = restricted
    pvc = job_runner.create_pvc(ns, CLAIM)
    backup = pvc / "nightly" / "backup.dump"
    make_dump(postgres, booking_db, backup)
    url = postgres.dsn(booking_db)
    spec = {}
    expected_reason, fragment = {
        "missing": ("BackupNotFound", "backup file not found: db-backups:nightly/nope.dump"),
        "empty": ("BackupEmpty", "backup file is empty (0 bytes)"),
        "garbage": ("BackupCorrupt", "not a readable pg_dump custom-format archive"),
        "truncated": ("BackupCorrupt", "could not read from input file: end of file"),
        # Flipped bits pass `pg_restore --list`; the trial restore into staging catches them.
        "bitflip": ("BackupCorrupt", "pg_restore into"),
        "other-database": ("BackupMismatch", "is a dump of database"),
        "wrong-credentials": ("AuthenticationFailed", "refused the credentials"),
        "unreachable": ("DatabaseUnreachable", "cannot connect to PostgreSQL"),
        "verification": ("VerificationFailed", "table audit_log does not exist in the restored database"),
        "manifest-mismatch": ("VerificationFailed", "table appointments has 50 rows; the backup's manifest says 51"),
        "manifest-invalid": ("BackupManifestInvalid", "is not a manifest of the form"),
    }[case]
    path = "nightly/backup.dump"
    if case == "missing":
        path = "nightly/nope.dump"
    elif case == "empty":
        backup.write_bytes(b"")
    elif case == "garbage":
        backup.write_bytes(b"this is not a dump\n" * 100)
    elif case == "truncated":
        data = backup.read_bytes()
        backup.write_bytes(data[: len(data) * 2 // 3])
    elif case == "bitflip":
        # In the compressed table data near the end (the table of contents stays readable).
        data = bytearray(backup.read_bytes())
        start = len(data) * 9 // 10
        for i in range(start, min(start + 64, len(data))):
            data[i] ^= 0xFF
        backup.write_bytes(bytes(data))
    elif case == "other-database":
        other = f"{booking_db}_other"
        postgres.create_database(other)
        make_dump(postgres, other, backup)
        postgres.drop_database(other)
    elif case == "wrong-credentials":
        url = postgres.dsn(booking_db, password="wrong-canary-password")
    elif case == "unreachable":
        url = f"postgresql://postgres:x@127.0.0.1:1/{booking_db}"
    elif case == "verification":
        spec = {"verify": {"tables": TABLES + ["audit_log"]}}
    elif case == "manifest-mismatch":
        backup.with_name(backup.name + ".manifest.json").write_text('{"tables": {"appointments": 51}}')
    elif case == "manifest-invalid":
        backup.with_name(backup.name + ".manifest.json").write_text('{"tables": {"appointments": "lots"}}')
    db_secret(api_client, ns, url)
    before = checksums(postgres, booking_db)
    names_before = database_names(postgres)

    kubectl_apply(cluster, ns, db_rollback("bad-db", path, **spec))
    rb = wait_phase(api_client, ns, "bad-db", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    assert rb["status"]["phase"] == "Failed", str(rb["status"])
    ready = condition(rb, "Ready")
    assert ready["reason"] == expected_reason, (ready, operator.output()[-3000:])
    assert fragment in ready["message"], ready["message"]
    assert condition(rb, "Stalled")["status"] == "True"
    # Production is exactly as it was, and still under its name.
    assert checksums(postgres, booking_db) == before
    uid8 = rb["metadata"]["uid"].replace("-", "")[:8]
    assert f"{booking_db[:44]}_pre_{uid8}" not in database_names(postgres)
    if case in ("bitflip", "verification", "manifest-mismatch"):
        # The failed restore is kept for inspection, never dropped, never swapped in.
        assert database_names(postgres) - names_before == {f"{booking_db[:40]}_restore_{uid8}"}
    else:
        assert database_names(postgres) == names_before
    assert "wrong-canary-password" not in str(rb)


def test_sql_injection_in_table_names_is_refused_at_apply_time(cluster, namespace, rollback_crd):
    obj = db_rollback("inject", verify={"tables": ["users; DROP TABLE users; --"]})
    out = kubectl_apply(cluster, namespace, obj, check=False)
    assert out.returncode != 0
    assert "spec.database.verify.tables[0]" in out.stderr


def test_waiving_the_backup_needs_a_reason(cluster, namespace, rollback_crd):
    out = kubectl_apply(cluster, namespace, db_rollback("nowaiver", preRollbackBackup=False), check=False)
    assert out.returncode != 0
    assert "preRollbackBackup may only be false with a waiveBackupReason" in out.stderr


def test_oauth_token_cleanup_runs_on_the_restored_data_before_it_goes_live(
        cluster, api_client, postgres, booking_db, job_runner, restricted, operator):
    ns = restricted
    with postgres.connect(booking_db) as conn:
        conn.execute("UPDATE calendar_connections SET provider = 'microsoft' WHERE id <= 10")
        conn.commit()
    make_dump(postgres, booking_db, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    db_secret(api_client, ns, postgres.dsn(booking_db))
    kubectl_apply(cluster, ns, db_rollback("revoke", afterRestore=[{
        "name": "revoke-google", "action": "ClearOAuthTokens", "columns": ["access_token"],
        "where": [{"column": "provider", "equals": "google"}]}]))
    rb = wait_phase(api_client, ns, "revoke", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    assert rb["status"]["phase"] == "Succeeded", str(rb["status"])
    step = next(s for s in rb["status"]["steps"] if s["name"] == "database/action/revoke-google")
    assert "cleared in 40 row(s) of calendar_connections" in step["message"]
    names = [s["name"] for s in rb["status"]["steps"]]
    assert names.index("database/action/revoke-google") < names.index("database/swap")

    def tokens(dbname):
        with postgres.connect(dbname) as conn:
            return dict(conn.execute("SELECT provider, count(access_token) FROM calendar_connections "
                                     "GROUP BY provider").fetchall())

    assert tokens(booking_db) == {"google": 0, "microsoft": 10}
    assert tokens(rb["status"]["database"]["preRollbackDatabase"]) == {"google": 40, "microsoft": 10}


@pytest.mark.parametrize("action,fragment", [
    ({"name": "x", "action": "ClearOAuthTokens", "columns": ["access_token = 'pwned' --"]},
     "spec.database.afterRestore[0].columns[0]"),
    ({"name": "x", "action": "ClearOAuthTokens", "table": "users; DROP TABLE users"},
     "spec.database.afterRestore[0].table"),
    ({"name": "x", "action": "RunSQL"}, 'spec.database.afterRestore[0].action: Unsupported value: "RunSQL"'),
    ({"name": "x", "action": "ClearOAuthTokens", "where": [{"column": "1=1 OR provider", "equals": "x"}]},
     "spec.database.afterRestore[0].where[0].column"),
])
def test_sql_actions_refuse_anything_but_identifiers_at_apply_time(cluster, namespace, rollback_crd,
                                                                   action, fragment):
    out = kubectl_apply(cluster, namespace, db_rollback("inject", afterRestore=[action]), check=False)
    assert out.returncode != 0
    assert fragment in out.stderr, out.stderr
