"""Bad input: every way a spec or a target can be wrong ends in a clear condition, and the
workload is left exactly as it was (same resourceVersion, no write in the audit log). Malformed
specs are refused by the CRD itself, at `kubectl apply` time."""

from __future__ import annotations

import pytest
from kubernetes import client

from helpers import (
    audit_writes, condition, deploy_revisions, deployment_dict, get_rollback, kubectl_apply,
    rollback, wait_for, wait_phase,
)

pytestmark = pytest.mark.cluster

IMAGES = ["registry.local/booking:1.0", "registry.local/booking:1.1", "registry.local/booking:1.2-bad"]


@pytest.fixture
def apps(api_client):
    return client.AppsV1Api(api_client)


def _desired_state_of(d: dict) -> tuple:
    """What a rollback could change: the spec, the annotations and the generation (the status is
    the controller's and moves on its own)."""
    return d["spec"], d["metadata"].get("annotations"), d["metadata"]["generation"]


def _desired_state(apps, namespace: str) -> tuple:
    return _desired_state_of(deployment_dict(apps, namespace, "web"))


def _assert_refused(api_client, cluster, namespace, name, reason, fragment):
    rb = wait_phase(api_client, namespace, name, {"Failed", "Succeeded", "Planned"})
    assert rb["status"]["phase"] == "Failed"
    for type_ in ("Ready", "Planned", "Stalled"):
        c = condition(rb, type_)
        assert c is not None, type_
        assert c["reason"] == reason, (type_, c)
    assert condition(rb, "Ready")["status"] == "False"
    assert condition(rb, "Stalled")["status"] == "True"
    assert condition(rb, "Reconciling") is None
    message = condition(rb, "Ready")["message"]
    assert "nothing was changed" in message and fragment in message, message
    assert rb["status"].get("plan", []) == [] and rb["status"].get("steps", []) == []
    writes = audit_writes(cluster, namespace, "deployments")
    assert writes == []
    return rb


@pytest.mark.parametrize("case", ["missing", "unknown-revision", "other-namespace", "paused"])
def test_preflight_refusals_change_nothing(cluster, api_client, apps, namespace, operator, case):
    deploy_revisions(apps, namespace, "web", IMAGES[:2])
    target = {"kind": "Deployment", "name": "web", "toRevision": "previous"}
    reason, fragment = {
        "missing": ("TargetNotFound", f"Deployment {namespace}/nope does not exist"),
        "unknown-revision": ("RevisionNotFound", "revision 7 not found (revisions kept: 1, 2)"),
        "other-namespace": ("NamespaceNotAllowed", "only touches its own namespace"),
        "paused": ("WorkloadPaused", "kubectl rollout resume deployment/web"),
    }[case]
    if case == "missing":
        target["name"] = "nope"
    elif case == "unknown-revision":
        target["toRevision"] = 7
    elif case == "other-namespace":
        target["namespace"] = "default"
    elif case == "paused":
        apps.patch_namespaced_deployment("web", namespace, {"spec": {"paused": True}})
    before = deployment_dict(apps, namespace, "web")

    kubectl_apply(cluster, namespace, rollback("bad", [target]))
    _assert_refused(api_client, cluster, namespace, "bad", reason, fragment)
    assert _desired_state(apps, namespace) == _desired_state_of(before)


def test_pruned_revision_is_refused(cluster, api_client, apps, namespace, operator):
    deploy_revisions(apps, namespace, "web", IMAGES, revisionHistoryLimit=1)
    wait_for("old ReplicaSets pruned", lambda: len(apps.list_namespaced_replica_set(
        namespace, label_selector="app=web").items) == 2)
    before = deployment_dict(apps, namespace, "web")
    kubectl_apply(cluster, namespace, rollback("pruned", [{"name": "web", "toRevision": 1}]))
    _assert_refused(api_client, cluster, namespace, "pruned", "RevisionNotFound",
                    "revision 1 not found (revisions kept: 2, 3)")
    assert _desired_state(apps, namespace) == _desired_state_of(before)


def test_several_problems_are_all_reported(cluster, api_client, apps, namespace, operator):
    deploy_revisions(apps, namespace, "web", IMAGES[:2])
    kubectl_apply(cluster, namespace, rollback("two", [
        {"name": "web", "toRevision": 9}, {"name": "ghost"}]))
    rb = _assert_refused(api_client, cluster, namespace, "two", "RevisionNotFound", "revision 9 not found")
    assert f"Deployment {namespace}/ghost does not exist" in condition(rb, "Ready")["message"]


@pytest.mark.parametrize("spec,fragment", [
    ({"severity": "Urgent", "reason": "r", "application": [{"name": "web"}]},
     'spec.severity: Unsupported value: "Urgent"'),
    ({"severity": "High", "reason": "r", "application": [{"name": "web", "toRevision": -1}]},
     "toRevision must be 'previous' or a revision number of 1 or more"),
    ({"severity": "High", "reason": "r", "application": [{"name": "web", "toRevision": "latest"}]},
     "toRevision must be 'previous' or a revision number of 1 or more"),
    ({"severity": "High", "reason": "r", "application": [{"name": "web"}], "force": True},
     'unknown field "spec.force"'),
    ({"severity": "High", "reason": "r", "application": [{"name": "web", "image": "x"}]},
     'unknown field "spec.application[0].image"'),
    ({"severity": "High", "reason": "r", "application": []},
     "spec.application: Invalid value: 0: spec.application in body should have at least 1 items"),
    ({"severity": "High", "reason": "r"},
     "spec must name at least one target"),
    ({"severity": "High", "application": [{"name": "web"}]},
     "spec.reason: Required value"),
    ({"severity": "High", "reason": "r", "application": [{"name": "Web_App"}]},
     "spec.application[0].name: Invalid value"),
    ({"severity": "High", "reason": "r", "application": [{"name": "web"}, {"name": "web"}]},
     "Duplicate value"),
])
def test_crd_rejects_malformed_specs_at_apply_time(cluster, namespace, rollback_crd, spec, fragment):
    obj = {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback",
           "metadata": {"name": "malformed"}, "spec": spec}
    out = kubectl_apply(cluster, namespace, obj, check=False)
    assert out.returncode != 0
    assert fragment in out.stderr, out.stderr
    assert cluster.kubectl("get", "rollback", "malformed", "-n", namespace,
                           check=False).returncode != 0


def test_spec_is_immutable_once_started(cluster, api_client, apps, namespace, operator):
    deploy_revisions(apps, namespace, "web", IMAGES[:2])
    kubectl_apply(cluster, namespace, rollback("fixed", [{"name": "web"}], dryRun=True))
    wait_phase(api_client, namespace, "fixed", {"Planned"})
    out = cluster.kubectl("patch", "rollback", "fixed", "-n", namespace, "--type=merge",
                          "-p", '{"spec":{"severity":"Low"}}', check=False)
    assert out.returncode != 0
    assert "spec is immutable once the rollback has started" in out.stderr
    assert get_rollback(api_client, namespace, "fixed")["spec"]["severity"] == "High"
