"""Who may roll back, against the real API server and its own authentication: distinct users with
client certificates from the test bed's CA, identities stamped by the shipped admission policies,
the requester's rights asked of the API server (SubjectAccessReview), approvals by role (RBAC),
break-glass, and one rollback per target (Leases).

Each test checks what a person (or an auditor) would: the Deployment's template and
resourceVersion, the Rollback's phase and conditions, and the API server's audit log for the
operator's writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from rewind_testbed.install import PERMISSIVE

from helpers import (
    audit_writes, condition, deploy_revisions, deployment_dict, events_for, get_rollback,
    rollback, template_of, wait_for, wait_phase,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
IMAGES = ["registry.local/booking:1.0", "registry.local/booking:1.1", "registry.local/booking:1.2-bad"]
KUBECTL_REWIND = [sys.executable, "-m", "rewind.cli"]


@pytest.fixture
def apps(api_client):
    return client.AppsV1Api(api_client)


def _role(name: str, rules: list[dict]) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
            "rules": rules}


def _binding(role: str, user: str) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": f"{role}-{user}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}


REQUESTER = [{"apiGroups": ["rewind.dev"], "resources": ["rollbacks"],
              "verbs": ["create", "get", "list", "watch", "patch", "update"]},
             {"apiGroups": ["rewind.dev"], "resources": ["rollbackapprovals"],
              "verbs": ["create", "get", "list", "watch"]}]
DEPLOYER = [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]}]


def _approver(role: str) -> list[dict]:
    return [{"apiGroups": ["rewind.dev"], "resources": ["rollbacks"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["rewind.dev"], "resources": ["rollbackapprovals"], "verbs": ["create", "get", "list"]},
            {"apiGroups": ["rewind.dev"], "resources": ["rollbackapprovals"], "verbs": ["approve"],
             "resourceNames": [role]}]


class People:
    """Users with their own client certificates, and the RBAC the test gives them."""

    def __init__(self, cluster, namespace: str, directory: Path):
        self.cluster, self.namespace, self.dir = cluster, namespace, directory
        self.configs: dict[str, Path] = {}
        roles = [_role("requester", REQUESTER), _role("deployer", DEPLOYER)]
        roles += [_role(f"approver-{r}", _approver(r)) for r in ("devops-lead", "security")]
        self._apply(roles)

    def _apply(self, docs: list[dict]) -> None:
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump_all(docs))

    def user(self, name: str, *roles: str, groups: tuple[str, ...] = ()) -> Path:
        self.configs[name] = self.cluster.user_kubeconfig(name, list(groups), self.dir)
        if roles:
            self._apply([_binding(r, name) for r in roles])
        return self.configs[name]

    def kubectl(self, who: str, *args: str, input: str | None = None, check: bool = True):
        out = subprocess.run([self.cluster.kubectl_bin, f"--kubeconfig={self.configs[who]}",
                              "-n", self.namespace, *args], capture_output=True, text=True, input=input,
                             timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl as {who} {' '.join(args)}: {out.stderr}")
        return out

    def apply(self, who: str, obj: dict, check: bool = True):
        return self.kubectl(who, "create", "-f", "-", input=yaml.safe_dump(obj), check=check)

    def rewind(self, who: str, *args: str):
        return subprocess.run([*KUBECTL_REWIND, *args, "-n", self.namespace,
                               "--kubeconfig", str(self.configs[who])],
                              capture_output=True, text=True, timeout=60)


@pytest.fixture
def people(cluster, namespace, tmp_path):
    return People(cluster, namespace, tmp_path / "users")


def _policy(cluster, namespace: str, **spec) -> None:
    spec.setdefault("egress", PERMISSIVE["egress"])
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump({
        "apiVersion": "rewind.dev/v1alpha1", "kind": "RollbackPolicy", "metadata": {"name": "default"},
        "spec": spec}))


SEED_MATRIX = [
    {"severity": "Critical", "approvals": [{"role": "devops-lead"}, {"role": "security"}]},
    {"severity": "High", "approvals": [{"role": "devops-lead"}], "breakGlass": True},
]


def _unchanged(before: dict, after: dict) -> bool:
    """The Deployment as its owner wrote it (the controller may still move its status, and so its
    resourceVersion): same generation, same template. The audit log says who wrote."""
    return (after["metadata"]["generation"] == before["metadata"]["generation"]
            and after["spec"]["template"] == before["spec"]["template"])


def _deployment_writes(cluster, namespace: str) -> list[dict]:
    writes = audit_writes(cluster, namespace, "deployments", "web")
    assert writes is not None, "this test needs the local test bed's audit log"
    return writes


# --- identity ------------------------------------------------------------------------------------


def test_a_declared_identity_is_overwritten_and_cannot_be_changed(cluster, namespace, rollback_crd, people):
    people.user("alice", "requester")
    people.user("bob", "requester")
    forged = rollback("forged", [{"name": "web"}], dryRun=True,
                      requester={"username": "rewind-testbed-admin", "groups": ["system:masters"]},
                      requestedBy="the admin")
    people.apply("alice", forged)
    rb = yaml.safe_load(people.kubectl("alice", "get", "rollback", "forged", "-o", "yaml").stdout)
    assert rb["spec"]["requester"]["username"] == "alice"
    assert rb["spec"]["requester"]["groups"] == ["system:authenticated"]

    changed = people.kubectl("alice", "patch", "rollback", "forged", "--type=merge", "-p",
                             '{"spec":{"requester":{"username":"bob","groups":["system:masters"]}}}',
                             check=False)
    assert changed.returncode != 0 and "spec.requester is immutable" in changed.stderr
    # Someone else may not rewrite alice's Rollback to act under her name.
    other = people.kubectl("bob", "patch", "rollback", "forged", "--type=merge", "-p",
                           '{"spec":{"reason":"bob was here"}}', check=False)
    assert other.returncode != 0 and "only the requester may change" in other.stderr
    rb = yaml.safe_load(people.kubectl("alice", "get", "rollback", "forged", "-o", "yaml").stdout)
    assert rb["spec"]["requester"]["username"] == "alice" and rb["spec"]["reason"] == "bad release"


def test_without_the_admission_policies_nothing_runs(cluster, api_client, apps, namespace, operator):
    deploy_revisions(apps, namespace, "web", IMAGES)
    before = deployment_dict(apps, namespace, "web")
    binding = yaml.safe_load(cluster.kubectl("get", "validatingadmissionpolicybinding", "rewind-requester",
                                             "-o", "yaml").stdout)
    cluster.kubectl("delete", "validatingadmissionpolicybinding", "rewind-requester")
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-",
                        input=yaml.safe_dump(rollback("unguarded", [{"name": "web"}])))
        rb = wait_phase(api_client, namespace, "unguarded", {"Failed"}, timeout=60)
    finally:
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            binding["metadata"].pop(key, None)
        binding.pop("status", None)
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(binding))
    ready = condition(rb, "Ready")
    assert ready["reason"] == "IdentityUnverified"
    assert "validatingadmissionpolicybindings/rewind-requester missing" in ready["message"]
    assert _unchanged(before, deployment_dict(apps, namespace, "web"))
    assert _deployment_writes(cluster, namespace) == []


# --- the requester's own rights --------------------------------------------------------------------


def test_a_requester_who_cannot_patch_the_deployment_is_refused(cluster, api_client, apps, namespace,
                                                               operator, people):
    _policy(cluster, namespace)
    rs = deploy_revisions(apps, namespace, "web", IMAGES)
    before = deployment_dict(apps, namespace, "web")
    people.user("carol", "requester")                  # may create Rollbacks, not patch Deployments
    people.apply("carol", rollback("by-carol", [{"name": "web"}]))
    rb = wait_phase(api_client, namespace, "by-carol", {"Failed", "Succeeded"}, timeout=60)
    ready = condition(rb, "Ready")
    assert rb["status"]["phase"] == "Failed" and ready["reason"] == "RequesterNotAllowed", ready
    assert "carol may not" in ready["message"]
    assert "patch deployments.apps/web" in ready["message"]
    assert condition(rb, "Planned")["reason"] == "RequesterNotAllowed"
    assert _unchanged(before, deployment_dict(apps, namespace, "web"))
    assert _deployment_writes(cluster, namespace) == []

    # The same Rollback by someone who may patch it himself runs: the refusal was about carol.
    people.user("dave", "requester", "deployer")
    people.apply("dave", rollback("by-dave", [{"name": "web"}]))
    rb = wait_phase(api_client, namespace, "by-dave", {"Failed", "Succeeded"}, timeout=90)
    assert rb["status"]["phase"] == "Succeeded", condition(rb, "Ready")
    assert deployment_dict(apps, namespace, "web")["spec"]["template"] == template_of(rs[2])
    assert len(_deployment_writes(cluster, namespace)) == 1


def test_a_job_image_outside_the_allow_list_is_refused(cluster, api_client, namespace, operator):
    _policy(cluster, namespace, jobImages=["postgres:16"])
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump({
        "apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback", "metadata": {"name": "image"},
        "spec": {"severity": "High", "reason": "restore", "database": {
            "image": "attacker.example/exfiltrate:latest",
            "connection": {"secretRef": {"name": "db", "key": "url"}},
            "restoreFrom": {"persistentVolumeClaim": {"claimName": "backups", "path": "b.dump"}}}}}))
    rb = wait_phase(api_client, namespace, "image", {"Failed", "Succeeded"}, timeout=60)
    ready = condition(rb, "Ready")
    assert ready["reason"] == "ImageNotAllowed" and "attacker.example/exfiltrate:latest" in ready["message"]
    assert audit_writes(cluster, namespace, "jobs") == []


# --- approvals -------------------------------------------------------------------------------------


def test_a_critical_rollback_waits_for_both_roles(cluster, api_client, apps, namespace, operator, people):
    _policy(cluster, namespace, severities=SEED_MATRIX)
    rs = deploy_revisions(apps, namespace, "web", IMAGES)
    before = deployment_dict(apps, namespace, "web")
    people.user("alice", "requester", "deployer", "approver-devops-lead")   # may approve, but it is hers
    people.user("bob", "requester", "approver-devops-lead")
    people.user("sam", "requester", "approver-security")
    people.user("mallory", "requester")                                   # no role

    people.apply("alice", rollback("critical", [{"name": "web"}], severity="Critical"))
    rb = wait_phase(api_client, namespace, "critical", {"AwaitingApproval"}, timeout=60)
    assert condition(rb, "Approved")["reason"] == "AwaitingApproval"
    assert "devops-lead (0 of 1), security (0 of 1)" in condition(rb, "Approved")["message"]
    assert rb["status"]["deadline"]            # the clock runs while it waits

    # Her own approval, and one by someone without the role (created by hand: the plugin refuses
    # it before creating anything), do not count.
    assert people.rewind("alice", "approve", "critical", "--role", "devops-lead").returncode == 0
    refused = people.rewind("mallory", "approve", "critical", "--role", "security")
    assert refused.returncode == 1 and "you may not approve for role security" in refused.stderr, refused
    people.apply("mallory", {"apiVersion": "rewind.dev/v1alpha1", "kind": "RollbackApproval",
                             "metadata": {"name": "mallory-says-yes"},
                             "spec": {"rollback": "critical", "role": "security",
                                      "approver": {"username": "sam"}}})
    stamped = yaml.safe_load(people.kubectl("mallory", "get", "rollbackapproval", "mallory-says-yes",
                                            "-o", "yaml").stdout)
    assert stamped["spec"]["approver"]["username"] == "mallory"       # the forged "sam" is gone

    def judged(rb, n):
        return rb if len(rb["status"].get("approvals", [])) >= n else None
    rb = wait_for("two approvals judged", lambda: judged(get_rollback(api_client, namespace, "critical"), 2),
                  timeout=60)
    reasons = {a["approver"]: a.get("reason") for a in rb["status"]["approvals"]}
    assert reasons == {"alice": "SelfApproval", "mallory": "NotInRole"}, rb["status"]
    assert rb["status"]["phase"] == "AwaitingApproval", rb["status"]

    assert people.rewind("bob", "approve", "critical", "--role", "devops-lead").returncode == 0
    rb = wait_for("bob's approval counted", lambda: judged(get_rollback(api_client, namespace, "critical"), 3),
                  timeout=60)
    assert rb["status"]["phase"] == "AwaitingApproval", rb["status"]
    assert "security (0 of 1)" in condition(rb, "Approved")["message"], rb["status"]
    assert _unchanged(before, deployment_dict(apps, namespace, "web"))
    assert _deployment_writes(cluster, namespace) == []

    assert people.rewind("sam", "approve", "critical", "--role", "security",
                         "--comment", "checked the diff").returncode == 0
    rb = wait_phase(api_client, namespace, "critical", {"Succeeded", "Failed"}, timeout=90)
    assert rb["status"]["phase"] == "Succeeded", condition(rb, "Ready")
    assert condition(rb, "Approved")["status"] == "True"
    assert "devops-lead: bob" in condition(rb, "Approved")["message"], rb["status"]
    assert "security: sam" in condition(rb, "Approved")["message"], rb["status"]
    assert deployment_dict(apps, namespace, "web")["spec"]["template"] == template_of(rs[2])
    report = client.CoreV1Api(api_client).read_namespaced_config_map(
        rb["status"]["report"]["configMapRef"], namespace).data["report.md"]
    assert "**Requested by:** alice" in report
    assert "bob, devops-lead: Approve" in report and "sam, security: Approve" in report, report
    assert "alice, devops-lead: Approve" in report and "not counted: SelfApproval" in report, report


def test_a_denial_by_a_role_holder_ends_it(cluster, api_client, apps, namespace, operator, people):
    _policy(cluster, namespace, severities=SEED_MATRIX)
    deploy_revisions(apps, namespace, "web", IMAGES)
    before = deployment_dict(apps, namespace, "web")
    people.user("alice", "requester", "deployer")
    people.user("bob", "requester", "approver-devops-lead")
    people.apply("alice", rollback("high", [{"name": "web"}], severity="High"))
    wait_phase(api_client, namespace, "high", {"AwaitingApproval"}, timeout=60)
    assert people.rewind("bob", "deny", "high", "--role", "devops-lead",
                         "--comment", "wrong revision").returncode == 0
    rb = wait_phase(api_client, namespace, "high", {"Failed", "Succeeded"}, timeout=60)
    assert condition(rb, "Ready")["reason"] == "Denied"
    assert "Denied by bob (devops-lead)" in condition(rb, "Ready")["message"]
    assert {s["state"] for s in rb["status"]["steps"]} == {"Skipped"}
    assert _unchanged(before, deployment_dict(apps, namespace, "web"))
    assert _deployment_writes(cluster, namespace) == []


def test_break_glass_where_allowed_and_refused(cluster, api_client, apps, namespace, operator, people):
    _policy(cluster, namespace, severities=SEED_MATRIX)
    rs = deploy_revisions(apps, namespace, "web", IMAGES)
    before = deployment_dict(apps, namespace, "web")
    people.user("alice", "requester", "deployer")

    # Critical: the policy allows no break-glass, so it is refused before anything happens.
    people.apply("alice", rollback("glass-critical", [{"name": "web"}], severity="Critical", breakGlass=True))
    rb = wait_phase(api_client, namespace, "glass-critical", {"Failed", "Succeeded"}, timeout=60)
    assert condition(rb, "Ready")["reason"] == "BreakGlassNotAllowed"
    assert _unchanged(before, deployment_dict(apps, namespace, "web"))

    # High: allowed; it starts at once, says so loudly, and still lacks its approval afterwards.
    people.apply("alice", rollback("glass-high", [{"name": "web"}], severity="High", breakGlass=True))
    rb = wait_phase(api_client, namespace, "glass-high", {"Failed", "Succeeded"}, timeout=90)
    assert rb["status"]["phase"] == "Succeeded", condition(rb, "Ready")
    assert rb["status"]["breakGlass"] is True
    approved = condition(rb, "Approved")
    assert approved["status"] == "False" and approved["reason"] == "BreakGlass"
    assert "devops-lead (0 of 1)" in approved["message"]
    assert any(e.reason == "BreakGlass" and e.type == "Warning"
               for e in events_for(api_client, namespace, "glass-high"))
    assert deployment_dict(apps, namespace, "web")["spec"]["template"] == template_of(rs[2])


# --- one rollback per target -----------------------------------------------------------------------


def _slow(name: str, url: str, to_revision: int) -> dict:
    """A rollback that holds its Deployment for a while: a check measured 10 times, 2 s apart."""
    return rollback(name, [{"name": "web", "toRevision": to_revision}], verification={"http": [
        {"name": "health", "url": f"{url}/api/health", "count": 10, "intervalSeconds": 2}]})


@pytest.mark.parametrize("concurrency", ["Wait", "Refuse"])
def test_two_rollbacks_on_one_deployment(cluster, api_client, apps, namespace, operator, concurrency):
    import httpservers

    _policy(cluster, namespace, concurrency=concurrency)
    rs = deploy_revisions(apps, namespace, "web", IMAGES)
    server, url = httpservers.start()
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(_slow("first", url, 1)))
        wait_for("first holds the Deployment", lambda: get_rollback(api_client, namespace, "first")
                 .get("status", {}).get("leases"), timeout=60)
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(
            rollback("second", [{"name": "web", "toRevision": 2}])))
        if concurrency == "Refuse":
            rb = wait_phase(api_client, namespace, "second", {"Failed", "Succeeded"}, timeout=60)
            ready = condition(rb, "Ready")
            assert ready["reason"] == "TargetHeld" and f"Rollback {namespace}/first" in ready["message"]
        else:
            rb = wait_phase(api_client, namespace, "second", {"WaitingForTarget"}, timeout=60)
            held = condition(rb, "TargetsFree")
            assert held["status"] == "False" and held["reason"] == "TargetHeld"
            assert f"Deployment web is held by Rollback {namespace}/first" in held["message"]
            first = get_rollback(api_client, namespace, "first")
            assert first["status"]["phase"] == "Running"
        first = wait_phase(api_client, namespace, "first", {"Succeeded", "Failed"}, timeout=120)
        assert first["status"]["phase"] == "Succeeded", condition(first, "Ready")
        assert first["status"].get("leases", []) == []
        if concurrency == "Wait":
            rb = wait_phase(api_client, namespace, "second", {"Succeeded", "Failed"}, timeout=120)
            assert rb["status"]["phase"] == "Succeeded", condition(rb, "Ready")
            assert deployment_dict(apps, namespace, "web")["spec"]["template"] == template_of(rs[2])
            # One write each, never interleaved: the second patched after the first had finished.
            writes = _deployment_writes(cluster, namespace)
            assert len(writes) == 2
        else:
            assert deployment_dict(apps, namespace, "web")["spec"]["template"] == template_of(rs[1])
            assert len(_deployment_writes(cluster, namespace)) == 1
        leases = client.CoordinationV1Api(api_client).list_namespaced_lease(namespace).items
        assert [lease.metadata.name for lease in leases] == []
    finally:
        server.shutdown()


def test_a_gitops_service_account_is_a_requester_like_any_other(cluster, api_client, apps, namespace,
                                                               operator, people, tmp_path):
    """A ServiceAccount standing in for a GitOps controller: its own rights are the limit, too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tests_conftest", REPO / "tests" / "conftest.py")
    top = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(top)
    _policy(cluster, namespace)
    rs = deploy_revisions(apps, namespace, "web", IMAGES)
    cluster.kubectl("create", "serviceaccount", "gitops", "-n", namespace)
    sa = f"system:serviceaccount:{namespace}:gitops"
    for role in ("requester",):
        cluster.kubectl("create", "rolebinding", f"gitops-{role}", f"--role={role}",
                        f"--serviceaccount={namespace}:gitops", "-n", namespace)
    people.configs["gitops"] = top._service_account_kubeconfig(cluster, api_client, namespace, "gitops",
                                                           tmp_path / "gitops.kubeconfig")
    people.apply("gitops", rollback("from-git", [{"name": "web"}]))
    rb = wait_phase(api_client, namespace, "from-git", {"Failed", "Succeeded"}, timeout=60)
    assert rb["spec"]["requester"]["username"] == sa
    assert rb["spec"]["requester"]["uid"]                     # a token's identity carries a UID
    assert f"system:serviceaccounts:{namespace}" in rb["spec"]["requester"]["groups"]
    assert condition(rb, "Ready")["reason"] == "RequesterNotAllowed"
    assert f"{sa} may not" in condition(rb, "Ready")["message"]
    assert _deployment_writes(cluster, namespace) == []

    cluster.kubectl("create", "rolebinding", "gitops-deployer", "--role=deployer",
                    f"--serviceaccount={namespace}:gitops", "-n", namespace)
    people.apply("gitops", rollback("from-git-2", [{"name": "web"}]))
    rb = wait_phase(api_client, namespace, "from-git-2", {"Failed", "Succeeded"}, timeout=90)
    assert rb["status"]["phase"] == "Succeeded", condition(rb, "Ready")
    assert deployment_dict(apps, namespace, "web")["spec"]["template"] == template_of(rs[2])


def test_a_rollback_awaiting_approval_can_be_deleted_or_aborted(cluster, api_client, apps, namespace, operator):
    """Waiting for an approval holds nothing: a deletion goes through at once, an abort ends it."""
    _policy(cluster, namespace, severities=SEED_MATRIX)
    deploy_revisions(apps, namespace, "web", IMAGES)
    before = deployment_dict(apps, namespace, "web")
    for name in ("to-delete", "to-abort"):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(
            rollback(name, [{"name": "web"}])))
        wait_phase(api_client, namespace, name, {"AwaitingApproval"}, timeout=60)
    cluster.kubectl("delete", "rollback", "to-delete", "-n", namespace, "--wait=true", "--timeout=60s")
    cluster.kubectl("annotate", "rollback", "to-abort", "-n", namespace, "rewind.dev/abort=oncall")
    rb = wait_phase(api_client, namespace, "to-abort", {"Failed", "Succeeded"}, timeout=60)
    assert condition(rb, "Ready")["reason"] == "Aborted"
    assert _unchanged(before, deployment_dict(apps, namespace, "web"))
    assert _deployment_writes(cluster, namespace) == []
