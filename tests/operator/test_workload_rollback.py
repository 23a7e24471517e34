"""Workload revision restore, end to end: the real deployment controller makes revisions 1 -> 2 -> 3,
`rewind run` (a separate process) handles Rollbacks applied with kubectl, and the tests check
what a person on call would check: the Deployment's template, the rollout, the Rollback's status,
`kubectl get rollbacks`, `kubectl wait` and the API server's audit log."""

from __future__ import annotations

import pytest
from kubernetes import client

from helpers import (
    audit_writes, condition, deploy_revisions, deployment_dict, events_for, get_rollback,
    kubectl_apply, rollback, rolled_out, template_of, wait_for, wait_phase,
)

pytestmark = pytest.mark.cluster

IMAGES = ["registry.local/booking:1.0", "registry.local/booking:1.1", "registry.local/booking:1.2-bad"]


@pytest.fixture
def apps(api_client):
    return client.AppsV1Api(api_client)


@pytest.mark.parametrize("to_revision,expected", [("previous", 2), (1, 1)])
def test_rollback_restores_revision_and_reports_ready(cluster, api_client, apps, namespace, operator,
                                                      to_revision, expected):
    rs = deploy_revisions(apps, namespace, "web", IMAGES)
    assert sorted(rs) == [1, 2, 3]
    before = deployment_dict(apps, namespace, "web")

    kubectl_apply(cluster, namespace, rollback("undo", [
        {"kind": "Deployment", "name": "web", "toRevision": to_revision}]))
    waited = cluster.kubectl("wait", "--for=condition=Ready", "rollback/undo", "-n", namespace,
                             "--timeout=90s", check=False)
    assert waited.returncode == 0, (waited.stderr, operator.output()[-3000:])

    after = deployment_dict(apps, namespace, "web")
    assert after["spec"]["template"] == template_of(rs[expected])
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES[expected - 1]
    # A rollback is a roll forward: the old ReplicaSet comes back as the newest revision.
    assert after["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "4"
    assert rolled_out(apps, namespace, "web")
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    rs_after = apps.read_namespaced_replica_set(rs[expected]["metadata"]["name"], namespace)
    assert rs_after.spec.replicas == 2 and rs_after.status.available_replicas == 2

    rb = get_rollback(api_client, namespace, "undo")
    st = rb["status"]
    assert st["phase"] == "Succeeded"
    assert condition(rb, "Ready")["status"] == "True"
    assert condition(rb, "ApplicationRestored")["status"] == "True"
    assert condition(rb, "Verified")["status"] == "True"
    assert condition(rb, "Reconciling") is None
    assert condition(rb, "Stalled") is None
    assert all(c["observedGeneration"] == rb["metadata"]["generation"] for c in st["conditions"])
    assert st["plan"][0]["toRevision"] == expected and st["plan"][0]["currentRevision"] == 3
    assert f"image: {IMAGES[2]}" in st["plan"][0]["diff"]
    assert f"image: {IMAGES[expected - 1]}" in st["plan"][0]["diff"]
    step = st["steps"][0]
    assert step["state"] == "Succeeded" and step["restoredRevision"] == 4 and step["attempts"] == 1
    assert st["progress"] == "1/1"
    assert st["withinTarget"] is True and condition(rb, "WithinTarget")["status"] == "True"
    assert st["startedAt"] <= st["completedAt"] < st["deadline"]

    reasons = [e.reason for e in events_for(api_client, namespace, "undo")]
    assert reasons[0] == "Planned" and "RolledBack" in reasons and "Succeeded" in reasons
    assert [r for r in reasons if r != "ReportWritten"][-1] == "Succeeded"   # the report may follow

    writes = audit_writes(cluster, namespace, "deployments", "web")
    assert [w["verb"] for w in writes] == ["patch"]

    table = cluster.kubectl("get", "rollbacks", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "SEVERITY", "PHASE", "STEP", "VERIFIED", "DURATION", "AGE"]
    assert table[1].split()[:5] == ["undo", "High", "Succeeded", "1/1", "True"]
    short = cluster.kubectl("get", "rb", "undo", "-n", namespace, "-o", "name").stdout.strip()
    assert short == "rollback.rewind.dev/undo"


def test_dry_run_records_the_diff_and_changes_nothing(cluster, api_client, apps, namespace, operator):
    deploy_revisions(apps, namespace, "web", IMAGES)
    before = deployment_dict(apps, namespace, "web")
    kubectl_apply(cluster, namespace, rollback("preview", [{"name": "web"}], dryRun=True))
    waited = cluster.kubectl("wait", "--for=condition=Ready", "rollback/preview", "-n", namespace,
                             "--timeout=60s", check=False)
    assert waited.returncode == 0, waited.stderr
    rb = get_rollback(api_client, namespace, "preview")
    assert rb["status"]["phase"] == "Planned"
    assert condition(rb, "Ready")["reason"] == "DryRun"
    assert "Nothing was changed" in condition(rb, "Ready")["message"]
    diff = rb["status"]["plan"][0]["diff"]
    assert f"-  - image: {IMAGES[2]}\n" in diff and f"+  - image: {IMAGES[1]}\n" in diff
    assert rb["status"]["steps"][0]["state"] == "Pending"
    after = deployment_dict(apps, namespace, "web")
    assert after["spec"] == before["spec"] and after["metadata"]["generation"] == before["metadata"]["generation"]
    writes = audit_writes(cluster, namespace, "deployments")
    assert writes == []


def test_already_at_revision_is_a_no_op(cluster, api_client, apps, namespace, operator):
    rs = deploy_revisions(apps, namespace, "web", IMAGES)
    before = deployment_dict(apps, namespace, "web")
    kubectl_apply(cluster, namespace, rollback("same", [{"name": "web", "toRevision": 3}]))
    rb = wait_phase(api_client, namespace, "same", {"Succeeded", "Failed"})
    assert rb["status"]["phase"] == "Succeeded", rb["status"]
    assert rb["status"]["plan"][0]["action"] == "NoOp"
    assert rb["status"]["steps"][0]["state"] == "Skipped"
    assert condition(rb, "ApplicationRestored")["reason"] == "AlreadyAtRevision"
    after = deployment_dict(apps, namespace, "web")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"] == template_of(rs[3])
    writes = audit_writes(cluster, namespace, "deployments")
    assert writes == []


def test_rollout_that_never_becomes_available_fails_with_reason(cluster, api_client, apps, namespace,
                                                                operator):
    # Revision 1 is broken: its pods never become Ready (the test bed's kwok stages honour this
    # annotation, standing in for a crash-looping image).
    apps.create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "progressDeadlineSeconds": 5, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"},
                                           "annotations": {"testbed.rewind.dev/never-ready": "true"}},
                              "spec": {"containers": [{"name": "app", "image": IMAGES[0]}]}}}})
    wait_for("revision 1 exists", lambda: (apps.read_namespaced_deployment("web", namespace)
             .metadata.annotations or {}).get("deployment.kubernetes.io/revision") == "1")
    apps.patch_namespaced_deployment("web", namespace, {"spec": {"template": {"metadata": {
        "annotations": {"testbed.rewind.dev/never-ready": None}}, "spec": {
        "containers": [{"name": "app", "image": IMAGES[1]}]}}}})
    wait_for("revision 2 available", lambda: rolled_out(apps, namespace, "web"))

    kubectl_apply(cluster, namespace, rollback("to-broken", [{"name": "web", "toRevision": 1}]))
    rb = wait_phase(api_client, namespace, "to-broken", {"Succeeded", "Failed"}, timeout=120)
    assert rb["status"]["phase"] == "Failed"
    ready = condition(rb, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "RolloutFailed"
    assert "exceeded its progress deadline" in ready["message"]
    assert condition(rb, "Stalled")["status"] == "True"
    assert condition(rb, "ApplicationRestored")["reason"] == "RolloutFailed"
    assert rb["status"]["steps"][0]["state"] == "Failed"
    assert rb["status"]["withinTarget"] is False
    # The Deployment's own condition agrees.
    d = apps.read_namespaced_deployment("web", namespace)
    progressing = [c for c in d.status.conditions if c.type == "Progressing"][0]
    assert progressing.reason == "ProgressDeadlineExceeded"


def test_operator_killed_while_waiting_resumes_and_patches_once(cluster, api_client, apps, namespace,
                                                                operator):
    rs = deploy_revisions(apps, namespace, "web", IMAGES, minReadySeconds=3)
    kubectl_apply(cluster, namespace, rollback("crash", [{"name": "web"}]))
    wait_for("the ledger shows the rollout being waited for", lambda: (lambda st: st.get("steps") and
             st["steps"][0]["state"] == "Waiting")(get_rollback(api_client, namespace, "crash").get("status", {})),
             timeout=60, interval=0.05)
    operator.kill()
    mid = get_rollback(api_client, namespace, "crash")
    assert mid["status"]["phase"] == "Running"
    assert deployment_dict(apps, namespace, "web")["spec"]["template"] == template_of(rs[2])

    operator.start()
    waited = cluster.kubectl("wait", "--for=condition=Ready", "rollback/crash", "-n", namespace,
                             "--timeout=90s", check=False)
    assert waited.returncode == 0, (waited.stderr, operator.output()[-3000:])
    rb = get_rollback(api_client, namespace, "crash")
    assert rb["status"]["phase"] == "Succeeded"
    assert rb["status"]["steps"][0]["attempts"] == 1
    assert rolled_out(apps, namespace, "web")
    d = deployment_dict(apps, namespace, "web")
    assert d["spec"]["template"] == template_of(rs[2])
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "4"
    writes = audit_writes(cluster, namespace, "deployments", "web")
    assert [w["verb"] for w in writes] == ["patch"], writes
    assert operator.starts == 2
