"""Every RBAC rule the chart renders, against the golden files in tests/golden/: a change to what the
operator (or a person given the shipped roles) may do shows as a reviewable diff there.

Three renders: the defaults (the release's namespace only), watchNamespaces=[a, b], and
clusterWide=true. For each, the golden file lists every binding (kind, scope and namespace, the
role it grants, its subjects) with the rules it grants, and the roles bound by nobody (the
requester and approver roles, for people) with theirs. After a deliberate change:

    REWIND_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/operator/test_chart_rbac.py

rewrites them; commit the diff with the change. Beside the golden comparison, the properties a
reviewer checks by hand: no wildcard, no escalate/bind/impersonate, nothing but discovery bound
cluster-wide unless clusterWide asks for it, and the people's roles as the operator checks them.
Needs only the helm binary (testbed/build-helm.sh), no cluster.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from rewind.api.policy import APPROVAL_PLURAL, APPROVE_VERB

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
RBAC_KINDS = {"ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"}
RENDERS = {
    "default": [],
    "namespaces": ["--set", "watchNamespaces={a,b}"],
    "cluster-wide": ["--set", "clusterWide=true"],
}
# What the operator may be granted cluster-wide when it watches namespaces: kopf's discovery
# (names of CRDs and namespaces), SubjectAccessReviews, the admission policies by name, the
# cluster's default policy. Nothing holding application data or workloads.
CLUSTER_WIDE_ALLOWED = {
    "customresourcedefinitions", "namespaces", "subjectaccessreviews", "clusterrollbackpolicies",
    "mutatingadmissionpolicies", "mutatingadmissionpolicybindings", "validatingadmissionpolicies",
    "validatingadmissionpolicybindings",
}
NEVER_CLUSTER_WIDE = {"secrets", "jobs", "configmaps", "services", "deployments", "statefulsets", "daemonsets",
                      "pods", "replicasets", "controllerrevisions", "leases", "rollbacks", "rollbacks/status"}
DANGEROUS_VERBS = {"escalate", "bind", "impersonate", "*"}
APPROVAL_ROLES = ["devops-lead", "security", "devops-team"]

_spec = importlib.util.spec_from_file_location("render_manifests", REPO / "scripts" / "render_manifests.py")
render_manifests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_manifests)


@pytest.fixture(scope="module")
def helm() -> Path:
    path = render_manifests.find_helm(build=False)
    if path is None:
        pytest.skip(f"helm {render_manifests.helm_version()} is not built: run `bash testbed/build-helm.sh` "
                    "(`make bootstrap` does)")
    return path


def rbac_docs(helm: Path, args: list[str]) -> list[dict]:
    text = render_manifests.helm_template(helm, *args, release="rewind", namespace="rewind-system")
    return [d for d in yaml.safe_load_all(text) if d and d["kind"] in RBAC_KINDS]


def rule_row(rule: dict) -> dict:
    row = {"apiGroups": rule.get("apiGroups", []), "resources": rule.get("resources", [])}
    if rule.get("resourceNames"):
        row["resourceNames"] = rule["resourceNames"]
    if rule.get("nonResourceURLs"):
        row["nonResourceURLs"] = rule["nonResourceURLs"]
    row["verbs"] = rule["verbs"]
    return row


def role_key(kind: str, name: str, namespace: str | None = None) -> str:
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"


def grants(docs: list[dict]) -> dict:
    """The golden file's content: each binding with the rules it grants and where, then the roles
    no binding of the render grants."""
    roles = {role_key(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")): d
             for d in docs if d["kind"] in ("ClusterRole", "Role")}
    bound, out = set(), []
    for b in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        ns = b["metadata"].get("namespace")
        ref = b["roleRef"]
        key = role_key(ref["kind"], ref["name"], ns if ref["kind"] == "Role" else None)
        assert key in roles, f"{b['kind']} {b['metadata']['name']} grants {key}, which the chart does not render"
        bound.add(key)
        out.append({
            "binding": role_key(b["kind"], b["metadata"]["name"], ns),
            "scope": f"namespace {ns}" if b["kind"] == "RoleBinding" else "cluster",
            "role": key,
            "subjects": [f"{s['kind']} {s.get('namespace', '')}/{s['name']}".replace(" /", " ")
                         for s in b["subjects"]],
            "rules": [rule_row(r) for r in roles[key].get("rules") or []],
        })
    unbound = [{"role": key, "labels": {k: v for k, v in (r["metadata"].get("labels") or {}).items()
                                        if k.startswith("rewind.dev/")},
                "aggregationRule": r.get("aggregationRule"),
                "rules": [rule_row(x) for x in r.get("rules") or []]}
               for key, r in roles.items() if key not in bound]
    for u in unbound:
        if u["aggregationRule"] is None:
            del u["aggregationRule"]
    return {"grants": out, "unbound": unbound}


def golden_text(name: str, args: list[str], content: dict) -> str:
    command = " ".join(["helm template rewind charts/rewind --namespace rewind-system", *args])
    return (f"# Every RBAC rule of `{command}`,\n"
            "# by binding (where it is granted, to whom), then the roles bound by nobody (for people).\n"
            "# Generated by tests/operator/test_chart_rbac.py: REWIND_UPDATE_GOLDEN=1 rewrites it. Review the diff\n"
            "# like code: it is what the operator, or a person given the shipped roles, may do.\n"
            + yaml.safe_dump(content, sort_keys=False, default_flow_style=None, width=120))


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    return {name: rbac_docs(helm, args) for name, args in RENDERS.items()}


@pytest.mark.parametrize("name", list(RENDERS))
def test_rendered_rbac_is_the_golden_file(rendered, name):
    path = GOLDEN / f"rbac-{name}.yaml"
    text = golden_text(name, RENDERS[name], grants(rendered[name]))
    if os.environ.get("REWIND_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path.relative_to(REPO)} is missing: run with REWIND_UPDATE_GOLDEN=1"
    assert path.read_text() == text, (
        f"the chart's RBAC ({name}) differs from {path.relative_to(REPO)}: if the change is meant, run "
        "REWIND_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/operator/test_chart_rbac.py and commit the diff")


@pytest.mark.parametrize("name", list(RENDERS))
def test_no_wildcards_and_no_verbs_that_escalate(rendered, name):
    for d in rendered[name]:
        if d["kind"] not in ("ClusterRole", "Role"):
            continue
        assert "aggregationRule" not in d, f"{d['metadata']['name']}: an aggregated role's rules are not reviewable here"
        for rule in d["rules"]:
            fields = [*rule.get("apiGroups", []), *rule.get("resources", []), *rule.get("resourceNames", []),
                      *rule["verbs"]]
            assert not any("*" in f for f in fields), f"{d['metadata']['name']}: wildcard in {rule}"
            assert not DANGEROUS_VERBS & set(rule["verbs"]), f"{d['metadata']['name']}: {rule}"
            assert not rule.get("nonResourceURLs"), f"{d['metadata']['name']}: {rule}"
            # Nobody the chart creates a role for may write RBAC itself.
            assert "rbac.authorization.k8s.io" not in rule.get("apiGroups", []), f"{d['metadata']['name']}: {rule}"


def cluster_wide_grants(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(g["role"], r) for g in grants(docs)["grants"] if g["scope"] == "cluster" for r in g["rules"]]


@pytest.mark.parametrize("name", ["default", "namespaces"])
def test_watching_namespaces_binds_nothing_with_data_cluster_wide(rendered, name):
    docs = rendered[name]
    for role, rule in cluster_wide_grants(docs):
        resources = set(rule["resources"])
        assert not resources & NEVER_CLUSTER_WIDE, f"{role} grants {rule} cluster-wide"
        assert resources <= CLUSTER_WIDE_ALLOWED, f"{role} grants {rule} cluster-wide"
        if resources & {"mutatingadmissionpolicies", "validatingadmissionpolicies"}:
            assert rule["resourceNames"] == ["rewind-requester", "rewind-approver"], rule
        writes = set(rule["verbs"]) - {"get", "list", "watch"}
        assert not writes or (resources == {"subjectaccessreviews"} and writes == {"create"}), \
            f"{role} may {sorted(writes)} {sorted(resources)} cluster-wide"
    bindings = grants(docs)["grants"]
    assert [g["role"] for g in bindings if g["scope"] == "cluster"] == ["ClusterRole/rewind-operator-discovery"]
    expected = ["rewind-system"] if name == "default" else ["a", "b"]
    operator = [g for g in bindings if g["role"] == "ClusterRole/rewind-operator"]
    assert [g["scope"] for g in operator] == [f"namespace {n}" for n in expected]
    # The GitOps role (get, patch on Argo CD / Flux owners) with it, in the same namespaces.
    gitops = [g for g in bindings if g["role"] == "ClusterRole/rewind-operator-gitops"]
    assert [g["scope"] for g in gitops] == [f"namespace {n}" for n in expected]
    assert len(operator) + len(gitops) + 1 == len(bindings)


def test_cluster_wide_only_when_asked(rendered):
    bindings = grants(rendered["cluster-wide"])["grants"]
    assert sorted(g["role"] for g in bindings) == ["ClusterRole/rewind-operator",
                                                   "ClusterRole/rewind-operator-discovery",
                                                   "ClusterRole/rewind-operator-gitops"]
    assert all(g["scope"] == "cluster" for g in bindings)
    discovery = next(g for g in bindings if g["role"].endswith("-discovery"))
    assert any(r["resources"] == ["clusterkopfpeerings"] for r in discovery["rules"])
    for name in ("default", "namespaces"):
        assert not any("clusterkopfpeerings" in r["resources"] for _, r in cluster_wide_grants(rendered[name]))


@pytest.mark.parametrize("name", list(RENDERS))
def test_every_binding_is_the_operators_service_account(rendered, name):
    for g in grants(rendered[name])["grants"]:
        assert g["subjects"] == ["ServiceAccount rewind-system/rewind-operator"], g


def test_gitops_owner_namespaces_get_only_the_gitops_role(helm):
    docs = rbac_docs(helm, ["--set", "watchNamespaces={booking}", "--set", "gitops.ownerNamespaces={argocd,flux-system}"])
    bindings = grants(docs)["grants"]
    assert sorted(g["scope"] for g in bindings if g["role"] == "ClusterRole/rewind-operator-gitops") == \
        ["namespace argocd", "namespace booking", "namespace flux-system"]
    assert [g["scope"] for g in bindings if g["role"] == "ClusterRole/rewind-operator"] == ["namespace booking"]
    rules = next(g for g in bindings if g["role"] == "ClusterRole/rewind-operator-gitops")["rules"]
    assert all(set(r["verbs"]) == {"get", "patch"} for r in rules)


def test_the_peoples_roles(rendered):
    unbound = {u["role"]: u for u in grants(rendered["default"])["unbound"]}
    assert sorted(unbound) == sorted(["ClusterRole/rewind-requester",
                                      *(f"ClusterRole/rewind-approver-{r}" for r in APPROVAL_ROLES)])
    requester = unbound["ClusterRole/rewind-requester"]
    assert requester["labels"] == {"rewind.dev/role": "requester"}
    assert requester["rules"] == [
        {"apiGroups": ["rewind.dev"], "resources": ["rollbacks"],
         "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
        {"apiGroups": ["rewind.dev"], "resources": ["rollbackapprovals"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["rewind.dev"], "resources": ["rollbackpolicies"], "verbs": ["get"]}]
    for role in APPROVAL_ROLES:
        approver = unbound[f"ClusterRole/rewind-approver-{role}"]
        assert approver["labels"] == {"rewind.dev/role": "approver", "rewind.dev/approval-role": role}
        # What the operator asks the API server (SubjectAccessReview) before an approval counts.
        assert {"apiGroups": ["rewind.dev"], "resources": [APPROVAL_PLURAL], "resourceNames": [role],
                "verbs": [APPROVE_VERB]} in approver["rules"]
        approve_rules = [r for r in approver["rules"] if APPROVE_VERB in r["verbs"]]
        assert all(r.get("resourceNames") == [role] for r in approve_rules), approver
    # No person's role reaches status, or anything but Rollbacks and approvals, and reading the
    # namespace's policy (plan and undo preflight under it); nobody may change a policy.
    for u in unbound.values():
        for r in u["rules"]:
            assert set(r["resources"]) <= {"rollbacks", "rollbackapprovals", "rollbackpolicies"}, u
            if "rollbackpolicies" in r["resources"]:
                assert r["verbs"] == ["get"], u
