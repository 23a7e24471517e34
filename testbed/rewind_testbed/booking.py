"""A stand-in for the booking app's HTTP side, for the demo and the end-to-end test: there is no
container runtime here, so the app's pods never really serve. The stand-in answers as the real app
would, from the cluster's real state: `/api/health` is `ok` only while the Deployment runs the good
release (2.3.0) and `degraded` with the broken one, `/api/oauth/google/status` says `connected`
with the good release; and it takes the seed's maintenance calls (`/api/maintenance/*`),
recording each. Loopback only."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubernetes import client, config

GOOD, BAD = "2.3.0", "2.4.0"


class BookingApp:
    def __init__(self, kubeconfig: str, namespace: str, deployment: str = "appointmentbooking"):
        api = config.new_client_from_config(config_file=str(kubeconfig))
        self._apps = client.AppsV1Api(api)
        self.namespace, self.deployment = namespace, deployment
        self.calls: list[tuple[str, str]] = []        # (method, path), in order
        self.bookings_enabled = True
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _send(self, status: int, doc: dict):
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                app.calls.append(("GET", self.path))
                release = app.release()
                if self.path == "/api/health":
                    ok = release == GOOD
                    self._send(200 if ok else 503, {"status": "ok" if ok else "degraded", "release": release,
                                                    "bookings": "enabled" if app.bookings_enabled else "disabled"})
                elif self.path == "/api/oauth/google/status":
                    self._send(200, {"provider": "google",
                                     "status": "connected" if release == GOOD else "callback-mismatch"})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                app.calls.append(("POST", self.path))
                if self.path == "/api/maintenance/disable-bookings":
                    app.bookings_enabled = False
                elif self.path == "/api/maintenance/enable-bookings":
                    app.bookings_enabled = True
                elif self.path != "/api/maintenance/notify-users":
                    return self._send(404, {"error": "not found"})
                self._send(200, {"bookings": "enabled" if app.bookings_enabled else "disabled"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def release(self) -> str:
        d = self._apps.read_namespaced_deployment(self.deployment, self.namespace)
        return d.spec.template.spec.containers[0].image.rsplit(":", 1)[-1]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


IN_CLUSTER_APP = "http://appointmentbooking.booking.svc"


def localize(manifest: dict, *, namespace: str, app_url: str, alertmanager_url: str, smtp_port: int,
             smtp_ca_secret: str | None = None) -> dict:
    """The example Rollback with its in-cluster addresses pointed at the local stand-ins: the app,
    Alertmanager and the SMTP server (whose CA, a test CA, is then trusted from a Secret)."""
    m = json.loads(json.dumps(manifest))
    m["metadata"]["namespace"] = namespace
    spec = m["spec"]

    def local(call: dict) -> None:
        if call.get("url", "").startswith(IN_CLUSTER_APP):
            call["url"] = app_url + call["url"][len(IN_CLUSTER_APP):]

    for call in (spec.get("maintenance", {}).get("http") or {}).values():
        local(call)
    for check in (spec.get("verification") or {}).get("http") or []:
        local(check)
    if spec.get("monitoring", {}).get("alertmanager"):
        spec["monitoring"]["alertmanager"]["url"] = alertmanager_url
        for matcher in spec["monitoring"]["alertmanager"]["matchers"]:
            if matcher["name"] == "namespace":      # a silence stays in the Rollback's namespace
                matcher["value"] = namespace
    for n in spec.get("notifications") or []:
        if "email" in n:
            n["email"]["smtp"] |= {"host": "127.0.0.1", "port": smtp_port}
            if smtp_ca_secret:
                n["email"]["smtp"]["caSecretRef"] = {"name": smtp_ca_secret, "key": "ca.crt"}
    return m
