"""The operator started exactly as the shipped manifests start it: the container args of
manifests/operator.yaml's Deployment (`run --liveness=... --namespace=booking`), as a ServiceAccount
bound the way manifests/rbac.yaml binds it (the operator's ClusterRole by a RoleBinding in the
watched namespace, the discovery ClusterRole by a ClusterRoleBinding). Outside a pod, the only
additions are `--kubeconfig`, holding a real token of that ServiceAccount, and one substitution:
the example namespace the manifests watch (booking) is the test's namespace, in the args and in
the RoleBinding alike.

The other operator tests start `rewind run` with their own arguments and bind the shipped role
themselves; this one would notice the shipped start crashing, or the shipped bindings missing a
permission (a 403 in the log). The cluster-wide start (`clusterWide=true`) is exercised by
tests/operator/test_chart.py."""

from __future__ import annotations

import socket
import warnings
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

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
OPERATOR_YAML = REPO / "manifests" / "operator.yaml"
RBAC_YAML = REPO / "manifests" / "rbac.yaml"
WATCHED = "booking"                    # the one namespace manifests/ watch (scripts/render_manifests.py)
# A ServiceAccount of its own (in the operators' namespace, rewind-test-system), bound only as the
# manifests bind theirs.
SHIPPED_SA = "rewind-operator-shipped"
BINDING_SUFFIX = "-shipped-test"       # next to operator_role's own rewind-operator-discovery
IMAGES = ["registry.local/booking:1.0", "registry.local/booking:1.1", "registry.local/booking:1.2-bad"]


def shipped_container() -> dict:
    docs = [d for d in yaml.safe_load_all(OPERATOR_YAML.read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, containers
    return {"args": list(containers[0]["args"]), "command": containers[0].get("command"),
            "serviceAccountName": deployment["spec"]["template"]["spec"]["serviceAccountName"]}


def shipped_bindings() -> list[dict]:
    return [d for d in yaml.safe_load_all(RBAC_YAML.read_text())
            if d and d["kind"] in ("ClusterRoleBinding", "RoleBinding")]


def watched_namespaces(args: list[str]) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")]


def liveness_url(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a.startswith("--liveness="):
            return a.split("=", 1)[1]
        if a == "--liveness" and i + 1 < len(args):
            return args[i + 1]
    return None


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def shipped_operator(cluster, api_client, namespace, rollback_crd, operator_as):
    """`rewind` with the Deployment's container args, its watched namespace the test's, as a
    ServiceAccount bound with the shipped bindings (renamed, subjects pointed at it, the RoleBinding
    moved to the test's namespace); not started yet."""
    container = shipped_container()
    assert container["command"] is None, "the manifest overrides the image's entrypoint (`rewind`)"
    args = container["args"]
    assert not any(a == "--namespace" or a.startswith("-n") for a in args), \
        f"write --namespace=NAME, as the chart does: {args}"
    assert watched_namespaces(args) == [WATCHED], f"manifests/operator.yaml should watch {WATCHED} only: {args}"
    args = [f"--namespace={namespace}" if a == f"--namespace={WATCHED}" else a for a in args]

    bindings = shipped_bindings()
    assert sorted((b["kind"], b["metadata"].get("namespace"), b["roleRef"]["name"]) for b in bindings) == [
        ("ClusterRoleBinding", None, "rewind-operator-discovery"),
        ("RoleBinding", WATCHED, "rewind-operator"), ("RoleBinding", WATCHED, "rewind-operator-gitops")], \
        ("manifests/rbac.yaml: in the watched namespace the operator's role and its GitOps role (get, patch "
         "Argo CD and Flux owners), and one cluster-wide binding (discovery)")
    for b in bindings:
        assert all(s["kind"] == "ServiceAccount" and s["name"] == container["serviceAccountName"]
                   for s in b["subjects"]), b["subjects"]

    rbac = client.RbacAuthorizationV1Api(api_client)
    core = client.CoreV1Api(api_client)
    sa_ns = operator_as.namespace
    core.create_namespaced_service_account(sa_ns, {"metadata": {"name": SHIPPED_SA}})
    created = []
    try:
        for b in bindings:
            b["metadata"]["name"] += BINDING_SUFFIX
            b["subjects"] = [{"kind": "ServiceAccount", "name": SHIPPED_SA, "namespace": sa_ns}]
            if b["kind"] == "ClusterRoleBinding":
                rbac.create_cluster_role_binding(b)
                created.append((None, b["metadata"]["name"]))
            else:
                b["metadata"]["namespace"] = namespace
                rbac.create_namespaced_role_binding(namespace, b)
                created.append((namespace, b["metadata"]["name"]))

        url = liveness_url(args)
        if url:
            parts = urlsplit(url)
            if port_taken(parts.hostname, parts.port):
                # Running the args as shipped would fail to bind: say so, move only the port.
                port = free_port()
                warnings.warn(f"port {parts.port} is taken on this machine; the liveness endpoint "
                              f"runs on {port} instead (all other args as shipped)")
                new = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))
                args = [a.replace(url, new) for a in args]
        op = operator_as(SHIPPED_SA, args)
        yield op
        # Our Rollback goes while the operator still runs (its finalizer is released).
        if op.proc and op.proc.poll() is None:
            cluster.kubectl("delete", "rollbacks", "--all", "-n", namespace, "--timeout=30s",
                            check=False)
        op.stop()
        for rb in client.CustomObjectsApi(api_client).list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL)["items"]:
            cluster.kubectl("patch", "rollback", rb["metadata"]["name"], "-n", namespace,
                            "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    finally:
        for ns, name in created:
            if ns is None:
                rbac.delete_cluster_role_binding(name)
            else:
                rbac.delete_namespaced_role_binding(name, ns)
        core.delete_namespaced_service_account(SHIPPED_SA, sa_ns)   # its tokens die with it


def test_operator_as_shipped_watches_its_namespace_and_rolls_back(cluster, api_client, namespace,
                                                              shipped_operator):
    op = shipped_operator
    apps = client.AppsV1Api(api_client)
    url = liveness_url(op.args)
    assert url, "manifests/operator.yaml's container has no --liveness; its livenessProbe needs one"
    parts = urlsplit(url)
    probe = urlunsplit(parts._replace(netloc=f"127.0.0.1:{parts.port}"))   # 0.0.0.0 is every address

    op.start()

    def answers():
        assert op.proc.poll() is None, f"the operator exited ({op.proc.returncode}):\n{op.output()[-3000:]}"
        try:
            return httpx.get(probe, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(f"the liveness endpoint {probe}", answers, timeout=60)

    rs = deploy_revisions(apps, namespace, "web", IMAGES)
    assert sorted(rs) == [1, 2, 3]
    kubectl_apply(cluster, namespace, rollback("undo", [
        {"kind": "Deployment", "name": "web", "toRevision": "previous"}]))
    waited = cluster.kubectl("wait", "--for=condition=Ready", "rollback/undo", "-n", namespace,
                             "--timeout=120s", check=False)
    assert waited.returncode == 0, (waited.stderr, get_rollback(api_client, namespace, "undo").get("status"),
                                    op.output()[-3000:])

    rb = get_rollback(api_client, namespace, "undo")
    assert rb["status"]["phase"] == "Succeeded", rb["status"]
    assert condition(rb, "Ready")["status"] == "True"
    after = deployment_dict(apps, namespace, "web")
    assert after["spec"]["template"] == template_of(rs[2])
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES[1]
    assert rolled_out(apps, namespace, "web")

    # Still alive and still answering its probe after the work, with nothing logged as an error
    # (a missing permission shows up here as a 403 from a watch).
    assert op.proc.poll() is None, op.output()[-3000:]
    assert httpx.get(probe, timeout=5).status_code == 200
    log = op.output()
    assert "Traceback" not in log and " ERROR " not in log, log[-5000:]

    # A finished Rollback is let go when deleted: the operator releases its finalizer.
    deleted = cluster.kubectl("delete", "rollback", "undo", "-n", namespace, "--timeout=30s", check=False)
    assert deleted.returncode == 0, (deleted.stderr, op.output()[-3000:])
