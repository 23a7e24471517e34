"""The operator killed (SIGKILL) at each point around the restore and the swap, then started
again: the restore runs once and the end state is right, or the rollback stops as Interrupted
when the outcome cannot be known. SIGSTOP freezes the operator at the observed point first, so
the kill lands exactly there."""

from __future__ import annotations

import pytest
from kubernetes import client

from dbhelpers import (
    CLAIM, add_rows, allows_connections, checksums, database_names, db_rollback, db_secret, ledger,
    make_dump, uid8,
)
from helpers import condition, get_rollback, kubectl_apply, wait_for, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]


@pytest.fixture
def scene(api_client, postgres, booking_db, job_runner, restricted):
    """A backup at 50 rows, then writes after it; the Secret pointing at the live database."""
    ns = restricted
    make_dump(postgres, booking_db, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    at_backup = checksums(postgres, booking_db)
    add_rows(postgres, booking_db, 1000, 7)
    db_secret(api_client, ns, postgres.dsn(booking_db))
    return {"ns": ns, "db": booking_db, "at_backup": at_backup, "before": checksums(postgres, booking_db)}


def _job_exists(api_client, ns, name):
    try:
        client.BatchV1Api(api_client).read_namespaced_job(name, ns)
        return True
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise


def _rollback_uid(api_client, ns, name):
    return wait_for("Rollback exists", lambda: get_rollback(api_client, ns, name)["metadata"]["uid"])


def _restore_runs(job_runner, ns, uid):
    logs = job_runner.root_dir / "logs"
    return sorted(p.name for p in logs.glob(f"{ns}_rewind-{uid.replace('-', '')[:8]}-restore-*"))


def _assert_rolled_back(postgres, rb, scene):
    assert rb["status"]["phase"] == "Succeeded", rb["status"]
    pre = rb["status"]["database"]["preRollbackDatabase"]
    assert checksums(postgres, scene["db"]) == scene["at_backup"]
    assert checksums(postgres, pre) == scene["before"]
    assert [n for n in database_names(postgres) if "_pre_" in n and uid8(rb) in n] == [pre]
    assert allows_connections(postgres, scene["db"]) and allows_connections(postgres, pre)
    assert ledger(postgres, rb["metadata"]["uid"], "restore") == "restored"
    assert ledger(postgres, rb["metadata"]["uid"], "swap") == "swapped"


@pytest.mark.parametrize("when", ["job-created", "job-completed"])
def test_killed_around_the_restore_job(cluster, api_client, postgres, job_runner, scene, idle_operator,
                                       when):
    ns = scene["ns"]
    op = idle_operator.start()
    kubectl_apply(cluster, ns, db_rollback("crash-restore"))
    uid = _rollback_uid(api_client, ns, "crash-restore")
    job = f"rewind-{uid.replace('-', '')[:8]}-restore"
    wait_for("restore Job created", lambda: _job_exists(api_client, ns, job), timeout=120, interval=0.05)
    op.freeze()
    if when == "job-completed":
        # The Job finishes while the operator cannot record it.
        wait_for("restore Job complete", lambda: any(
            c.type == "Complete" and c.status == "True"
            for c in client.BatchV1Api(api_client).read_namespaced_job(job, ns).status.conditions or []),
            timeout=120)
    op.kill()
    assert get_rollback(api_client, ns, "crash-restore")["status"]["phase"] == "Running"
    op.start()
    rb = wait_phase(api_client, ns, "crash-restore", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    _assert_rolled_back(postgres, rb, scene)
    assert len(_restore_runs(job_runner, ns, uid)) == 1


def test_killed_inside_the_swap(cluster, api_client, postgres, job_runner, scene, idle_operator,
                                monkeypatch):
    """Killed after connections to the live database were blocked and its sessions ended, just
    before the renames."""
    ns, live = scene["ns"], scene["db"]
    monkeypatch.setenv("REWIND_CRASH_AT", "DatabaseSwap:before-rename")
    op = idle_operator.start()
    kubectl_apply(cluster, ns, db_rollback("crash-swap"))
    wait_for("the operator killed at the swap", lambda: op.proc.poll() is not None, timeout=180)
    monkeypatch.delenv("REWIND_CRASH_AT")
    rb = get_rollback(api_client, ns, "crash-swap")
    assert rb["status"]["phase"] == "Running"
    # Nothing was renamed: the old database is still the live one (closed to new sessions
    # until the operator is back: the price of a crash at this point).
    names = database_names(postgres)
    assert live in names and not [n for n in names if "_pre_" in n and uid8(rb) in n]
    assert not allows_connections(postgres, live)
    op.start()
    rb = wait_phase(api_client, ns, "crash-swap", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    _assert_rolled_back(postgres, rb, scene)
    assert len(_restore_runs(job_runner, ns, rb["metadata"]["uid"])) == 1


def test_killed_right_after_the_swap(cluster, api_client, postgres, job_runner, scene, idle_operator):
    ns = scene["ns"]
    op = idle_operator.start()
    kubectl_apply(cluster, ns, db_rollback("crash-after-swap"))
    uid = _rollback_uid(api_client, ns, "crash-after-swap")
    wait_for("swap committed", lambda: ledger(postgres, uid, "swap") == "swapped", timeout=180, interval=0.02)
    op.kill()
    op.start()
    rb = wait_phase(api_client, ns, "crash-after-swap", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    _assert_rolled_back(postgres, rb, scene)
    assert len(_restore_runs(job_runner, ns, uid)) == 1


def test_restore_job_vanishing_unrecorded_stops_as_interrupted(cluster, api_client, postgres, job_runner,
                                                               scene, idle_operator):
    ns = scene["ns"]
    op = idle_operator.start()
    kubectl_apply(cluster, ns, db_rollback("vanished"))
    uid = _rollback_uid(api_client, ns, "vanished")
    job = f"rewind-{uid.replace('-', '')[:8]}-restore"
    wait_for("restore fenced as job-created", lambda: ledger(postgres, uid, "restore") == "job-created",
             timeout=120, interval=0.02)
    op.freeze()
    client.BatchV1Api(api_client).delete_namespaced_job(job, ns, propagation_policy="Background")
    wait_for("restore Job gone", lambda: not _job_exists(api_client, ns, job))
    op.kill()
    op.start()
    rb = wait_phase(api_client, ns, "vanished", {"Succeeded", "Failed", "Interrupted"}, timeout=120)
    assert rb["status"]["phase"] == "Interrupted", rb["status"]
    ready = condition(rb, "Ready")
    assert ready["reason"] == "Interrupted" and "disappeared before its outcome was recorded" in ready["message"]
    assert condition(rb, "Stalled")["status"] == "True"
    assert rb["status"]["steps"][2]["state"] == "Interrupted"
    assert checksums(postgres, scene["db"]) == scene["before"]
    assert ledger(postgres, uid, "swap") is None


def test_staging_name_already_taken(cluster, api_client, postgres, scene, idle_operator):
    ns, live = scene["ns"], scene["db"]
    kubectl_apply(cluster, ns, db_rollback("squatted"))
    uid = _rollback_uid(api_client, ns, "squatted")
    squatter = f"{live[:40]}_restore_{uid.replace('-', '')[:8]}"
    postgres.create_database(squatter)
    with postgres.connect(squatter) as conn:
        conn.execute("CREATE TABLE precious (id int)")
        conn.commit()
    idle_operator.start()
    rb = wait_phase(api_client, ns, "squatted", {"Succeeded", "Failed", "Interrupted"}, timeout=120)
    assert rb["status"]["phase"] == "Failed"
    assert condition(rb, "Ready")["reason"] == "StagingNameTaken"
    assert squatter in condition(rb, "Ready")["message"]
    assert checksums(postgres, live) == scene["before"]
    with postgres.connect(squatter) as conn:
        assert conn.execute("SELECT to_regclass('precious') IS NOT NULL").fetchone()[0]
    postgres.drop_database(squatter)


def _swap_waits(api_client, ns, name):
    rb = get_rollback(api_client, ns, name)
    swap = next((s for s in (rb.get("status") or {}).get("steps") or [] if s["name"] == "database/swap"), {})
    return "Waiting for 1 session(s)" in (swap.get("message") or "") or swap.get("state") == "Failed"


def test_live_sessions_that_will_not_end_block_the_swap(cluster, api_client, postgres, scene, operator):
    """terminateConnections false: production stays open to new connections while the swap waits
    for its sessions to end, and after it gives up."""
    ns, live = scene["ns"], scene["db"]
    holder = postgres.connect(live)
    try:
        kubectl_apply(cluster, ns, db_rollback("busy", terminateConnections=False))
        wait_for("the swap waiting for the session", lambda: _swap_waits(api_client, ns, "busy"), timeout=180)
        with postgres.connect(live) as newcomer:                # accepted while the swap waits
            assert newcomer.execute("SELECT count(*) FROM users").fetchone() == (57,)
        rb = wait_phase(api_client, ns, "busy", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
        assert holder.execute("SELECT 1").fetchone() == (1,)   # the session was left alone
    finally:
        holder.close()
    assert rb["status"]["phase"] == "Failed"
    ready = condition(rb, "Ready")
    assert ready["reason"] == "SwapBlocked"
    assert "1 session(s)" in ready["message"] and "nothing was renamed" in ready["message"]
    assert checksums(postgres, live) == scene["before"]
    assert allows_connections(postgres, live)
    assert not [n for n in database_names(postgres) if "_pre_" in n and uid8(rb) in n]


def test_a_rollback_deleted_while_the_swap_waits_leaves_production_open(cluster, api_client, postgres, scene,
                                                                       operator):
    """The swap closes the live database while its sessions end; deleting the Rollback then must
    not leave production closed: the engine releases the step (opens it again), nothing renamed."""
    ns, live = scene["ns"], scene["db"]
    holder = postgres.connect(live)
    try:
        kubectl_apply(cluster, ns, db_rollback("deleted", terminateConnections=False))
        rb = get_rollback(api_client, ns, "deleted")
        wait_for("swap waiting on the live database's sessions",
                 lambda: _swap_waits(api_client, ns, "deleted"), timeout=180, interval=0.05)
        cluster.kubectl("delete", "rollback", "deleted", "-n", ns, "--wait=false")
        wait_for("the Rollback gone", lambda: cluster.kubectl(
            "get", "rollback", "deleted", "-n", ns, check=False).returncode != 0, timeout=60)
        assert holder.execute("SELECT 1").fetchone() == (1,)
    finally:
        holder.close()
    assert allows_connections(postgres, live)
    assert checksums(postgres, live) == scene["before"]
    assert not [n for n in database_names(postgres) if "_pre_" in n and uid8(rb) in n]


def test_the_engine_releases_a_swap_it_stops_mid_way(cluster, api_client, postgres, scene, rollback_crd):
    """Deterministic twin of the test above (there the daemon's own pass may race the deletion):
    the engine, stopping a Running swap (deletion, or giving up), opens the live database again.
    Real API server and PostgreSQL; the engine is called in-process with the Rollback as stored."""
    from rewind import engine
    from rewind.adapters import db
    from rewind.adapters.kube import ROLLBACKS, Kube, load_api_client
    from rewind.context import Context

    ns, live = scene["ns"], scene["db"]
    kubectl_apply(cluster, ns, db_rollback("stopped"))
    kube = Kube(load_api_client(str(cluster.kubeconfig)))   # its own client: Kube sets the user agent
    obj = kube.get(ROLLBACKS, ns, "stopped")
    target = {"kind": "Database", "name": live}
    obj = kube.patch(ROLLBACKS, ns, "stopped", {"status": {
        "phase": "Running", "startedAt": "2026-12-01T10:00:00Z", "deadline": "2026-12-01T10:15:00Z",
        "plan": [{"name": "database/swap", "kind": "DatabaseSwap", "target": target, "action": "Restore"}],
        "steps": [{"name": "database/swap", "state": "Running", "attempts": 1,
                   "startedAt": "2026-12-01T10:00:00Z"}]}}, "application/merge-patch+json", sub="status")
    with postgres.connect("postgres") as conn:
        conn.autocommit = True
        db.ensure_ledger(conn)                                                  # as preflight left it
        conn.execute(f'ALTER DATABASE "{live}" WITH ALLOW_CONNECTIONS false')   # as the swap leaves it
    assert not allows_connections(postgres, live)

    def save(status):
        return kube.patch(ROLLBACKS, ns, "stopped", {"status": status}, "application/merge-patch+json", sub="status")

    engine.abandon(Context(kube, obj, save, lambda *e: None))
    rb = get_rollback(api_client, ns, "stopped")
    assert rb["status"]["steps"][0]["state"] == "Interrupted"
    assert allows_connections(postgres, live)
    assert checksums(postgres, live) == scene["before"]


def test_a_finished_backup_job_deleted_before_its_outcome_was_saved(
        cluster, api_client, postgres, job_runner, scene, idle_operator, monkeypatch):
    """The operator dies right after creating the backup Job; the Job finishes and is deleted
    before anyone recorded it. The new Job finds this rollback's own dump and adopts it instead
    of refusing to overwrite it."""
    ns = scene["ns"]
    monkeypatch.setenv("REWIND_CRASH_AT", "DatabaseBackup:after-job-created")
    op = idle_operator.start()
    kubectl_apply(cluster, ns, db_rollback("backup-gone"))
    wait_for("the operator killed after creating the backup Job", lambda: op.proc.poll() is not None,
             timeout=180)
    monkeypatch.delenv("REWIND_CRASH_AT")
    uid = _rollback_uid(api_client, ns, "backup-gone")
    job = f"rewind-{uid.replace('-', '')[:8]}-backup"
    wait_for("backup Job complete", lambda: any(
        c.type == "Complete" and c.status == "True"
        for c in client.BatchV1Api(api_client).read_namespaced_job(job, ns).status.conditions or []),
        timeout=120)
    client.BatchV1Api(api_client).delete_namespaced_job(job, ns, propagation_policy="Background")
    wait_for("backup Job gone", lambda: not _job_exists(api_client, ns, job))
    dump = next(job_runner.pvc_dir(ns, CLAIM).rglob("pre-rollback.dump"))
    first = dump.read_bytes()
    op.start()
    rb = wait_phase(api_client, ns, "backup-gone", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    _assert_rolled_back(postgres, rb, scene)
    assert dump.read_bytes() == first                    # adopted, not written again
    assert rb["status"]["database"]["preRollbackBackupBytes"] == len(first)
