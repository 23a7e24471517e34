"""Two operator replicas with leader election (kopf peering): the standby does nothing while the
leader lives, takes over within seconds when the leader is SIGKILLed mid-rollback, and every
effect happens once, counted from the API server's audit log and at the receivers."""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path

import httpx
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

import httpservers
from helpers import audit_writes, deploy_revisions, kubectl_apply, rollback, wait_for, wait_phase
from rewind_testbed.install import wait_established
from rewind_testbed.receivers import WebhookReceiver

pytestmark = pytest.mark.cluster

PEERING_CRDS = Path(__file__).resolve().parents[2] / "crds" / "kopf-peering.yaml"
IMAGES = ["registry.local/web:1", "registry.local/web:2", "registry.local/web:3"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leader(port: int) -> float | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    return next((s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "rewind_leader"), None)


def _replica(idle, namespace: str, log: Path, port: int):
    """A replica as the chart runs them: the same ServiceAccount, with leader election."""
    return type(idle)(idle.kubeconfig, namespace, log, args=[
        "run", "--namespace", namespace, "--peering", "rewind", "--peering-lifetime", "5",
        "--metrics-address", f"127.0.0.1:{port}", "--verbose"])


def test_the_standby_takes_over_when_the_leader_dies_mid_rollback(cluster, api_client, namespace, idle_operator,
                                                                 tmp_path):
    cluster.kubectl("apply", "--server-side", "-f", str(PEERING_CRDS))
    wait_established(cluster.kubectl, "kopfpeerings.kopf.dev")
    wait_for("KopfPeering served", lambda: cluster.kubectl("get", "kopfpeerings", "-n", namespace,
                                                         check=False).returncode == 0, timeout=30)
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                                                      "metadata": {"name": "rewind"}})
    server, url = httpservers.start()
    a_port, b_port = _port(), _port()
    a = _replica(idle_operator, namespace, tmp_path / "a.log", a_port).start()
    b = None
    try:
        wait_for("replica A leads", lambda: _leader(a_port) == 1, timeout=60)
        b = _replica(idle_operator, namespace, tmp_path / "b.log", b_port).start()
        wait_for("replica B stands by", lambda: _leader(b_port) == 0, timeout=60)

        deploy_revisions(client.AppsV1Api(api_client), namespace, "web", IMAGES)
        with WebhookReceiver() as ops:
            client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
                "metadata": {"name": "ops-webhook"},
                "data": {"url": base64.b64encode(ops.url("/events").encode()).decode()}})
            kubectl_apply(cluster, namespace, rollback("ha", [{"name": "web"}], notifications=[
                {"name": "ops", "webhook": {"urlSecretRef": {"name": "ops-webhook", "key": "url"}}}],
                verification={"http": [{"name": "health", "url": f"{url}/api/health", "count": 8,
                                        "intervalSeconds": 2}]}))
            # The leader is killed while the checks run: the Deployment is restored, the
            # Started notification sent, six of the measurements still to come.
            get = lambda: client.CustomObjectsApi(api_client).get_namespaced_custom_object(  # noqa: E731
                "rewind.dev", "v1alpha1", namespace, "rollbacks", "ha")
            wait_for("the checks running", lambda: any(
                s["name"] == "verify/http/health" and s.get("attempts", 0) >= 2
                for s in get().get("status", {}).get("steps", [])), timeout=90)
            a.kill()
            killed = time.monotonic()
            wait_for("replica B leads", lambda: _leader(b_port) == 1, timeout=60, interval=0.1)
            handover = time.monotonic() - killed
            before = get()["metadata"]["resourceVersion"]
            wait_for("B writes the Rollback", lambda: get()["metadata"]["resourceVersion"] != before, timeout=60,
                     interval=0.1)
            first_write = time.monotonic() - killed
            rb = wait_phase(api_client, namespace, "ha", {"Succeeded", "Failed", "Interrupted"}, timeout=120)
            print(f"handover: B leads {handover:.1f}s after the kill, writes the Rollback after {first_write:.1f}s")
            assert rb["status"]["phase"] == "Succeeded", rb["status"]
            wait_for("every notification sent", lambda: all(
                n["state"] == "Sent" for n in get()["status"]["notifications"]) or None, timeout=60)

            # Every effect once: one template PATCH, each notification delivered once per key.
            patches = audit_writes(cluster, namespace, "deployments", "web")
            assert patches is not None, "the test bed's audit log is needed"
            assert len([p for p in patches if p["verb"] == "patch"]) == 1
            keys = [r.key for r in ops.delivered]
            assert sorted(r.payload["event"] for r in ops.delivered) == ["Started", "Succeeded"]
            assert len(keys) == len(set(keys)) == 2
            health = next(s for s in rb["status"]["steps"] if s["name"] == "verify/http/health")
            assert health["state"] == "Succeeded" and health["attempts"] == 8
            assert "Daemon 'rollback'" in b.output()      # B drove it after the handover
    finally:
        for op in (a, b):
            if op:
                op.stop()
        server.shutdown()
