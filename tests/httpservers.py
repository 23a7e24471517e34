"""Local HTTP(S) servers for the verification tests: they answer well, slowly, with errors, with
huge or never-ending bodies, or with redirects to other hosts. Loopback only."""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        if self.path == "/api/health":
            self._send(200, json.dumps({"status": "ok", "checks": [{"name": "db", "ok": True}]}))
        elif self.path == "/slow":
            time.sleep(1.5)
            self._send(200, "late")
        elif self.path == "/error":
            self._send(500, "boom")
        elif self.path == "/huge":
            self._send(200, "x" * (3 * 1024 * 1024))
        elif self.path == "/forever":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(100_000):
                    self.wfile.write(b"4000\r\n" + b"y" * 0x4000 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://elsewhere.example.com/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/lying-json":          # says JSON, sends a login page
            self._raw(200, b"<html><body>please log in: session-page</body></html>",
                      {"Content-Type": "application/json"})
        elif self.path == "/json-as-html":        # JSON under another name
            self._raw(200, json.dumps({"status": "ok"}).encode(), {"Content-Type": "text/html"})
        elif self.path == "/false-gzip":          # says gzip, is not
            self._raw(200, b"not-gzip-at-all " * 64, {"Content-Type": "application/json",
                                                      "Content-Encoding": "gzip"})
        elif self.path == "/gzip-bomb":           # 64 KiB on the wire, 64 MiB once inflated
            self._raw(200, Handler.bomb(), {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        elif self.path == "/not-utf8":            # says UTF-8 JSON, sends Latin-1 bytes
            self._raw(200, '{"status": "ok", "note": "caf\u00e9"}'.encode("latin-1"),
                      {"Content-Type": "application/json; charset=utf-8"})
        elif self.path == "/short-body":          # promises more than it sends, then hangs up
            self._raw(200, b'{"status": "o', {"Content-Type": "application/json", "Content-Length": "4096"})
            self.close_connection = True
        elif self.path == "/flaky":
            n = Handler.hits[self.path]
            self._send(500 if n % 2 == 0 else 200, "sometimes")
        else:
            self._send(404, "no")

    _bomb: bytes | None = None

    @classmethod
    def bomb(cls) -> bytes:
        if cls._bomb is None:
            import gzip
            cls._bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024), compresslevel=9)
        return cls._bomb

    def _raw(self, status: int, data: bytes, headers: dict[str, str]):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, status: int, body: str):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body.startswith("{") else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def start(tls_cert: str | None = None, tls_key: str | None = None) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls_cert, tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"
