"""The operator started exactly as the shipped manifests start it: the container args of
manifests/operator.yaml's Deployment (`run --liveness=...`, no --namespace: cluster-wide), as a
ServiceAccount bound the way manifests/rbac.yaml binds it (ClusterRoleBindings). Outside a pod,
the only addition is `--kubeconfig`, holding a real token of that ServiceAccount.

Every other operator test passes --namespace and binds the role per namespace, so none of them
would notice the cluster-wide start crashing (it did: kopf was given namespaces=None).

A cluster-wide operator sees every namespace. The tests run one at a time and each namespaced
operator is stopped when its test ends, but Rollbacks of finished tests stay behind: their
namespaces are deleted when the test ends, and kopf's finalizer holds each Rollback (and so the
namespace, Terminating) once no operator runs. Before this operator starts, those leftovers are
removed (finalizer stripped, deleted) so that it cannot act on another test's objects; a Rollback
or tracked Secret outside the test namespaces (an existing cluster in use) skips the test."""

from __future__ import annotations

import os
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
FINALIZER = "rewind.dev/finalizer"
TEST_NS_LABEL = "rewind.dev/test"       # set by the test bed's `namespace` fixture
TRACK_LABEL = "rewind.dev/track"
# A ServiceAccount of its own (in the operators' namespace, rewind-test-system): the shared one of
# the namespaced tests is never bound cluster-wide.
SHIPPED_SA = "rewind-operator-clusterwide"
BINDING_SUFFIX = "-clusterwide-test"   # next to operator_role's own rewind-operator-discovery
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


@pytest.fixture
def shipped_operator(cluster, api_client, namespace, rollback_crd, operator_as):
    """`rewind` with the Deployment's container args, cluster-wide, as a ServiceAccount bound with
    the shipped ClusterRoleBindings (renamed, subjects pointed at it); not started yet."""
    assert not other_operators(), f"another operator of this session is still running: {other_operators()}"
    container = shipped_container()
    assert container["command"] is None, "the manifest overrides the image's entrypoint (`rewind`)"
    args = container["args"]
    assert not any(a == "--namespace" or a.startswith(("--namespace=", "-n")) for a in args), args

    rbac = client.RbacAuthorizationV1Api(api_client)
    core = client.CoreV1Api(api_client)
    sa_ns = operator_as.namespace
    core.create_namespaced_service_account(sa_ns, {"metadata": {"name": SHIPPED_SA}})
    created = []
    try:
        for b in shipped_bindings():
            assert b["kind"] == "ClusterRoleBinding", f"the shipped RBAC now has a {b['kind']}"
            assert all(s["kind"] == "ServiceAccount" and s["name"] == container["serviceAccountName"]
                       for s in b["subjects"]), b["subjects"]
            b["metadata"]["name"] += BINDING_SUFFIX
            b["subjects"] = [{"kind": "ServiceAccount", "name": SHIPPED_SA, "namespace": sa_ns}]
            rbac.create_cluster_role_binding(b)
            created.append(b["metadata"]["name"])
        assert created, "manifests/rbac.yaml binds nothing"

        removed = clear_leftovers(api_client, namespace)
        if removed:
            print(f"removed {len(removed)} Rollback(s) of finished tests before going "
                  f"cluster-wide: {removed}")

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
        # Our Rollback goes while the operator still runs (its finalizer is released), so nothing
        # of this test is left for the next cluster-wide operator.
        if op.proc and op.proc.poll() is None:
            cluster.kubectl("delete", "rollbacks", "--all", "-n", namespace, "--timeout=30s",
                            check=False)
        op.stop()
        for rb in client.CustomObjectsApi(api_client).list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL)["items"]:
            cluster.kubectl("patch", "rollback", rb["metadata"]["name"], "-n", namespace,
                            "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    finally:
        for name in created:
            rbac.delete_cluster_role_binding(name)
        core.delete_namespaced_service_account(SHIPPED_SA, sa_ns)   # its tokens die with it


def test_operator_as_shipped_runs_cluster_wide_and_rolls_back(cluster, api_client, namespace,
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
    # (a missing cluster-wide permission shows up here as a 403 from a watch).
    assert op.proc.poll() is None, op.output()[-3000:]
    assert httpx.get(probe, timeout=5).status_code == 200
    log = op.output()
    assert "Traceback" not in log and " ERROR " not in log, log[-5000:]

    # A finished Rollback is let go when deleted: the cluster-wide operator releases its finalizer.
    deleted = cluster.kubectl("delete", "rollback", "undo", "-n", namespace, "--timeout=30s", check=False)
    assert deleted.returncode == 0, (deleted.stderr, op.output()[-3000:])
