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
    assert reasons[0] == "Planning" and "Restoring" in reasons and "RolledBack" in reasons
    assert reasons[-1] == "Succeeded"

    writes = audit_writes(cluster, namespace, "deployments", "web")
    if writes is not None:
        assert [w["verb"] for w in writes] == ["patch"]

    table = cluster.kubectl("get", "rollbacks", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "SEVERITY", "PHASE", "STEP", "VERIFIED", "DURATION", "AGE"]
    assert table[1].split()[:5] == ["undo", "High", "Succeeded", "1/1", "True"]
    short = cluster.kubectl("get", "rb", "undo", "-n", namespace, "-o", "name").stdout.strip()
    assert short == "rollback.rewind.dev/undo"
