"""Objects deleted in the middle of a step (issue 15, item 2): the operator is stopped at a named
point inside the step (SIGKILL at a crash point, rewind/crashpoints.py), a person deletes what the
step works on, and the operator is started again. The rollback must end with a reason that says
what went, never re-create what a person deleted, and leave production as it was (and open: a
database the swap had closed to new connections accepts them again).

Effects are counted from the API server's audit log and from PostgreSQL, not from status."""

from __future__ import annotations

import base64

import pytest
from kubernetes import client

from dbhelpers import (
    CLAIM, add_rows, allows_connections, checksums, database_names, db_rollback, db_secret, ledger,
    make_dump,
)
from helpers import (
    audit_writes, condition, deploy_revisions, died_at, get_rollback, kubectl_apply, restart, rollback,
    start_armed, wait_for, wait_phase,
)

pytestmark = pytest.mark.cluster

RB = "deleted"
TERMINAL = {"Succeeded", "Failed", "Interrupted"}
IMAGES = ["registry.local/booking:1.0", "registry.local/booking:1.1-bad"]


def _ended(api_client, ns: str) -> dict:
    rb = wait_phase(api_client, ns, RB, TERMINAL, timeout=150)
    assert rb["status"]["phase"] == "Failed", (condition(rb, "Ready"), rb["status"]["steps"])
    return rb


@pytest.mark.parametrize("point", ["WorkloadRevision:after-intent", "WorkloadRevision:after-write"])
def test_a_deployment_deleted_mid_step_ends_the_rollback_and_is_not_recreated(
        point, cluster, api_client, namespace, idle_operator):
    ns, apps = namespace, client.AppsV1Api(api_client)
    op = start_armed(idle_operator, point)
    deploy_revisions(apps, ns, "web", IMAGES)
    kubectl_apply(cluster, ns, rollback(RB, [{"name": "web"}]))
    died_at(op, point)
    apps.delete_namespaced_deployment("web", ns)
    wait_for("the Deployment is gone", lambda: not [d for d in apps.list_namespaced_deployment(ns).items
                                                    if d.metadata.name == "web"], timeout=30)

    restart(op)
    rb = _ended(api_client, ns)
    ready = condition(rb, "Ready")
    assert ready["reason"] == "TargetNotFound", ready
    assert "Deployment" in ready["message"] and "web" in ready["message"], ready["message"]
    assert [s["state"] for s in rb["status"]["steps"]] == ["Failed"]
    # Nothing re-created it; the only write is the one patch made before the kill (if any).
    verbs = [w["verb"] for w in audit_writes(cluster, ns, "deployments", "web")]
    assert verbs == ([] if point.endswith("after-intent") else ["patch"]), verbs
    assert not [d for d in apps.list_namespaced_deployment(ns).items if d.metadata.name == "web"]


@pytest.mark.postgres
def test_a_staging_database_dropped_before_the_swap_leaves_production_open_and_unchanged(
        cluster, api_client, postgres, booking_db, job_runner, restricted, idle_operator):
    ns, live = restricted, booking_db
    point = "DatabaseSwap:before-rename"          # production closed to new connections, nothing renamed
    op = start_armed(idle_operator, point)
    make_dump(postgres, live, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    add_rows(postgres, live, 1000, 7)
    before = checksums(postgres, live)
    db_secret(api_client, ns, postgres.dsn(live))
    kubectl_apply(cluster, ns, db_rollback(RB))
    died_at(op, point)
    mid = get_rollback(api_client, ns, RB)
    uid = mid["metadata"]["uid"]
    staging = f"{live[:40]}_restore_{uid.replace('-', '')[:8]}"
    assert not allows_connections(postgres, live)          # where the point says it is
    assert ledger(postgres, uid, "swap") == "swapping"
    names = database_names(postgres)
    postgres.drop_database(staging)                        # someone drops it by hand

    restart(op)
    rb = _ended(api_client, ns)
    ready = condition(rb, "Ready")
    assert ready["reason"] == "StagingDatabaseGone" and staging in ready["message"], ready
    # Production is as it was, under its name, and open again.
    assert checksums(postgres, live) == before
    assert allows_connections(postgres, live)
    assert database_names(postgres) == names - {staging}
    assert ledger(postgres, uid, "swap") != "swapped"


def test_a_secret_deleted_mid_step_is_not_recreated(cluster, api_client, namespace, idle_operator):
    ns, core = namespace, client.CoreV1Api(api_client)
    point = "SecretsRestore:after-intent"
    op = start_armed(idle_operator, point)
    old = {"client-id": "booking-web", "client-secret": "old-value"}
    core.create_namespaced_secret(ns, {"metadata": {"name": "google-oauth", "labels": {"rewind.dev/track": "true"}},
                                       "data": {k: base64.b64encode(v.encode()).decode() for k, v in old.items()}})
    wait_for("revision 1", lambda: bool(core.list_namespaced_secret(
        ns, label_selector="rewind.dev/history-of=google-oauth").items), timeout=60)
    core.patch_namespaced_secret("google-oauth", ns, {"data": {"client-secret": base64.b64encode(b"new").decode()}})
    wait_for("revision 2", lambda: len(core.list_namespaced_secret(
        ns, label_selector="rewind.dev/history-of=google-oauth").items) == 2, timeout=60)
    kubectl_apply(cluster, ns, {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback", "metadata": {"name": RB},
                                "spec": {"severity": "High", "reason": "rotation broke sign-in",
                                         "secrets": [{"name": "google-oauth", "toRevision": "previous"}]}})
    died_at(op, point)
    core.delete_namespaced_secret("google-oauth", ns)

    restart(op)
    rb = _ended(api_client, ns)
    ready = condition(rb, "Ready")
    assert "google-oauth" in ready["message"], ready
    assert not [w for w in audit_writes(cluster, ns, "secrets", "google-oauth") if w["verb"] in ("create", "update", "patch")]
    assert not [s for s in core.list_namespaced_secret(ns).items if s.metadata.name == "google-oauth"]
