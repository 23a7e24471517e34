"""Argo CD and Flux (issue 14, item 1), against the real control plane with the real CRDs of
Argo CD (Application) and Flux (Kustomization, HelmRelease) installed (testbed/crds/, vendored
unchanged). Their controllers do not run here: a stand-in controller (a thread of the test) does
what they do with automated sync / self-heal on: while the owner's sync is on (Argo CD:
`spec.syncPolicy.automated` present; Flux: `spec.suspend` not true), it puts Git's (broken) pod
template back on the Deployment every 0.5 s.

What a person would check: the Deployment's image some seconds after the rollback, the owner's
sync setting, the Rollback's status and messages, and the API server's audit log."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from rewind_testbed.install import PERMISSIVE, wait_established

from helpers import (
    audit_writes, condition, deploy_revisions, deployment_dict, get_rollback, kubectl_apply,
    rollback, wait_for, wait_phase,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
IMAGES = ["registry.local/booking:1.0", "registry.local/booking:1.1", "registry.local/booking:1.2-bad"]
GOOD, BAD = IMAGES[1], IMAGES[2]
AUTOMATED = {"prune": True, "selfHeal": True}
OWNERS = {
    "Application": ("argoproj.io", "v1alpha1", "applications"),
    "Kustomization": ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations"),
    "HelmRelease": ("helm.toolkit.fluxcd.io", "v2", "helmreleases"),
}


@pytest.fixture(scope="session")
def gitops_crds(cluster):
    """The real CRDs, applied server-side (Argo CD's is too large for the last-applied annotation)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "testbed" / "crds"))
    wait_established(cluster.kubectl, "applications.argoproj.io", "kustomizations.kustomize.toolkit.fluxcd.io",
                     "helmreleases.helm.toolkit.fluxcd.io")


@pytest.fixture
def apps(api_client):
    return client.AppsV1Api(api_client)


@pytest.fixture
def gitops_operator(cluster, namespace, gitops_crds, idle_operator, monkeypatch):
    """The operator, with Argo CD's namespace = the test's, and the shipped GitOps role bound there."""
    cluster.kubectl("create", "rolebinding", "rewind-operator-gitops", "-n", namespace,
                    "--clusterrole=rewind-operator-gitops", "--serviceaccount=rewind-test-system:rewind-operator")
    monkeypatch.setenv("REWIND_ARGOCD_NAMESPACE", namespace)
    return idle_operator.start()


def _owner(api_client, namespace: str, kind: str, name: str = "booking") -> dict:
    """The owner object, as Argo CD's or Flux's CLI would create it (sync on)."""
    group, version, plural = OWNERS[kind]
    body = {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": {"name": name}}
    if kind == "Application":
        body["spec"] = {"project": "default",
                        "source": {"repoURL": "https://git.example.com/booking.git", "path": "deploy",
                                   "targetRevision": "main"},
                        "destination": {"server": "https://kubernetes.default.svc", "namespace": namespace},
                        "syncPolicy": {"automated": AUTOMATED}}
    elif kind == "Kustomization":
        body["spec"] = {"interval": "1m", "prune": True, "path": "./deploy",
                        "sourceRef": {"kind": "GitRepository", "name": "booking"}}
    else:
        body["spec"] = {"interval": "1m", "chart": {"spec": {"chart": "booking", "sourceRef": {
            "kind": "HelmRepository", "name": "booking"}}}}
    return client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        group, version, namespace, plural, body)


def _get_owner(api_client, namespace: str, kind: str, name: str = "booking") -> dict:
    group, version, plural = OWNERS[kind]
    return client.CustomObjectsApi(api_client).get_namespaced_custom_object(group, version, namespace, plural, name)


def _sync_on(kind: str, owner: dict) -> bool:
    spec = owner.get("spec") or {}
    if kind == "Application":
        return (spec.get("syncPolicy") or {}).get("automated") is not None
    return spec.get("suspend") is not True


def _mark_managed(apps, namespace: str, kind: str, name: str = "booking") -> None:
    """What the tool puts on what it applies: Argo CD's tracking id, Flux's labels."""
    if kind == "Application":
        meta = {"annotations": {"argocd.argoproj.io/tracking-id": f"{name}:apps/Deployment:{namespace}/web"}}
    else:
        prefix = "kustomize" if kind == "Kustomization" else "helm"
        meta = {"labels": {f"{prefix}.toolkit.fluxcd.io/name": name,
                           f"{prefix}.toolkit.fluxcd.io/namespace": namespace}}
    apps.patch_namespaced_deployment("web", namespace, {"metadata": meta})


class StandIn:
    """A GitOps controller with automated sync / self-heal: while the owner's sync is on, it
    applies Git's template (the broken release) to the Deployment every 0.5 s."""

    def __init__(self, api_client, apps, namespace: str, kind: str, template: dict):
        self.api_client, self.apps, self.namespace, self.kind = api_client, apps, namespace, kind
        self.template = template
        self.stop = threading.Event()
        self.reapplied = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                if not _sync_on(self.kind, _get_owner(self.api_client, self.namespace, self.kind)):
                    continue
                d = self.apps.read_namespaced_deployment("web", self.namespace)
                if d.spec.template.spec.containers[0].image != self.template["spec"]["containers"][0]["image"]:
                    self.apps.patch_namespaced_deployment("web", self.namespace, {"spec": {"template": self.template}})
                    self.reapplied += 1
            except client.ApiException:
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def _image(apps, namespace: str) -> str:
    return apps.read_namespaced_deployment("web", namespace).spec.template.spec.containers[0].image


def _setup(api_client, apps, namespace: str, kind: str) -> dict:
    deploy_revisions(apps, namespace, "web", IMAGES)
    _owner(api_client, namespace, kind)
    _mark_managed(apps, namespace, kind)
    return deployment_dict(apps, namespace, "web")["spec"]["template"]


def test_ignored_sync_undoes_the_rollback(cluster, api_client, apps, namespace, gitops_operator):
    """The complaint: with the owner's sync left on, the rollback is silently put back."""
    git = _setup(api_client, apps, namespace, "Application")
    with StandIn(api_client, apps, namespace, "Application", git) as standin:
        kubectl_apply(cluster, namespace, rollback("ignored", [{"name": "web"}], gitops={"mode": "Ignore"}))
        rb = wait_phase(api_client, namespace, "ignored", {"Succeeded", "Failed"}, timeout=120)
        time.sleep(2)
        assert _image(apps, namespace) == BAD
        assert standin.reapplied >= 1
    assert "Argo CD Application" in condition(rb, "Planned")["message"]
    assert "not suspended" in condition(rb, "Planned")["message"]
    assert _sync_on("Application", _get_owner(api_client, namespace, "Application"))
    assert not rb["status"].get("gitops")


@pytest.mark.parametrize("kind", ["Application", "Kustomization"])
def test_suspended_sync_holds_the_rollback_until_a_person_resumes_it(cluster, api_client, apps, namespace,
                                                                      gitops_operator, kind):
    git = _setup(api_client, apps, namespace, kind)
    with StandIn(api_client, apps, namespace, kind, git):
        kubectl_apply(cluster, namespace, rollback("held", [{"name": "web"}]))
        rb = wait_phase(api_client, namespace, "held", {"Succeeded", "Failed"}, timeout=120)
        assert rb["status"]["phase"] == "Succeeded", (rb["status"], gitops_operator.output()[-3000:])
        time.sleep(2)
        assert _image(apps, namespace) == GOOD   # the stand-in did not put Git's state back

    st = rb["status"]
    assert [s["kind"] for s in st["plan"]] == ["GitOpsSuspend", "WorkloadRevision", "GitOpsHold"]
    owner = _get_owner(api_client, namespace, kind)
    assert not _sync_on(kind, owner)
    [record] = st["gitops"]
    assert (record["kind"], record["name"], record["resumed"]) == (kind, "booking", False)
    assert json.loads(record["previous"]) == (AUTOMATED if kind == "Application" else False)
    assert GOOD in record["mustChangeInGit"] and "revision 2" in record["mustChangeInGit"]
    ready = condition(rb, "Ready")["message"]
    assert "stays suspended until Git holds" in ready and "kubectl rewind resume-sync held" in ready
    assert condition(rb, "HooksUndone") is None
    writes = audit_writes(cluster, namespace, OWNERS[kind][2], "booking")
    assert [w["verb"] for w in writes] == ["patch"]

    # A person fixed Git and resumes: exactly the recorded setting comes back.
    out = subprocess.run([sys.executable, "-m", "rewind.cli", "resume-sync", "held", "-n", namespace,
                          "--kubeconfig", str(cluster.kubeconfig)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    owner = _get_owner(api_client, namespace, kind)
    if kind == "Application":
        assert owner["spec"]["syncPolicy"]["automated"] == AUTOMATED
    else:
        assert owner["spec"]["suspend"] is False
    marks = json.loads(get_rollback(api_client, namespace, "held")["metadata"]["annotations"]["rewind.dev/sync-resumed"])
    assert list(marks) == [f"{kind}/{namespace}/booking"]
    again = subprocess.run([sys.executable, "-m", "rewind.cli", "resume-sync", "held", "-n", namespace,
                            "--kubeconfig", str(cluster.kubeconfig)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "no suspended GitOps owner" in again.stderr


REQUESTER = [{"apiGroups": ["rewind.dev"], "resources": ["rollbacks"], "verbs": ["create", "get", "list", "watch"]},
             {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "patch"]},
             {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]}]


@pytest.mark.parametrize("missing", ["Refuse", "Warn"])
def test_a_requester_who_may_not_suspend(cluster, api_client, apps, namespace, gitops_operator, tmp_path, missing):
    git = _setup(api_client, apps, namespace, "Application")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "requester"},
         "rules": REQUESTER},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "carol"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "requester"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "carol"}]},
        {"apiVersion": "rewind.dev/v1alpha1", "kind": "RollbackPolicy", "metadata": {"name": "default"},
         "spec": {"egress": PERMISSIVE["egress"], "gitops": {"missingPermission": missing}}}]))
    carol = cluster.user_kubeconfig("carol", [], tmp_path / "users")
    created = subprocess.run([cluster.kubectl_bin, f"--kubeconfig={carol}", "-n", namespace, "create", "-f", "-"],
                             input=yaml.safe_dump(rollback("by-carol", [{"name": "web"}])),
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    rb = wait_phase(api_client, namespace, "by-carol", {"Succeeded", "Failed"}, timeout=120)
    owner = _get_owner(api_client, namespace, "Application")
    assert _sync_on("Application", owner)     # never suspended with the operator's rights
    if missing == "Refuse":
        ready = condition(rb, "Ready")
        assert rb["status"]["phase"] == "Failed" and ready["reason"] == "RequesterNotAllowed"
        assert "patch applications.argoproj.io/booking" in ready["message"]
        assert deployment_dict(apps, namespace, "web")["spec"]["template"] == git
        writes = audit_writes(cluster, namespace, "deployments", "web")
        assert writes == []
    else:
        assert rb["status"]["phase"] == "Succeeded", rb["status"]
        assert "carol may not patch it" in condition(rb, "Planned")["message"]
        assert [s["kind"] for s in rb["status"]["plan"]] == ["WorkloadRevision"]


def test_a_rollback_applied_again_runs_once(cluster, api_client, apps, namespace, gitops_operator):
    """A prune and re-sync re-creates the Rollback (new UID, same key): it must not roll back again
    (here a second `previous` would go to the broken revision 3)."""
    deploy_revisions(apps, namespace, "web", IMAGES)
    doc = rollback("from-git", [{"name": "web"}], idempotencyKey="booking-incident-42")
    kubectl_apply(cluster, namespace, doc)
    first = wait_phase(api_client, namespace, "from-git", {"Succeeded", "Failed"})
    assert first["status"]["phase"] == "Succeeded" and first["status"]["idempotencyKey"] == "booking-incident-42"
    cluster.kubectl("delete", "rollback", "from-git", "-n", namespace)
    wait_for("deleted", lambda: not cluster.kubectl("get", "rollback", "from-git", "-n", namespace,
                                                    check=False).returncode == 0)
    kubectl_apply(cluster, namespace, doc)
    second = wait_phase(api_client, namespace, "from-git", {"Succeeded", "Failed"})
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    ready = condition(second, "Ready")
    assert second["status"]["phase"] == "Failed" and ready["reason"] == "AlreadyApplied"
    assert first["metadata"]["uid"] in ready["message"]
    assert _image(apps, namespace) == GOOD
    writes = audit_writes(cluster, namespace, "deployments", "web")
    assert [w["verb"] for w in writes] == ["patch"]
