"""The Helm chart (charts/rewind), with Helm built from the Go module proxy (testbed/build-helm.sh):

- `helm lint`, and `helm template` with the default values and with a values file that sets every
  value the chart has (a test fails when values.yaml gains a key that file does not set);
- the values that are refused, refused at render time with their reason;
- the alerts (PrometheusRule) and the Grafana dashboard (a ConfigMap), off by default: every
  rewind_* series, label and label value their PromQL uses is one rewind.metrics registers in
  prometheus_client's registry and the operator writes;
- manifests/ is the chart rendered (scripts/render_manifests.py): any drift fails;
- the renders and manifests/ pass a server-side dry-run apply against the real API server (schemas,
  strict field validation, admission; stand-in ServiceMonitor and PrometheusRule CRDs where the
  cluster has none);
- `rewind run` with the args of the chart's Deployment, as the chart's ServiceAccount holding
  exactly the chart's RBAC (applied for real), rolls a Deployment back to Ready: once watching a
  list of namespaces with leader election (RoleBindings, a KopfPeering), once with clusterWide=true
  (ClusterRoleBindings; earlier tests' leftovers are cleared first).
- The test session has already applied manifests/admission.yaml and a ClusterRollbackPolicy
  `default` (tests/conftest.py): what these tests create for real is rendered with
  admissionPolicies.install=false and defaultPolicy.create=false, so nothing of the session's is
  replaced or deleted; a render-only test checks that the defaults do contain both.
The RBAC rules themselves are compared with golden files by test_chart_rbac.py.

Skipped, with the reason, only when the helm binary has not been built (`make bootstrap` builds it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import yaml
from kubernetes import client

from helpers import (
    GROUP, PLURAL, VERSION, condition, deploy_revisions, deployment_dict, get_rollback,
    kubectl_apply, rollback, rolled_out, template_of, wait_for,
)
from rewind.api.policy import SEED_POLICY, RollbackPolicySpec

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "rewind"
PEERING_CRDS = REPO / "crds" / "kopf-peering.yaml"
DIGEST = "sha256:" + "0123456789abcdef" * 4
IMAGES = ["registry.local/chart-web:1", "registry.local/chart-web:2", "registry.local/chart-web:3"]
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
PROMETHEUS_RULE_API = "monitoring.coreos.com/v1/PrometheusRule"
MONITORING_APIS = ("--api-versions", SERVICE_MONITOR_API, "--api-versions", PROMETHEUS_RULE_API)
# What an upgrade sees once the first install created the policy CRDs.
POLICY_API = ("--api-versions", "rewind.dev/v1alpha1/ClusterRollbackPolicy")
ALERTS = ["RewindRollbackFailed", "RewindRollbackStalled", "RewindRollbackMissedDeadline", "RewindHooksNotUndone",
          "RewindOperatorErrors", "RewindNoLeader"]
# Objects of a render that the rollback test creates for real: who the operator is and what it may do.
IDENTITY_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                  "KopfPeering", "ClusterKopfPeering"}
ADMISSION_KINDS = {"MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding", "ValidatingAdmissionPolicy",
                   "ValidatingAdmissionPolicyBinding"}
# The session's own cluster-scoped objects (tests/conftest.py applied them): left to it.
SESSION_OWNED = {"admissionPolicies": {"install": False}, "defaultPolicy": {"create": False}}
PEOPLE_ROLES = ["rewind-requester", "rewind-approver-devops-lead", "rewind-approver-security",
                "rewind-approver-devops-team"]
FINALIZER = "rewind.dev/finalizer"
TEST_NS_LABEL = "rewind.dev/test"       # set by the test bed's `namespace` fixture
TRACK_LABEL = "rewind.dev/track"

_spec = importlib.util.spec_from_file_location("render_manifests", REPO / "scripts" / "render_manifests.py")
render_manifests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_manifests)

# A stand-in for the Prometheus Operator's ServiceMonitor CRD, for the local control plane: the
# fields the chart sets, typed as in monitoring.coreos.com/v1 (durations with its pattern). Strict
# field validation rejects anything else. A cluster that serves the real CRD keeps it.
SERVICE_MONITOR_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              required: [selector]
              properties:
                selector:
                  type: object
                  properties:
                    matchLabels: {type: object, additionalProperties: {type: string}}
                namespaceSelector:
                  type: object
                  properties:
                    any: {type: boolean}
                    matchNames: {type: array, items: {type: string}}
                endpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port: {type: string}
                      path: {type: string}
                      interval: &duration
                        type: string
                        pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'
                      scrapeTimeout: *duration
"""

# The same for the PrometheusRule CRD: groups of rules, `for` and `interval` typed as durations,
# `expr` an int-or-string, labels and annotations string maps, as in monitoring.coreos.com/v1.
PROMETHEUS_RULE_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              properties:
                groups:
                  type: array
                  x-kubernetes-list-type: map
                  x-kubernetes-list-map-keys: [name]
                  items:
                    type: object
                    required: [name]
                    properties:
                      name: {type: string, minLength: 1}
                      interval: &duration
                        type: string
                        pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'
                      rules:
                        type: array
                        items:
                          type: object
                          required: [expr]
                          properties:
                            alert: {type: string}
                            record: {type: string}
                            expr: {x-kubernetes-int-or-string: true, anyOf: [{type: integer}, {type: string}]}
                            for: *duration
                            keep_firing_for: *duration
                            labels: {type: object, additionalProperties: {type: string}}
                            annotations: {type: object, additionalProperties: {type: string}}
"""


@pytest.fixture(scope="module")
def harness(request):
    """tests/conftest.py, as pytest loaded it (`Operator`, `_service_account_kubeconfig`); a plain
    `import conftest` here would find tests/operator/conftest.py."""
    root = (REPO / "tests" / "conftest.py").resolve()
    for plugin in request.config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) and Path(plugin.__file__).resolve() == root:
            return plugin
    raise AssertionError("tests/conftest.py is not loaded")


@pytest.fixture(scope="module")
def helm() -> Path:
    path = render_manifests.find_helm(build=False)
    if path is None:
        pytest.skip(f"helm {render_manifests.helm_version()} is not built: run `bash testbed/build-helm.sh` "
                    "(`make bootstrap` does)")
    return path


def template(helm: Path, values: dict | None = None, *args: str, release: str = "rewind",
             namespace: str = "rewind-system", tmp_path: Path | None = None) -> list[dict]:
    extra = list(args)
    if values is not None:
        assert tmp_path is not None
        f = tmp_path / f"values-{secrets.token_hex(3)}.yaml"
        f.write_text(yaml.safe_dump(values))
        extra += ["--values", str(f)]
    text = render_manifests.helm_template(helm, *extra, release=release, namespace=namespace)
    return [d for d in yaml.safe_load_all(text) if d]


def refused(helm: Path, *args: str) -> str:
    out = subprocess.run([str(helm), "template", "rewind", str(CHART), *args], capture_output=True, text=True)
    assert out.returncode != 0, f"helm template {' '.join(args)} rendered:\n{out.stdout[:2000]}"
    return out.stderr


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} in the render"
    return found[0]


def container(docs: list[dict]) -> dict:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def leaf_paths(d: dict, prefix: tuple = ()) -> set[tuple]:
    paths = set()
    for k, v in d.items():
        if isinstance(v, dict) and v:
            paths |= leaf_paths(v, prefix + (k,))
        else:
            paths.add(prefix + (k,))
    return paths


def every_value(watch: list[str], release: str = "rewind", dashboard_namespace: str = "monitoring") -> dict:
    """A values file that sets every value of the chart, most of them away from their default."""
    return {
        "image": {"repository": "registry.example.com/sre/rewind", "tag": "9.9.9", "digest": DIGEST,
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "nameOverride": "rwd",
        "fullnameOverride": "",
        "watchNamespaces": watch,
        "clusterWide": False,
        "gitops": {"ownerNamespaces": watch[-1:], "argocdNamespace": "gitops-system"},   # owners in a watched one
        "replicas": 2,
        "leaderElection": {"enabled": True, "peeringName": "rewind-peers", "lifetimeSeconds": 7},
        "logFormat": "json",
        "jobImage": "registry.example.com/db/postgres@sha256:" + "b" * 64,
        "verbose": True,
        "env": [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"}],
        "serviceAccount": {"create": True, "name": "rewind-sa", "annotations": {"example.com/owner": "sre"}},
        "rbac": {"create": True},
        "approvalRoles": ["devops-lead", "security", "release-manager"],
        "crds": {"install": True, "keep": True},
        "admissionPolicies": {"install": True},
        "defaultPolicy": {"create": True, "egress": [{"cidr": "10.0.0.0/8"},
                                                     {"host": "hooks.slack.com", "ports": [443]}]},
        "ports": {"health": 9440},
        "livenessProbe": {"initialDelaySeconds": 11, "periodSeconds": 21, "timeoutSeconds": 6,
                          "failureThreshold": 4},
        "readinessProbe": {"initialDelaySeconds": 12, "periodSeconds": 13, "timeoutSeconds": 7,
                           "failureThreshold": 5},
        "metrics": {"enabled": True, "port": 9441,
                    "service": {"type": "NodePort", "annotations": {"example.com/scrape": "yes"}},
                    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"},
                                       "interval": "15s", "scrapeTimeout": "5s"},
                    "prometheusRule": {
                        "enabled": True, "labels": {"release": "prometheus"},
                        "selector": 'job="ops-rwd-operator-metrics"', "alertLabels": {"team": "sre"},
                        "alerts": {
                            "RewindRollbackFailed": {"enabled": True, "for": "1m", "severity": "page"},
                            "RewindRollbackStalled": {"enabled": True, "for": "3m", "severity": "page"},
                            "RewindRollbackMissedDeadline": {"enabled": True, "for": "0s", "severity": "ticket"},
                            "RewindHooksNotUndone": {"enabled": True, "for": "0s", "severity": "page"},
                            "RewindOperatorErrors": {"enabled": True, "for": "15m", "severity": "ticket"},
                            "RewindNoLeader": {"enabled": False, "for": "1m", "severity": "page"}}},
                    "dashboard": {"enabled": True, "namespace": dashboard_namespace,
                                  "labels": {"grafana_dashboard": "1", "example.com/team": "sre"},
                                  "annotations": {"grafana_folder": "Rewind"}}},
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 20001, "runAsGroup": 20002,
                               "seccompProfile": {"type": "RuntimeDefault"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "podAnnotations": {"example.com/team": "sre"},
        "podLabels": {"example.com/tier": "control"},
        "priorityClassName": "rewind-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
                "matchLabels": {"app.kubernetes.io/instance": release}}}}]}},
    }


# --- lint and render ----------------------------------------------------------------------------

def test_helm_lint(helm, tmp_path):
    out = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # `helm lint` cannot be told that the ServiceMonitor, PrometheusRule and ClusterRollbackPolicy
    # APIs exist; everything else of the full file.
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump(every_value(["booking", "payments"])))
    out = subprocess.run([str(helm), "lint", "--strict", str(CHART), "--values", str(f), "--set",
                          "metrics.serviceMonitor.enabled=false,metrics.prometheusRule.enabled=false,"
                          "defaultPolicy.egress=null"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_default_values_render_an_operator_confined_to_its_namespace(helm):
    docs = template(helm)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ServiceAccount", *["CustomResourceDefinition"] * 4, *["ClusterRole"] * 7,
                            "ClusterRoleBinding", *["RoleBinding"] * 2, "Service", "Deployment", *ADMISSION_KINDS,
                            "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]), kinds
    # (The default ClusterRollbackPolicy waits for the CRD this render installs: see below.)
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["name"] == "rewind-operator"
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    c = container(docs)
    assert c["image"] == "rewind:0.1.0"
    # No namespaces listed, not clusterWide: the release's namespace only.
    assert c["args"] == ["run", "--liveness=http://0.0.0.0:8080/healthz", "--metrics-address=:8081",
                         "--log-format=text", "--job-image=postgres:16", "--tool-image=rewind:0.1.0",
                         "--argocd-namespace=argocd", "--namespace=rewind-system"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, c[probe]
    assert {"name": "health", "containerPort": 8080} in c["ports"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"] == "rewind-operator"
    crds = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    assert sorted(crds) == ["clusterrollbackpolicies.rewind.dev", "rollbackapprovals.rewind.dev",
                            "rollbackpolicies.rewind.dev", "rollbacks.rewind.dev"]
    crd = crds["rollbacks.rewind.dev"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    # The chart's CRD is crds/'s, with only its labels and the annotation added.
    source = yaml.safe_load((REPO / "crds" / "rollbacks.rewind.dev.yaml").read_text())
    assert crd["spec"] == source["spec"]
    subject = [{"kind": "ServiceAccount", "name": "rewind-operator", "namespace": "rewind-system"}]
    (crb,) = by_kind(docs, "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == "rewind-operator-discovery" and crb["subjects"] == subject
    rb, gitops = by_kind(docs, "RoleBinding")
    assert rb["metadata"]["namespace"] == "rewind-system" and rb["subjects"] == subject
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "rewind-operator"}
    # With it, in the same namespace: get/patch on Argo CD and Flux owners (suspending their sync).
    assert gitops["metadata"]["namespace"] == "rewind-system" and gitops["subjects"] == subject
    assert gitops["roleRef"]["name"] == "rewind-operator-gitops"
    # The roles for people, named as other tests and the README expect, bound by nobody.
    roles = {d["metadata"]["name"] for d in by_kind(docs, "ClusterRole")}
    assert roles == {"rewind-operator", "rewind-operator-discovery", "rewind-operator-gitops", *PEOPLE_ROLES}
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics",
                                         "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # Off by default, even where the Prometheus Operator's APIs are served.
    assert not {"ServiceMonitor", "PrometheusRule", "ConfigMap"} & {d["kind"] for d in template(helm, None, *MONITORING_APIS)}


def test_a_values_file_that_sets_every_value(helm, tmp_path):
    values = every_value(["booking", "payments"], release="ops")
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    given = leaf_paths(values)
    missing = {p for p in leaf_paths(defaults) if not any(g[:len(p)] == p for g in given)}
    assert not missing, f"values.yaml has values this test does not set: {sorted(missing)}"

    docs = template(helm, values, *MONITORING_APIS, *POLICY_API, release="ops", namespace="ops-system",
                    tmp_path=tmp_path)
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["name"] == "ops-rwd-operator"
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"example.com/team": "sre"}
    assert pod["metadata"]["labels"]["example.com/tier"] == "control"
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "rwd"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "rewind-sa"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["priorityClassName"] == "rewind-critical"
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    assert spec["affinity"] == values["affinity"]
    assert spec["securityContext"] == values["podSecurityContext"]
    c = container(docs)
    assert c["image"] == f"registry.example.com/sre/rewind@{DIGEST}"       # the digest wins over the tag
    assert c["imagePullPolicy"] == "Always"
    assert c["args"] == ["run", "--liveness=http://0.0.0.0:9440/healthz", "--metrics-address=:9441",
                         "--log-format=json", f"--job-image={values['jobImage']}",
                         f"--tool-image=registry.example.com/sre/rewind@{DIGEST}",   # the operator's own
                         f"--argocd-namespace={values['gitops']['argocdNamespace']}", "--namespace=booking",
                         "--namespace=payments",
                         "--peering=rewind-peers", "--peering-lifetime=7", "--verbose"]
    assert c["env"] == values["env"]
    assert c["ports"] == [{"name": "health", "containerPort": 9440}, {"name": "metrics", "containerPort": 9441}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe] == {"httpGet": {"path": "/healthz", "port": "health"}, **values[probe]}
    assert c["resources"] == values["resources"]
    assert c["securityContext"] == values["securityContext"]

    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == "rewind-sa" and sa["metadata"]["namespace"] == "ops-system"
    assert sa["metadata"]["annotations"] == {"example.com/owner": "sre"}
    # RBAC: the operator's ClusterRole bound in each watched namespace only; discovery cluster-wide.
    subject = [{"kind": "ServiceAccount", "name": "rewind-sa", "namespace": "ops-system"}]
    role_bindings = [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] == "ops-rwd-operator"]
    assert sorted(b["metadata"]["namespace"] for b in role_bindings) == ["booking", "payments"]
    assert all(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": "ops-rwd-operator"} and b["subjects"] == subject for b in role_bindings)
    # The GitOps role (get, patch on Argo CD / Flux owners): the same namespaces, the owners' once.
    gitops = [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] == "ops-rwd-operator-gitops"]
    assert sorted(b["metadata"]["namespace"] for b in gitops) == ["booking", "payments"]
    assert len(gitops) + len(role_bindings) == len(by_kind(docs, "RoleBinding"))
    (crb,) = by_kind(docs, "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == "ops-rwd-operator-discovery" and crb["subjects"] == subject
    assert {d["metadata"]["name"] for d in by_kind(docs, "ClusterRole")} == {
        "ops-rwd-operator", "ops-rwd-operator-discovery", "ops-rwd-operator-gitops", "ops-rwd-requester",
        "ops-rwd-approver-devops-lead",
        "ops-rwd-approver-security", "ops-rwd-approver-release-manager"}
    approver = next(d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("release-manager"))
    assert {"apiGroups": ["rewind.dev"], "resources": ["rollbackapprovals"], "resourceNames": ["release-manager"],
            "verbs": ["approve"]} in approver["rules"]
    assert one(docs, "ClusterRollbackPolicy")["spec"]["egress"] == values["defaultPolicy"]["egress"]
    peerings = by_kind(docs, "KopfPeering")
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings) == [
        ("booking", "rewind-peers"), ("payments", "rewind-peers")]
    assert not by_kind(docs, "ClusterKopfPeering")

    service = one(docs, "Service")
    assert service["spec"]["type"] == "NodePort"
    assert service["metadata"]["annotations"] == {"example.com/scrape": "yes"}
    assert service["spec"]["ports"][0]["port"] == 9441
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                             "scrapeTimeout": "5s"}]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1,
                           "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}}
    crds = by_kind(docs, "CustomResourceDefinition")
    assert len(crds) == 4 and all(d["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"} for d in crds)

    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["name"] == "ops-rwd-operator" and rule["metadata"]["namespace"] == "ops-system"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert list(rules) == ALERTS[:-1], "RewindNoLeader is disabled"
    assert {a: (r["for"], r["labels"]) for a, r in rules.items()} == {
        a: (v["for"], {"severity": v["severity"], "team": "sre"})
        for a, v in values["metrics"]["prometheusRule"]["alerts"].items() if v["enabled"]}
    for r in rules.values():
        for selector in re.findall(r"rewind_[a-z_]+(\{[^}]*\})?", r["expr"]):
            assert 'job="ops-rwd-operator-metrics"' in selector, r["expr"]
    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["name"] == "ops-rwd-dashboard"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert {"grafana_dashboard": "1", "example.com/team": "sre"}.items() <= dashboard["metadata"]["labels"].items()
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Rewind"}
    assert json.loads(dashboard["data"]["rewind.json"]) == json.loads((CHART / "files" / "dashboard.json").read_text())


def test_the_defaults_ship_the_admission_policies_and_the_default_policy(helm, tmp_path):
    docs = template(helm, None, *POLICY_API)
    admission = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in ADMISSION_KINDS}
    assert {("MutatingAdmissionPolicy", "rewind-requester"), ("MutatingAdmissionPolicy", "rewind-approver"),
            ("ValidatingAdmissionPolicy", "rewind-requester")} <= admission, admission
    policy = one(docs, "ClusterRollbackPolicy")
    assert policy["metadata"]["name"] == "default"
    # Exactly the matrix the operator applies without a policy object (SEED_POLICY), egress empty.
    assert RollbackPolicySpec.model_validate(policy["spec"]) == SEED_POLICY
    assert policy["spec"]["egress"] == [] and policy["spec"]["selfApproval"] is False

    egress = [{"cidr": "10.0.0.0/8"}, {"host": "hooks.slack.com", "ports": [443]}]
    docs = template(helm, {"defaultPolicy": {"egress": egress}}, *POLICY_API, tmp_path=tmp_path)
    spec = one(docs, "ClusterRollbackPolicy")["spec"]
    assert spec["egress"] == egress
    assert RollbackPolicySpec.model_validate(spec).model_copy(update={"egress": []}) == SEED_POLICY

    # Where the CRDs come from elsewhere (crds.install=false, as in manifests/), they are served first.
    assert one(template(helm, None, "--set", "crds.install=false"), "ClusterRollbackPolicy")["spec"] == policy["spec"]
    # The install that creates the CRD cannot create the policy (test_the_default_policy_with_helm):
    # left to the next upgrade, or refused when it carries egress.
    assert not by_kind(template(helm), "ClusterRollbackPolicy")
    assert "defaultPolicy.egress is set, but the cluster does not serve ClusterRollbackPolicy yet" in refused(
        helm, "--set", "defaultPolicy.egress[0].cidr=10.0.0.0/8")

    # The session's switches, as the cluster tests below use them: neither object is rendered.
    docs = template(helm, SESSION_OWNED, *POLICY_API, tmp_path=tmp_path)
    assert not {d["kind"] for d in docs} & (ADMISSION_KINDS | {"ClusterRollbackPolicy"})


# --- alerts and dashboard -------------------------------------------------------------------------

# Labels that Prometheus puts on every scraped series (the target's), beside the operator's own.
TARGET_LABELS = {"job", "namespace", "pod", "instance", "service", "endpoint", "container"}


def operator_metrics() -> dict[str, set[str]]:
    """Every series name the operator can expose, with its label names: the rewind_* collectors
    that importing rewind.metrics registers in prometheus_client's REGISTRY, named as the
    exposition names them (a counter's _total, a histogram's _bucket (with le), _sum and _count)."""
    import rewind.metrics as operator_metrics_module
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    label_names = {m._name: set(m._labelnames) for m in vars(operator_metrics_module).values()
                   if isinstance(m, MetricWrapperBase)}
    names: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("rewind_"):
            continue
        labels = label_names[family.name]
        if family.type == "counter":
            names[family.name + "_total"] = labels
        elif family.type == "histogram":
            names.update({family.name + "_bucket": labels | {"le"}, family.name + "_sum": labels,
                          family.name + "_count": labels})
        else:
            assert family.type == "gauge", family.type
            names[family.name] = labels
    assert "rewind_rollbacks_finished_total" in names and "rewind_leader" in names, sorted(names)
    return names


def check_promql(expr: str, metrics: dict[str, set[str]]) -> set[str]:
    """Asserts that `expr` names only series the operator exposes, filters each on its labels (or
    the target's) with values the operator writes, and groups by labels those series have. Returns
    the names."""
    from rewind.api import conditions
    from rewind.api.v1alpha1 import Phase

    values = {"phase": {p.value for p in Phase}, "within": {"true", "false"},
              "reason": {v for k, v in vars(conditions).items() if k.isupper() and isinstance(v, str)}}
    used = set(re.findall(r"\brewind_[a-z0-9_]+", expr))
    unknown = used - set(metrics)
    assert not unknown, f"not metrics of the operator: {sorted(unknown)} in {expr}"
    for name, matchers in re.findall(r"\b(rewind_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label, op, value in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
            assert label in metrics[name] | TARGET_LABELS, f"{name} has no label {label}: {expr}"
            if label in values and "$" not in value:
                words = set(value.split("|")) if op in ("=~", "!~") else {value}
                assert words <= values[label], f"{name}{{{label}}}: {words - values[label]} never written: {expr}"
    known = set().union(*(metrics[n] for n in used), TARGET_LABELS) if used else TARGET_LABELS
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (w.strip() for w in clause.split(","))):
            assert label in known, f"grouped by {label}, which none of {sorted(used)} has: {expr}"
    return used


def test_the_alerts_and_the_dashboard_use_only_the_operators_metrics(helm, tmp_path):
    metrics = operator_metrics()
    docs = template(helm, None, "--set", "metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true",
                    *MONITORING_APIS)
    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert [r["alert"] for r in rules] == ALERTS
    used = set()
    for r in rules:
        used |= check_promql(r["expr"], metrics)
        assert r["labels"]["severity"] in ("critical", "warning")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        assert "kubectl " in r["annotations"]["description"], f"{r['alert']} does not say what to run"
    by_alert = {r["alert"]: r for r in rules}
    for alert in ("RewindRollbackFailed", "RewindRollbackStalled", "RewindRollbackMissedDeadline",
                  "RewindHooksNotUndone"):
        assert "kubectl rewind describe" in by_alert[alert]["annotations"]["description"], alert
    assert 'phase=~"Failed|Interrupted"' in by_alert["RewindRollbackFailed"]["expr"]
    assert "rewind_rollbacks_overdue" in by_alert["RewindRollbackStalled"]["expr"]
    assert 'within="false"' in by_alert["RewindRollbackMissedDeadline"]["expr"]
    assert 'reason="HookFailed"' in by_alert["RewindHooksNotUndone"]["expr"]
    assert "rewind_operator_errors_total" in by_alert["RewindOperatorErrors"]["expr"]
    assert "absent(rewind_leader)" in by_alert["RewindNoLeader"]["expr"]
    assert {a: r["for"] for a, r in by_alert.items()} == {
        "RewindRollbackFailed": "0m", "RewindRollbackStalled": "5m", "RewindRollbackMissedDeadline": "0m",
        "RewindHooksNotUndone": "0m", "RewindOperatorErrors": "10m", "RewindNoLeader": "2m"}
    # The counters that are labelled when a rollback ends are born at 1: each event alert also
    # catches a series that was not there 10 minutes ago, or it would miss the first of each kind.
    for alert in ("RewindRollbackFailed", "RewindRollbackMissedDeadline", "RewindHooksNotUndone"):
        assert " unless " in by_alert[alert]["expr"] and "offset 10m" in by_alert[alert]["expr"], alert

    dashboard_map = one(docs, "ConfigMap")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["rewind.json"])
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    exprs = [variables["job"]["definition"]]
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            exprs.append(target["expr"])
    assert len(ids) == len(set(ids)), "panel ids repeat"
    shown = set()
    for expr in exprs:
        shown |= check_promql(expr, metrics)
    # What the dashboard is for: rollbacks by phase, outcomes, time to restore against the
    # targets, steps, verification, notifications, errors and the leader.
    assert {"rewind_rollbacks", "rewind_rollbacks_finished_total", "rewind_time_to_restore_seconds_bucket",
            "rewind_severity_target_seconds", "rewind_step_duration_seconds_bucket",
            "rewind_verification_outcomes_total", "rewind_notification_failures_total",
            "rewind_operator_errors_total", "rewind_leader", "rewind_rollbacks_overdue"} <= shown, shown

    # One alert switched off leaves the others as they were.
    docs = template(helm, None, "--set", "metrics.prometheusRule.enabled=true,"
                    "metrics.prometheusRule.alerts.RewindNoLeader.enabled=false", *MONITORING_APIS)
    assert [r["alert"] for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]] == ALERTS[:-1]
    assert not by_kind(docs, "ConfigMap")


def test_switches_leave_their_objects_out(helm, tmp_path):
    docs = template(helm, None, "--set", "rbac.create=false,serviceAccount.create=false,"
                    "serviceAccount.name=platform-sa,crds.install=false,metrics.enabled=false,"
                    "image.tag=1.2.3,fullnameOverride=ops,admissionPolicies.install=false,"
                    "defaultPolicy.create=false")
    assert sorted(d["kind"] for d in docs) == ["Deployment"]
    c = container(docs)
    assert c["image"] == "rewind:1.2.3"
    assert not any(a.startswith("--metrics-address") for a in c["args"])
    assert [p["name"] for p in c["ports"]] == ["health"]
    assert one(docs, "Deployment")["metadata"]["name"] == "ops-operator"
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-sa"

    docs = template(helm, None, "--set", "crds.keep=false,leaderElection.enabled=true,replicas=2,"
                    "podDisruptionBudget.enabled=true")
    assert all("annotations" not in d["metadata"] for d in by_kind(docs, "CustomResourceDefinition"))
    peering = one(docs, "KopfPeering")
    assert (peering["metadata"]["namespace"], peering["metadata"]["name"]) == ("rewind-system", "rewind")
    assert not by_kind(docs, "ClusterKopfPeering")
    assert "--peering=rewind" in container(docs)["args"]
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    # Cluster-wide, only when asked: no --namespace, the operator's role bound by a
    # ClusterRoleBinding, a ClusterKopfPeering.
    docs = template(helm, None, "--set", "clusterWide=true,leaderElection.enabled=true")
    assert not [a for a in container(docs)["args"] if a.startswith("--namespace")]
    assert sorted(b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")) == [
        "rewind-operator", "rewind-operator-discovery", "rewind-operator-gitops"]
    assert not by_kind(docs, "RoleBinding") and not by_kind(docs, "KopfPeering")
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "rewind"
    # No approval roles: the requester's role only.
    docs = template(helm, None, "--set", "approvalRoles=null")
    assert {d["metadata"]["name"] for d in by_kind(docs, "ClusterRole")} == {
        "rewind-operator", "rewind-operator-discovery", "rewind-operator-gitops", "rewind-requester"}
    # A release name without "rewind" in it gets it appended.
    docs = template(helm, release="ops")
    assert one(docs, "Deployment")["metadata"]["name"] == "ops-rewind-operator"


def test_refused_values_say_why(helm):
    assert "more than one replica needs leaderElection.enabled=true" in refused(helm, "--set", "replicas=2")
    assert "needs the ServiceMonitor CRD" in refused(helm, "--set", "metrics.serviceMonitor.enabled=true")
    assert "needs the PrometheusRule CRD" in refused(helm, "--set", "metrics.prometheusRule.enabled=true")
    assert "metrics.prometheusRule.enabled needs metrics.enabled=true" in refused(
        helm, "--set", "metrics.prometheusRule.enabled=true,metrics.enabled=false", *MONITORING_APIS)
    assert "metrics.dashboard.enabled needs metrics.enabled=true" in refused(
        helm, "--set", "metrics.dashboard.enabled=true,metrics.enabled=false")
    assert "every alert is disabled" in refused(
        helm, "--set", "metrics.prometheusRule.enabled=true," + ",".join(
            f"metrics.prometheusRule.alerts.{a}.enabled=false" for a in ALERTS), *MONITORING_APIS)
    assert "/metrics/prometheusRule/alerts/RewindRollbackStalled/for" in refused(
        helm, "--set-string", "metrics.prometheusRule.alerts.RewindRollbackStalled.for=5min")
    assert "RewindTypo" in refused(helm, "--set", "metrics.prometheusRule.alerts.RewindTypo.enabled=true")
    assert "needs metrics.enabled=true" in refused(
        helm, "--set", "metrics.serviceMonitor.enabled=true,metrics.enabled=false",
        "--api-versions", SERVICE_MONITOR_API)
    assert "serviceAccount.name" in refused(helm, "--set", "serviceAccount.create=false")
    assert "/image/digest" in refused(helm, "--set", "image.digest=latest")
    assert "/watchNamespaces/0" in refused(helm, "--set", "watchNamespaces[0]=Not_A_Namespace")
    assert "/logFormat" in refused(helm, "--set", "logFormat=yaml")
    assert "replicaCount" in refused(helm, "--set", "replicaCount=2")       # unknown keys are errors
    assert "must differ" in refused(helm, "--set", "metrics.port=8080")
    assert "clusterWide=true watches every namespace" in refused(
        helm, "--set", "clusterWide=true,watchNamespaces={booking}")
    assert "/approvalRoles/0" in refused(helm, "--set", "approvalRoles[0]=Security")
    assert "/defaultPolicy/egress/0" in refused(helm, "--set", "defaultPolicy.egress[0].port=443")


def test_manifests_are_the_chart_rendered(helm):
    for path, text in render_manifests.render(helm).items():
        assert path.read_text() == text, \
            f"{path.relative_to(REPO)} differs from the chart's render: run `make manifests`"


def test_manifests_start_the_operator_as_the_shipped_install_test_reads_them():
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "operator.yaml").read_text()) if d]
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert c["args"][:2] == ["run", "--liveness=http://0.0.0.0:8080/healthz"]
    assert "command" not in c
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- against the API server ---------------------------------------------------------------------

def apply_crds(cluster, text: str | None = None, path: Path | None = None) -> None:
    args = ["apply", "--server-side", "--force-conflicts"]
    args += ["-f", str(path)] if path else ["-f", "-"]
    cluster.kubectl(*args, input=text)
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(text if text else path.read_text()) if d]
    for name in names:
        wait_for(f"CRD {name} established", lambda n=name: cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=10s", f"crd/{n}", check=False).returncode == 0,
            timeout=60)


def dry_run(cluster, docs_or_text) -> None:
    text = docs_or_text if isinstance(docs_or_text, str) else yaml.safe_dump_all(docs_or_text)
    out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--validate=strict",
                          "--force-conflicts", "-f", "-", input=text, check=False)
    assert out.returncode == 0, f"the API server refused it:\n{out.stderr}\n{out.stdout}"
    assert out.stdout.strip(), "nothing was applied"


@pytest.fixture
def namespaces(api_client):
    """Factory: more fresh namespaces (labelled as the test bed's), deleted at teardown."""
    core = client.CoreV1Api(api_client)
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"t-chart-{prefix}-{secrets.token_hex(3)}"
        core.create_namespace({"metadata": {"name": name, "labels": {"rewind.dev/test": "true"}}})
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            core.delete_namespace(name)
        except client.ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture
def service_monitor_api(cluster):
    """The ServiceMonitor API: the cluster's own, or the stand-in CRD for as long as the test runs."""
    if cluster.kubectl("get", "crd", "servicemonitors.monitoring.coreos.com", check=False).returncode == 0:
        yield
        return
    apply_crds(cluster, SERVICE_MONITOR_CRD)
    wait_for("servicemonitors served", lambda: cluster.kubectl(
        "get", "servicemonitors", "-A", check=False).returncode == 0, timeout=30)
    yield
    cluster.kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com", "--wait=false", check=False)


@pytest.fixture
def prometheus_rule_api(cluster):
    """The PrometheusRule API: the cluster's own, or the stand-in CRD for as long as the test runs."""
    if cluster.kubectl("get", "crd", "prometheusrules.monitoring.coreos.com", check=False).returncode == 0:
        yield
        return
    apply_crds(cluster, PROMETHEUS_RULE_CRD)
    wait_for("prometheusrules served", lambda: cluster.kubectl(
        "get", "prometheusrules", "-A", check=False).returncode == 0, timeout=30)
    yield
    cluster.kubectl("delete", "crd", "prometheusrules.monitoring.coreos.com", "--wait=false", check=False)


@pytest.fixture
def peering_crds(cluster):
    """kopf's peering CRDs (as the chart's crds/ installs them). Left installed: the same objects
    the high-availability test installs."""
    apply_crds(cluster, path=PEERING_CRDS)
    wait_for("kopfpeerings served", lambda: cluster.kubectl(
        "get", "kopfpeerings", "-A", check=False).returncode == 0, timeout=30)


@pytest.mark.cluster
def test_the_renders_and_manifests_pass_a_server_side_dry_run(cluster, helm, tmp_path, namespace, namespaces,
                                                              rollback_crd, service_monitor_api,
                                                              prometheus_rule_api, peering_crds, api_client):
    release_ns, second = namespaces("release"), namespaces("watched")
    # With the policy CRD served (as on an upgrade): the default policy passes its schema too.
    dry_run(cluster, template(helm, None, *POLICY_API, namespace=release_ns))
    # Every value, the dashboard's ConfigMap in another namespace (as for a Grafana sidecar's).
    full = template(helm, every_value([namespace, second], release="ops", dashboard_namespace=second),
                    *MONITORING_APIS, *POLICY_API, release="ops", namespace=release_ns, tmp_path=tmp_path)
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap", "PodDisruptionBudget", "KopfPeering",
            "RoleBinding"} <= {d["kind"] for d in full}
    dry_run(cluster, full)
    # The PrometheusRule with every alert, as the defaults render it.
    dry_run(cluster, by_kind(template(helm, None, "--set", "metrics.prometheusRule.enabled=true",
                                      *MONITORING_APIS, namespace=release_ns), "PrometheusRule"))

    # manifests/ as a user applies them: the Namespace it creates, and the watched one (which the
    # user creates first), must exist for the dry run of what goes into them (a dry run creates
    # nothing).
    core = client.CoreV1Api(api_client)
    created = []
    for name in (render_manifests.NAMESPACE, render_manifests.WATCHED):
        try:
            core.read_namespace(name)
        except client.ApiException as e:
            if e.status != 404:
                raise
            core.create_namespace({"metadata": {"name": name}})
            created.append(name)
    try:
        for path in sorted((REPO / "manifests").rglob("*.yaml")):
            dry_run(cluster, path.read_text())
    finally:
        for name in created:
            core.delete_namespace(name)


@pytest.mark.cluster
def test_the_default_policy_with_helm(cluster, helm, tmp_path):
    """`helm install` and `helm upgrade` for real, of the chart's policy CRDs and its default policy
    only, their API group renamed (rewind.dev -> policytest.rewind.example) so that the session's
    CRDs and ClusterRollbackPolicy stay untouched. Helm builds every object of an install before it
    creates any, so the install that creates the CRD cannot create the policy: a fresh install
    leaves it to the next upgrade, and refuses egress it could not apply."""
    group = "policytest.rewind.example"
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("crds"))
    for f in (chart / "templates").iterdir():
        if f.name in ("crd-policies.yaml", "policy.yaml", "_helpers.tpl", "NOTES.txt"):
            f.write_text(f.read_text().replace("rewind.dev", group))
        else:
            f.unlink()
    kube = {"KUBECONFIG": str(cluster.kubeconfig), "HOME": str(tmp_path), "PATH": os.environ.get("PATH", "")}

    def run_helm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(helm), *args, str(chart), "--namespace", "default"], capture_output=True,
                              text=True, env=kube, timeout=120)

    def egress() -> list | None:
        got = cluster.kubectl("get", f"clusterrollbackpolicies.{group}", "default", "-o", "json", check=False)
        return json.loads(got.stdout)["spec"].get("egress") if got.returncode == 0 else None

    release = f"policytest-{secrets.token_hex(3)}"
    try:
        refused_install = run_helm("install", release, "--set", "defaultPolicy.egress[0].cidr=10.0.0.0/8")
        assert refused_install.returncode != 0
        assert "defaultPolicy.egress is set, but the cluster does not serve ClusterRollbackPolicy yet" in \
            refused_install.stderr
        installed = run_helm("install", release)
        assert installed.returncode == 0, installed.stderr
        assert "created by the next `helm upgrade`" in installed.stdout
        assert egress() is None, "the first install created the policy"
        upgraded = run_helm("upgrade", release)
        assert upgraded.returncode == 0, upgraded.stderr
        assert egress() == []
        upgraded = run_helm("upgrade", release, "--set", "defaultPolicy.egress[0].cidr=10.0.0.0/8")
        assert upgraded.returncode == 0, upgraded.stderr
        assert egress() == [{"cidr": "10.0.0.0/8"}]
    finally:
        subprocess.run([str(helm), "uninstall", release, "--namespace", "default"], capture_output=True,
                       env=kube, timeout=120)
        cluster.kubectl("delete", f"clusterrollbackpolicies.{group}", "--all", "--ignore-not-found", check=False)
        for plural in ("rollbackpolicies", "clusterrollbackpolicies", "rollbackapprovals"):
            cluster.kubectl("delete", "crd", f"{plural}.{group}", "--ignore-not-found", "--wait=false", check=False)


# --- the operator under exactly the chart's identity --------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_args(args: list[str]) -> tuple[list[str], int, int | None]:
    """The chart's args with the liveness and metrics ports moved to free ones (this machine is
    shared), everything else as rendered. Returns them, the liveness port and the metrics port."""
    health, metrics = free_port(), None
    out = []
    for a in args:
        if a.startswith("--liveness="):
            url = urlsplit(a.split("=", 1)[1])
            a = "--liveness=" + urlunsplit(url._replace(netloc=f"{url.hostname}:{health}"))
        elif a.startswith("--metrics-address="):
            metrics = free_port()
            a = f"--metrics-address=127.0.0.1:{metrics}"
        out.append(a)
    return out, health, metrics


def wait_live(op, health: int) -> None:
    """Until the operator's liveness endpoint (on local port `health`) answers 200; fails at once
    if the process exited."""
    def answers() -> bool:
        assert op.proc.poll() is None, f"the operator exited ({op.proc.returncode}):\n{op.output()[-3000:]}"
        try:
            return httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the operator's liveness endpoint", answers, timeout=90)


def log_errors(text: str) -> list[str]:
    bad = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                bad.append(line)        # --log-format json: every log line is JSON
                continue
            if record.get("level") in ("ERROR", "CRITICAL") or record.get("exception"):
                bad.append(line)
        elif " ERROR " in line or "Traceback" in line or " CRITICAL " in line:
            bad.append(line)
    return bad


# A cluster-wide operator sees every namespace. The tests run one at a time and each namespaced
# operator is stopped when its test ends, but Rollbacks of finished tests stay behind: their
# namespaces are deleted when the test ends, and kopf's finalizer holds each Rollback (and so the
# namespace, Terminating) once no operator runs. Before the cluster-wide operator starts, those
# leftovers are removed (finalizer stripped, deleted) so that it cannot act on another test's
# objects; a Rollback or tracked Secret outside the test namespaces (an existing cluster in use)
# skips the test.

def other_operators() -> list[str]:
    """Operators this pytest process started that are still alive (there should be none)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and "rewind" in cmd and " run" in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def clear_leftovers(api_client, mine: str) -> list[str]:
    """Removes the Rollbacks of finished tests (other test namespaces) so the cluster-wide
    operator cannot pick them up, and waits until the tracked Secrets of finished tests are gone
    with their namespaces. Skips the test if any are outside the test namespaces. Returns what
    was removed."""
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)

    def is_test_ns(ns: str) -> bool:
        try:
            labels = core.read_namespace(ns).metadata.labels or {}
        except client.ApiException as e:
            if e.status == 404:
                return True     # gone already; what was in it goes with it
            raise
        return labels.get(TEST_NS_LABEL) == "true"

    rollbacks = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    foreign = [rb for rb in rollbacks if rb["metadata"]["namespace"] != mine]
    outside = [f"{rb['metadata']['namespace']}/{rb['metadata']['name']}" for rb in foreign
               if not is_test_ns(rb["metadata"]["namespace"])]
    tracked = [s for s in core.list_secret_for_all_namespaces(
        label_selector=f"{TRACK_LABEL}=true").items if s.metadata.namespace != mine]
    outside += [f"Secret {s.metadata.namespace}/{s.metadata.name}" for s in tracked
                if not is_test_ns(s.metadata.namespace)]
    if outside:
        pytest.skip("a cluster-wide operator here would act on Rollbacks or tracked Secrets that "
                    f"belong to no test: {', '.join(outside[:5])}")

    removed = []
    for rb in foreign:
        meta = rb["metadata"]
        ns, name = meta["namespace"], meta["name"]
        removed.append(f"{ns}/{name} (phase {(rb.get('status') or {}).get('phase')}, "
                       f"{'being deleted' if meta.get('deletionTimestamp') else 'not deleted'})")
        rest = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
        try:
            custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                                  {"metadata": {"finalizers": rest or None}})
            custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except client.ApiException as e:
            if e.status != 404:
                raise
    wait_for("no Rollback outside the test's namespace", lambda: not [
        rb for rb in custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        if rb["metadata"]["namespace"] != mine], timeout=60)
    # Tracked Secrets of finished tests go with their (Terminating) namespaces; no finalizer holds them.
    wait_for("no tracked Secret outside the test's namespace", lambda: not [
        s for s in core.list_secret_for_all_namespaces(label_selector=f"{TRACK_LABEL}=true").items
        if s.metadata.namespace != mine], timeout=90)
    return removed


@pytest.mark.cluster
@pytest.mark.parametrize("mode", ["namespaced-with-leader-election", "cluster-wide"])
def test_the_operator_rolls_back_under_exactly_the_charts_service_account_and_rules(
        mode, cluster, api_client, helm, harness, namespace, namespaces, rollback_crd, peering_crds, tmp_path):
    release_ns = namespaces("operator")
    release = f"rw{secrets.token_hex(3)}"
    values = ({"watchNamespaces": [namespace], "leaderElection": {"enabled": True}, "logFormat": "json"}
              if mode.startswith("namespaced") else {"clusterWide": True})
    values |= SESSION_OWNED
    docs = template(helm, values, release=release, namespace=release_ns, tmp_path=tmp_path)
    identity = [d for d in docs if d["kind"] in IDENTITY_KINDS]
    if mode == "cluster-wide":
        assert {d["kind"] for d in identity} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    else:
        assert {d["kind"] for d in identity} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                                 "RoleBinding", "KopfPeering"}
        assert [b["roleRef"]["name"] for b in by_kind(identity, "ClusterRoleBinding")] == \
            [f"{release}-rewind-operator-discovery"], "namespaced: only discovery is bound cluster-wide"
    deployment_spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = deployment_spec["containers"]
    assert "command" not in c, "the chart overrides the image's entrypoint (`rewind`)"
    args, health, metrics_port = local_args(c["args"])

    if mode == "cluster-wide":
        # The Rollbacks of finished tests must not reach this operator.
        assert not other_operators(), f"another operator of this session is still running: {other_operators()}"
        removed = clear_leftovers(api_client, namespace)
        if removed:
            print(f"removed {len(removed)} Rollback(s) of finished tests before going cluster-wide: {removed}")

    applied = yaml.safe_dump_all(identity)
    cluster.kubectl("apply", "-f", "-", input=applied)
    op = None
    try:
        kubeconfig = harness._service_account_kubeconfig(cluster, api_client, release_ns,
                                                 deployment_spec["serviceAccountName"],
                                                 tmp_path / "chart-operator.kubeconfig")
        op = harness.Operator(kubeconfig, None, tmp_path / "chart-operator.log", args=args)
        print(f"operator: {' '.join(op.command())}\noperator log: {op.log}")
        op.start()

        wait_live(op, health)

        apps = client.AppsV1Api(api_client)
        rs = deploy_revisions(apps, namespace, "web", IMAGES)
        kubectl_apply(cluster, namespace, rollback("undo", [
            {"kind": "Deployment", "name": "web", "toRevision": "previous"}]))
        waited = cluster.kubectl("wait", "--for=condition=Ready", "rollback/undo", "-n", namespace,
                                 "--timeout=150s", check=False, timeout=180)
        assert waited.returncode == 0, (waited.stderr, get_rollback(api_client, namespace, "undo").get("status"),
                                        op.output()[-3000:])
        rb = get_rollback(api_client, namespace, "undo")
        assert rb["status"]["phase"] == "Succeeded", rb["status"]
        assert condition(rb, "Ready")["status"] == "True"
        after = deployment_dict(apps, namespace, "web")
        assert after["spec"]["template"] == template_of(rs[2])
        assert rolled_out(apps, namespace, "web")

        assert metrics_port, "the chart's defaults serve metrics"
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert re.search(r'^rewind_rollbacks_finished_total\{.*phase="Succeeded".*\} 1\.0$', scraped, re.M), \
            scraped[-2000:]
        if mode.startswith("namespaced"):
            wait_for("the only replica leads (rewind_leader 1)", lambda: re.search(
                r"^rewind_leader 1\.0$", httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text,
                re.M), timeout=30)

        assert op.proc.poll() is None, op.output()[-3000:]
        errors = log_errors(op.output())
        assert not errors, "\n".join(errors[:20])
        # A finished Rollback is let go when deleted: the operator releases its finalizer.
        deleted = cluster.kubectl("delete", "rollback", "undo", "-n", namespace, "--timeout=30s", check=False)
        assert deleted.returncode == 0, (deleted.stderr, op.output()[-3000:])
    finally:
        if op and op.proc and op.proc.poll() is None:
            cluster.kubectl("delete", "rollbacks", "--all", "-n", namespace, "--timeout=30s", check=False)
        if op:
            op.stop()
        for item in client.CustomObjectsApi(api_client).list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL)["items"]:
            cluster.kubectl("patch", "rollback", item["metadata"]["name"], "-n", namespace, "--type=merge",
                            "-p", '{"metadata":{"finalizers":null}}', check=False)
        cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=applied, check=False)


# --- the README's quick start on a real cluster, as far as it runs here --------------------------

QUICKSTART = REPO / "examples" / "quickstart"
QUICKSTART_NS = "quickstart"           # the example files name it


@pytest.mark.cluster
def test_the_quick_start_runs_as_written(cluster, api_client, helm, harness, namespaces, rollback_crd, tmp_path):
    """scripts/quickstart.sh's steps with its very files and chart values, against the local
    control plane: the app applied, the chart's operator (its ServiceAccount, rules and args for
    `watchNamespaces={quickstart}`), the example policy, a broken release by `kubectl set image`,
    the example Rollback, `kubectl wait --for=condition=Ready`. Not run here: kind, docker build
    and helm install itself (no Docker engine); kwok's pods start whatever the image. `make
    quickstart-real-node` runs the script itself, helm install included, on a real node."""
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    if any(n.metadata.name == QUICKSTART_NS for n in core.list_namespace().items):
        pytest.skip(f"namespace {QUICKSTART_NS} already exists in this cluster")
    release_ns = namespaces("operator")
    # The script's values; a release name of its own: `rewind` would name its ClusterRoles as the
    # session's shared ones (tests/conftest.py), which this test deletes when it ends.
    docs = template(helm, {"watchNamespaces": [QUICKSTART_NS], "image": {"repository": "rewind", "tag": "0.1.0",
                                                                           "pullPolicy": "Never"}, **SESSION_OWNED},
                    release=f"qs{secrets.token_hex(3)}", namespace=release_ns, tmp_path=tmp_path)
    assert not [d for d in docs if d["kind"] in IDENTITY_KINDS and d["metadata"]["name"] == "rewind-operator"]
    identity = yaml.safe_dump_all([d for d in docs if d["kind"] in IDENTITY_KINDS])
    deployment_spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = deployment_spec["containers"]
    assert f"--namespace={QUICKSTART_NS}" in c["args"] and "--tool-image=rewind:0.1.0" in c["args"]
    args, health, _ = local_args(c["args"])
    kubectl = cluster.kubectl
    op = None
    try:
        kubectl("apply", "-f", str(QUICKSTART / "app.yaml"))
        kubectl("-n", QUICKSTART_NS, "rollout", "status", "deployment/web", "--timeout=120s", timeout=150)
        kubectl("apply", "-f", "-", input=identity)
        kubeconfig = harness._service_account_kubeconfig(cluster, api_client, release_ns,
                                                         deployment_spec["serviceAccountName"],
                                                         tmp_path / "quickstart-operator.kubeconfig")
        op = harness.Operator(kubeconfig, None, tmp_path / "quickstart-operator.log", args=args)
        op.start()
        wait_live(op, health)
        kubectl("apply", "-f", str(QUICKSTART / "policy.yaml"))
        kubectl("-n", QUICKSTART_NS, "set", "image", "deployment/web", "nginx=nginx:1.27-broken")
        wait_for("the broken release is revision 2", lambda: (apps.read_namespaced_deployment(
            "web", QUICKSTART_NS).metadata.annotations or {}).get("deployment.kubernetes.io/revision") == "2")
        kubectl("apply", "-f", str(QUICKSTART / "rollback.yaml"))
        waited = kubectl("wait", "--for=condition=Ready", "rollback/web-back", "-n", QUICKSTART_NS,
                         "--timeout=150s", check=False, timeout=180)
        assert waited.returncode == 0, (waited.stderr, get_rollback(api_client, QUICKSTART_NS, "web-back").get(
            "status"), op.output()[-3000:])
        rb = get_rollback(api_client, QUICKSTART_NS, "web-back")
        assert rb["status"]["phase"] == "Succeeded"
        table = kubectl("get", "rollbacks", "-n", QUICKSTART_NS).stdout
        assert "web-back" in table and "Succeeded" in table, table
        image = kubectl("-n", QUICKSTART_NS, "get", "deployment", "web", "-o",
                        "jsonpath={.spec.template.spec.containers[0].image}").stdout
        assert image == "nginx:1.27"
        assert not log_errors(op.output()), log_errors(op.output())[:10]
    finally:
        if op:
            op.stop()
        for item in client.CustomObjectsApi(api_client).list_namespaced_custom_object(
                GROUP, VERSION, QUICKSTART_NS, PLURAL)["items"]:
            kubectl("patch", "rollback", item["metadata"]["name"], "-n", QUICKSTART_NS, "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}', check=False)
        kubectl("delete", "namespace", QUICKSTART_NS, "--wait=false", check=False)
        kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=identity, check=False)
