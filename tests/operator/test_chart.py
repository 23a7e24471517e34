"""The Helm chart (charts/rewind), with Helm built from the Go module proxy (testbed/build-helm.sh):

- `helm lint`, and `helm template` with the default values and with a values file that sets every
  value the chart has (a test fails when values.yaml gains a key that file does not set);
- the values that are refused, refused at render time with their reason;
- manifests/ is the chart rendered (scripts/render_manifests.py): any drift fails;
- the renders and manifests/ pass a server-side dry-run apply against the real API server (schemas,
  strict field validation, admission);
- `rewind run` with the args of the chart's Deployment, as the chart's ServiceAccount holding
  exactly the chart's RBAC (applied for real), rolls a Deployment back to Ready: once watching a
  list of namespaces with leader election (RoleBindings, a KopfPeering), once cluster-wide with the
  defaults (ClusterRoleBindings; earlier tests' leftovers are cleared first, as
  test_shipped_install.py does).

Skipped, with the reason, only when the helm binary has not been built (`make bootstrap` builds it).
"""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
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

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "rewind"
PEERING_CRDS = REPO / "crds" / "kopf-peering.yaml"
DIGEST = "sha256:" + "0123456789abcdef" * 4
IMAGES = ["registry.local/chart-web:1", "registry.local/chart-web:2", "registry.local/chart-web:3"]
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
# Objects of a render that the rollback test creates for real: who the operator is and what it may do.
IDENTITY_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                  "KopfPeering", "ClusterKopfPeering"}

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


def every_value(watch: list[str], release: str = "rewind") -> dict:
    """A values file that sets every value of the chart, most of them away from their default."""
    return {
        "image": {"repository": "registry.example.com/sre/rewind", "tag": "9.9.9", "digest": DIGEST,
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "nameOverride": "rwd",
        "fullnameOverride": "",
        "watchNamespaces": watch,
        "replicas": 2,
        "leaderElection": {"enabled": True, "peeringName": "rewind-peers", "lifetimeSeconds": 7},
        "logFormat": "json",
        "verbose": True,
        "env": [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"}],
        "serviceAccount": {"create": True, "name": "rewind-sa", "annotations": {"example.com/owner": "sre"}},
        "rbac": {"create": True},
        "crds": {"install": True, "keep": True},
        "ports": {"health": 9440},
        "livenessProbe": {"initialDelaySeconds": 11, "periodSeconds": 21, "timeoutSeconds": 6,
                          "failureThreshold": 4},
        "readinessProbe": {"initialDelaySeconds": 12, "periodSeconds": 13, "timeoutSeconds": 7,
                           "failureThreshold": 5},
        "metrics": {"enabled": True, "port": 9441,
                    "service": {"type": "NodePort", "annotations": {"example.com/scrape": "yes"}},
                    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"},
                                       "interval": "15s", "scrapeTimeout": "5s"}},
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
    # `helm lint` cannot be told that the ServiceMonitor API exists; everything else of the full file.
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump(every_value(["booking", "payments"])))
    out = subprocess.run([str(helm), "lint", "--strict", str(CHART), "--values", str(f),
                          "--set", "metrics.serviceMonitor.enabled=false"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_default_values_render_one_cluster_wide_operator(helm):
    docs = template(helm)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ServiceAccount", "CustomResourceDefinition", "ClusterRole", "ClusterRole",
                            "ClusterRoleBinding", "ClusterRoleBinding", "Service", "Deployment"]), kinds
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["name"] == "rewind-operator"
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    c = container(docs)
    assert c["image"] == "rewind:0.1.0"
    assert c["args"] == ["run", "--liveness=http://0.0.0.0:8080/healthz", "--metrics-address=:8081",
                         "--log-format=text"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, c[probe]
    assert {"name": "health", "containerPort": 8080} in c["ports"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"] == "rewind-operator"
    crd = one(docs, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "rollbacks.rewind.dev"
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    # The chart's CRD is crds/'s, with only its labels and the annotation added.
    source = yaml.safe_load((REPO / "crds" / "rollbacks.rewind.dev.yaml").read_text())
    assert crd["spec"] == source["spec"]
    bindings = by_kind(docs, "ClusterRoleBinding")
    assert {b["roleRef"]["name"] for b in bindings} == {"rewind-operator", "rewind-operator-discovery"}
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": "rewind-operator",
                                  "namespace": "rewind-system"}] for b in bindings)
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics",
                                         "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_a_values_file_that_sets_every_value(helm, tmp_path):
    values = every_value(["booking", "payments"], release="ops")
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    given = leaf_paths(values)
    missing = {p for p in leaf_paths(defaults) if not any(g[:len(p)] == p for g in given)}
    assert not missing, f"values.yaml has values this test does not set: {sorted(missing)}"

    docs = template(helm, values, "--api-versions", SERVICE_MONITOR_API, release="ops",
                    namespace="ops-system", tmp_path=tmp_path)
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
                         "--log-format=json", "--namespace=booking", "--namespace=payments",
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
    role_bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in role_bindings) == ["booking", "payments"]
    assert all(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": "ops-rwd-operator"} and b["subjects"] == subject for b in role_bindings)
    (crb,) = by_kind(docs, "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == "ops-rwd-operator-discovery" and crb["subjects"] == subject
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
    assert one(docs, "CustomResourceDefinition")["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_switches_leave_their_objects_out(helm, tmp_path):
    docs = template(helm, None, "--set", "rbac.create=false,serviceAccount.create=false,"
                    "serviceAccount.name=platform-sa,crds.install=false,metrics.enabled=false,"
                    "image.tag=1.2.3,fullnameOverride=ops")
    assert sorted(d["kind"] for d in docs) == ["Deployment"]
    c = container(docs)
    assert c["image"] == "rewind:1.2.3"
    assert not any(a.startswith("--metrics-address") for a in c["args"])
    assert [p["name"] for p in c["ports"]] == ["health"]
    assert one(docs, "Deployment")["metadata"]["name"] == "ops-operator"
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-sa"

    docs = template(helm, None, "--set", "crds.keep=false,leaderElection.enabled=true,replicas=2,"
                    "podDisruptionBudget.enabled=true")
    assert "annotations" not in one(docs, "CustomResourceDefinition")["metadata"]
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "rewind"
    assert "--peering=rewind" in container(docs)["args"]
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    # A release name without "rewind" in it gets it appended.
    docs = template(helm, release="ops")
    assert one(docs, "Deployment")["metadata"]["name"] == "ops-rewind-operator"


def test_refused_values_say_why(helm):
    assert "more than one replica needs leaderElection.enabled=true" in refused(helm, "--set", "replicas=2")
    assert "needs the ServiceMonitor CRD" in refused(helm, "--set", "metrics.serviceMonitor.enabled=true")
    assert "needs metrics.enabled=true" in refused(
        helm, "--set", "metrics.serviceMonitor.enabled=true,metrics.enabled=false",
        "--api-versions", SERVICE_MONITOR_API)
    assert "serviceAccount.name" in refused(helm, "--set", "serviceAccount.create=false")
    assert "/image/digest" in refused(helm, "--set", "image.digest=latest")
    assert "/watchNamespaces/0" in refused(helm, "--set", "watchNamespaces[0]=Not_A_Namespace")
    assert "/logFormat" in refused(helm, "--set", "logFormat=yaml")
    assert "replicaCount" in refused(helm, "--set", "replicaCount=2")       # unknown keys are errors
    assert "must differ" in refused(helm, "--set", "metrics.port=8080")


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
def peering_crds(cluster):
    """kopf's peering CRDs (as the chart's crds/ installs them). Left installed: the same objects
    the high-availability test installs."""
    apply_crds(cluster, path=PEERING_CRDS)
    wait_for("kopfpeerings served", lambda: cluster.kubectl(
        "get", "kopfpeerings", "-A", check=False).returncode == 0, timeout=30)


@pytest.mark.cluster
def test_the_renders_and_manifests_pass_a_server_side_dry_run(cluster, helm, tmp_path, namespace, namespaces,
                                                              rollback_crd, service_monitor_api, peering_crds,
                                                              api_client):
    release_ns, second = namespaces("release"), namespaces("watched")
    dry_run(cluster, template(helm, namespace=release_ns))
    full = template(helm, every_value([namespace, second], release="ops"), "--api-versions", SERVICE_MONITOR_API,
                    release="ops", namespace=release_ns, tmp_path=tmp_path)
    assert {"ServiceMonitor", "PodDisruptionBudget", "KopfPeering", "RoleBinding"} <= {d["kind"] for d in full}
    dry_run(cluster, full)

    # manifests/ as a user applies them: the Namespace it creates must exist for the dry run of
    # what goes into it (a dry run creates nothing).
    core = client.CoreV1Api(api_client)
    created = False
    try:
        core.read_namespace(render_manifests.NAMESPACE)
    except client.ApiException as e:
        if e.status != 404:
            raise
        core.create_namespace({"metadata": {"name": render_manifests.NAMESPACE}})
        created = True
    try:
        for path in sorted((REPO / "manifests").glob("*.yaml")):
            dry_run(cluster, path.read_text())
    finally:
        if created:
            core.delete_namespace(render_manifests.NAMESPACE)


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


@pytest.mark.cluster
@pytest.mark.parametrize("mode", ["namespaced-with-leader-election", "cluster-wide"])
def test_the_operator_rolls_back_under_exactly_the_charts_service_account_and_rules(
        mode, cluster, api_client, helm, harness, namespace, namespaces, rollback_crd, peering_crds, tmp_path):
    release_ns = namespaces("operator")
    release = f"rw{secrets.token_hex(3)}"
    values = ({"watchNamespaces": [namespace], "leaderElection": {"enabled": True}, "logFormat": "json"}
              if mode.startswith("namespaced") else {})
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
        # As test_shipped_install.py: the Rollbacks of finished tests must not reach this operator.
        from test_shipped_install import clear_leftovers, other_operators
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

        def answers():
            assert op.proc.poll() is None, f"the operator exited ({op.proc.returncode}):\n{op.output()[-3000:]}"
            try:
                return httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the operator's liveness endpoint", answers, timeout=90)

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
