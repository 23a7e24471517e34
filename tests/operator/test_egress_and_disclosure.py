"""Egress and disclosure (issue 11, item 5), against the real control plane and real local servers:
the operator connects only where the platform team's policy allows, refuses before anything
changes or any endpoint is reached, and never copies what an endpoint answered (a body, a JSON
value, an error text, a row of the database) into status or Events."""

from __future__ import annotations

import base64
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from kubernetes import client

from helpers import (
    audit_writes, condition, deploy_revisions, deployment_dict, get_rollback, kubectl_apply, rollback,
    wait_for, wait_phase,
)

pytestmark = pytest.mark.cluster

CANARY = "canary_leak_7f3e9a"          # lowercase letters and _: it would pass as a Slack error code
CANARY_NUMBER = "48151623"
IMAGES = ["registry.local/web:1", "registry.local/web:2"]


def _secret(api_client, namespace: str, name: str, value: str) -> None:
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
        "metadata": {"name": name}, "data": {"url": base64.b64encode(value.encode()).decode()}})


def _everything(api_client, namespace: str, name: str) -> str:
    """The whole Rollback and every Event of the namespace, as text."""
    rb = get_rollback(api_client, namespace, name)
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    return json.dumps(rb) + "\n" + "\n".join(f"{e.reason} {e.message}" for e in events)


class Listener:
    """A TCP server on loopback that only counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopping = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self.stopping.set()
        self.sock.close()


def test_a_check_at_the_cloud_metadata_address_is_refused_before_anything_changes(
        cluster, api_client, namespace, operator):
    apps = client.AppsV1Api(api_client)
    deploy_revisions(apps, namespace, "web", IMAGES)
    before = deployment_dict(apps, namespace, "web")
    kubectl_apply(cluster, namespace, rollback("metadata", [{"name": "web"}], verification={"http": [
        {"name": "imds", "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}]}))
    rb = wait_phase(api_client, namespace, "metadata", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
    assert rb["status"]["phase"] == "Failed", rb["status"]
    planned = condition(rb, "Planned")
    assert planned["status"] == "False" and planned["reason"] == "EgressDenied", planned
    assert "HTTP check imds" in planned["message"] and "169.254.169.254 port 80" in planned["message"]
    assert "{cidr: 169.254.169.254/32, ports: [80]}" in planned["message"]      # what to add
    assert "security-credentials" not in planned["message"]
    assert not rb["status"].get("steps")
    after = deployment_dict(apps, namespace, "web")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"] == before["spec"]["template"]
    assert audit_writes(cluster, namespace, "deployments") in ([], None)


def test_a_server_the_policy_does_not_allow_is_never_contacted(cluster, api_client, namespace, operator):
    """The namespace's RollbackPolicy allows loopback on port 1 only: the checks, the hooks, the
    Alertmanager and the SMTP server at another port are refused at preflight, and the Slack
    webhook (its URL in a Secret) when the Failed notification is sent. Nothing ever connects."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump({
        "apiVersion": "rewind.dev/v1alpha1", "kind": "RollbackPolicy", "metadata": {"name": "default"},
        "spec": {"egress": [{"cidr": "127.0.0.1/32", "ports": [1]}]}}))
    listener = Listener()
    base = f"http://127.0.0.1:{listener.port}"
    try:
        _secret(api_client, namespace, "ops-slack", f"{base}/services/T0/B0/{CANARY}")
        apps = client.AppsV1Api(api_client)
        deploy_revisions(apps, namespace, "web", IMAGES)
        before = deployment_dict(apps, namespace, "web")
        kubectl_apply(cluster, namespace, rollback(
            "fenced", [{"name": "web"}],
            maintenance={"http": {"enter": {"url": f"{base}/enter"}, "exit": {"url": f"{base}/exit"}}},
            monitoring={"alertmanager": {"url": base, "matchers": [{"name": "app", "value": "web"}]}},
            verification={"http": [{"name": "health", "url": f"{base}/health"}],
                          "tls": [{"name": "served", "host": "127.0.0.1", "port": listener.port,
                                   "serverName": "www.booking.test"}]},
            notifications=[
                {"name": "chat", "slack": {"webhookSecretRef": {"name": "ops-slack", "key": "url"}}},
                {"name": "mail", "email": {"smtp": {"host": "127.0.0.1", "port": listener.port,
                                                    "security": "None"},
                                           "from": "rewind@example.com", "to": ["ops@example.com"]}}]))
        rb = wait_phase(api_client, namespace, "fenced", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
        assert rb["status"]["phase"] == "Failed", rb["status"]
        planned = condition(rb, "Planned")
        assert planned["reason"] == "EgressDenied", planned
        for what in ("HTTP check health", "TLS check served", "the maintenance enter hook",
                     "the maintenance exit hook", "the Alertmanager", "notification mail's SMTP server"):
            assert what in planned["message"], (what, planned["message"])
        assert f"127.0.0.1 port {listener.port}" in planned["message"]
        # The Failed notification to Slack is refused when it is sent: a failed attempt, named by
        # its Secret, not by its URL.
        chat = wait_for("the Slack notification to fail", lambda: next(
            (n for n in get_rollback(api_client, namespace, "fenced")["status"].get("notifications", [])
             if n["channel"] == "chat" and n["state"] == "Failed"), None), timeout=60)
        assert "Secret ops-slack key url" in chat["lastError"] and "egress policy" in chat["lastError"]
        assert chat["attempts"] == 1
        assert CANARY not in _everything(api_client, namespace, "fenced")
        after = deployment_dict(apps, namespace, "web")
        assert after["spec"]["template"] == before["spec"]["template"]
        assert audit_writes(cluster, namespace, "deployments") in ([], None)
        assert listener.accepted == 0
    finally:
        listener.close()


class Canary(BaseHTTPRequestHandler):
    """Answers every request with the canary somewhere: in a body, a JSON value, an error text,
    a redirect's target, a Slack-like error code."""

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: str, headers: dict | None = None):
        data = body.encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/body":
            self._send(200, f"all good {CANARY}")
        elif self.path == "/json":
            self._send(200, json.dumps({"status": CANARY, "n": int(CANARY_NUMBER)}))
        elif self.path == "/redirect":
            self._send(302, CANARY, {"Location": f"http://{CANARY}.example.com/{CANARY}"})
        else:
            self._send(503, f"error: {CANARY}")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(400, CANARY)          # Slack answers its errors as one such word


def test_no_answer_of_an_endpoint_reaches_status_or_events(cluster, api_client, namespace, operator):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Canary)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    base = f"http://127.0.0.1:{port}"
    try:
        _secret(api_client, namespace, "chat-hook", f"{base}/slack")
        _secret(api_client, namespace, "ops-hook", f"{base}/hook")
        deploy_revisions(client.AppsV1Api(api_client), namespace, "web", IMAGES)
        kubectl_apply(cluster, namespace, rollback(
            "quiet", [{"name": "web"}],
            verification={"onFailure": "Warn", "http": [
                {"name": "body", "url": f"{base}/body", "bodyContains": "healthy"},
                {"name": "json", "url": f"{base}/json", "jsonPath": "$.status", "jsonEquals": "ok"},
                {"name": "number", "url": f"{base}/json", "jsonPath": "$.n", "jsonEquals": "1"},
                {"name": "error", "url": f"{base}/error"},
                {"name": "redirect", "url": f"{base}/redirect"}],
                "tls": [{"name": "plain", "host": "127.0.0.1", "port": port, "serverName": "www.booking.test"}]},
            notifications=[{"name": "chat", "slack": {"webhookSecretRef": {"name": "chat-hook", "key": "url"}}},
                           {"name": "ops", "webhook": {"urlSecretRef": {"name": "ops-hook", "key": "url"}}}]))
        rb = wait_phase(api_client, namespace, "quiet", {"Succeeded", "Failed", "Interrupted"}, timeout=120)
        wait_for("the notifications to fail", lambda: (lambda ns: ns and all(
            n["state"] == "Failed" for n in ns))(get_rollback(api_client, namespace, "quiet")["status"].get(
                "notifications")), timeout=60)
    finally:
        server.shutdown()
    assert rb["status"]["phase"] == "Succeeded", rb["status"]       # onFailure: Warn
    results = {v["name"].split("/")[-1]: v for v in rb["status"]["verification"]}
    assert all(r["outcome"] == "Failed" for r in results.values()), results
    assert "does not contain the expected text" in results["body"]["detail"]
    assert "JSON value at $.status differed" in results["json"]["detail"]
    assert "answered 503, expected 200" in results["error"]["detail"]
    assert "answered 302, expected 200" in results["redirect"]["detail"]
    assert "no TLS handshake" in results["plain"]["detail"]
    seen = _everything(api_client, namespace, "quiet")
    assert CANARY not in seen and CANARY_NUMBER not in seen
    assert "answered 400" in seen


@pytest.mark.postgres
def test_an_sql_check_cannot_echo_a_value(cluster, api_client, namespace, operator, postgres, database):
    """Queries shaped to leak a row (a compared number, a text, a name built from a row that a
    server error would quote) report pass/fail and counts only."""
    with postgres.connect(database) as conn:
        conn.execute("CREATE TABLE vault (secret text, n int)")
        conn.execute("INSERT INTO vault VALUES (%s, %s)", [CANARY, int(CANARY_NUMBER)])
        conn.commit()
    _secret(api_client, namespace, "checks-db", postgres.dsn(database))
    conn = {"secretRef": {"name": "checks-db", "key": "url"}}
    deploy_revisions(client.AppsV1Api(api_client), namespace, "web", IMAGES)
    kubectl_apply(cluster, namespace, rollback("vault", [{"name": "web"}], verification={"onFailure": "Warn", "sql": [
        {"name": "number", "connection": conn, "query": "SELECT n FROM vault", "equals": "1"},
        {"name": "letter", "connection": conn, "query": "SELECT ascii(substr(secret, 1, 1)) * 1000 + n FROM vault",
         "equals": "0"},
        {"name": "truth", "connection": conn, "query": "SELECT n - n, secret FROM vault"},
        {"name": "text", "connection": conn, "query": "SELECT secret FROM vault"},
        {"name": "cast", "connection": conn, "query": "SELECT secret::int FROM vault"},
        {"name": "named", "connection": conn,
         "query": "SELECT * FROM query_to_xml(format('SELECT * FROM %I', (SELECT secret FROM vault)), true, true, '')"},
        {"name": "matches", "connection": conn, "query": "SELECT secret FROM vault", "equals": CANARY[:-1] + "x"},
    ]}))
    rb = wait_phase(api_client, namespace, "vault", {"Succeeded", "Failed", "Interrupted"}, timeout=120)
    assert rb["status"]["phase"] == "Succeeded", rb["status"]
    results = {v["name"].split("/")[-1]: v for v in rb["status"]["verification"]}
    assert results["number"]["outcome"] == "Failed"
    assert "differs from the expected value" in results["number"]["detail"]
    assert results["letter"]["outcome"] == "Failed"
    assert results["truth"]["outcome"] == "Failed" and "false, zero or NULL" in results["truth"]["detail"]
    assert results["text"]["outcome"] == "Inconclusive"
    assert results["cast"]["outcome"] == "Inconclusive" and "22P02" in results["cast"]["detail"]
    assert results["named"]["outcome"] == "Inconclusive" and "42P01" in results["named"]["detail"]
    assert results["matches"]["outcome"] == "Failed"
    seen = _everything(api_client, namespace, "vault")
    ascii_echo = str(ord(CANARY[0]) * 1000 + int(CANARY_NUMBER))
    for leaked in (CANARY, CANARY_NUMBER, ascii_echo):
        assert leaked not in seen and leaked not in operator.output(), leaked
