"""A local TLS server that serves what a Kubernetes TLS Secret holds now, for the certificate
tests: it re-reads the Secret every 0.2 s, so a restored certificate is served within a moment,
as a real server with a reload would. Loopback only."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from pathlib import Path


class ReloadingTlsServer:
    """Serves a TLS Secret's tls.crt/tls.key on 127.0.0.1, picking up changes within a moment."""

    def __init__(self, core, namespace: str, secret: str, workdir: Path):
        self.core, self.namespace, self.secret, self.dir = core, namespace, secret, workdir
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.version = None
        self.stopping = threading.Event()
        self._reload()
        threading.Thread(target=self._watch, daemon=True).start()
        threading.Thread(target=self._serve, daemon=True).start()

    def _reload(self):
        s = self.core.read_namespaced_secret(self.secret, self.namespace)
        if s.metadata.resource_version != self.version:
            (self.dir / "tls.crt").write_bytes(base64.b64decode(s.data["tls.crt"]))
            (self.dir / "tls.key").write_bytes(base64.b64decode(s.data["tls.key"]))
            self.version = s.metadata.resource_version

    def _watch(self):
        while not self.stopping.wait(0.2):
            try:
                self._reload()
            except Exception:  # noqa: BLE001 - the test fails on what is served, not here
                pass

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(self.dir / "tls.crt", self.dir / "tls.key")
                with ctx.wrap_socket(conn, server_side=True) as t:
                    t.recv(1)
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self):
        self.stopping.set()
        self.sock.close()
