"""A fault-injecting HTTPS proxy between a client (the operator) and the kube-apiserver, for the
tests of what Rewind does when the API misbehaves.

    proxy = FaultProxy.for_kubeconfig(operator_kubeconfig, work_dir).start()
    kubeconfig = proxy.kubeconfig(work_dir / "via-proxy.kubeconfig")   # the client goes through it
    proxy.add(Rule("status", status=503, every=3))       # every third request answered 503
    proxy.add(Rule("reset", method="PATCH", times=1))    # the next PATCH: connection reset, not sent
    proxy.add(Rule("lose-response", method="PATCH"))     # sent to the API server, answer never arrives
    proxy.add(Rule("gone", watch=True, every=2))         # every second watch ends with 410 Gone
    proxy.add(Rule("delay", delay=2.0))                  # every request 2 s late
    proxy.outage(True)  ...  proxy.outage(False)         # "the API server is down": every connection cut, new ones reset
    proxy.blackhole(True) ... proxy.blackhole(False)     # requests get no answer until it ends

It terminates TLS with its own CA (the kubeconfig it writes trusts it), and opens a TLS
connection to the real API server per request, verified against the API server's CA, passing the
client's bearer token on (a client certificate cannot be passed on: use a token kubeconfig).
Responses are passed on as they arrive, so watches stream through. What it injected is in
`proxy.injected` (time, action, method, path), for the test's own report.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import random
import re
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ACTIONS = {"status", "reset", "lose-response", "gone", "delay"}
REASONS = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te",
              "upgrade", "host"}


@dataclass
class Rule:
    """What to do with a request that matches: `method` and `path` are regular expressions (the
    path with its query); `watch` True/False limits it to watch requests or to the others; every
    `every`th match is hit (or, with `probability`, each match with that chance, from a seeded
    generator: a fixed "every Nth" can fall in step with a client's own rhythm and hit the same
    request every time), at most `times` times (None: no limit)."""

    action: str
    method: str | None = None
    path: str | None = None
    watch: bool | None = None
    every: int = 1
    times: int | None = None
    status: int = 503
    retry_after: int | None = None
    delay: float = 0.0
    probability: float | None = None
    seed: int = 0
    seen: int = 0
    hits: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; one of {sorted(ACTIONS)}")
        self._random = random.Random(self.seed)

    def matches(self, method: str, target: str, is_watch: bool) -> bool:
        if self.method and not re.fullmatch(self.method, method):
            return False
        if self.path and not re.search(self.path, target):
            return False
        if self.watch is not None and self.watch != is_watch:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.seen += 1
        if self.probability is not None:
            if self._random.random() >= self.probability:
                return False
        elif self.seen % self.every:
            return False
        self.hits += 1
        return True


@dataclass
class Upstream:
    host: str
    port: int
    ca_pem: bytes


def _is_watch(target: str) -> bool:
    return bool(re.search(r"[?&]watch=(1|true)(&|$)", target))


def _proxy_tls(directory: Path) -> tuple[Path, Path, bytes]:
    """A CA and a server certificate for 127.0.0.1 and localhost; (cert chain, key, CA PEM)."""
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rewind fault proxy CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem)
    crt, key_path = directory / "proxy.crt", directory / "proxy.key"
    crt.write_bytes(leaf.public_bytes(pem) + ca_pem)
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return crt, key_path, ca_pem


class FaultProxy:
    def __init__(self, source_kubeconfig: Path, upstream: Upstream, directory: Path):
        self.source_kubeconfig, self.upstream, self.directory = source_kubeconfig, upstream, directory
        self.rules: list[Rule] = []
        self.injected: list[tuple[float, str, str, str]] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._outage = False
        self._blackhole = asyncio.Event()     # set: requests flow; cleared: they are held
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    # --- set-up ---------------------------------------------------------------------------------

    @classmethod
    def for_kubeconfig(cls, kubeconfig: Path, directory: Path | None = None) -> "FaultProxy":
        """A proxy to the API server `kubeconfig` names (its current context's cluster)."""
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == cfg["current-context"])
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        url = urlsplit(cluster["server"])
        if "certificate-authority-data" in cluster:
            ca = base64.b64decode(cluster["certificate-authority-data"])
        else:
            ca = Path(cluster["certificate-authority"]).read_bytes()
        directory = Path(directory or tempfile.mkdtemp(prefix="rewind-faultproxy-"))
        directory.mkdir(parents=True, exist_ok=True)
        return cls(Path(kubeconfig), Upstream(url.hostname, url.port or 443, ca), directory)

    def start(self) -> "FaultProxy":
        crt, key, self.ca_pem = _proxy_tls(self.directory)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(crt, key)
        self._client_ctx = ssl.create_default_context(cadata=self.upstream.ca_pem.decode())
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._blackhole = asyncio.Event()
            self._blackhole.set()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=server_ctx))
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path) -> Path:
        """The source kubeconfig with its cluster's server replaced by the proxy (and its CA)."""
        cfg = yaml.safe_load(self.source_kubeconfig.read_text())
        for c in cfg["clusters"]:
            c["cluster"].pop("certificate-authority", None)
            c["cluster"]["server"] = self.url
            c["cluster"]["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        if self._loop is None:
            return

        async def close() -> None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    # --- faults ---------------------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def outage(self, on: bool) -> None:
        """On: every open connection is cut and every new one reset, as when the API server is down."""
        self._outage = on
        if on and self._loop is not None:
            async def cut() -> None:
                for w in list(self._writers):
                    w.transport.abort()
            asyncio.run_coroutine_threadsafe(cut(), self._loop).result(10)
        self._note("outage-start" if on else "outage-end", "", "")

    def blackhole(self, on: bool) -> None:
        """On: requests (and the responses still streaming) are held without an answer; off: they go on."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._blackhole.clear if on else self._blackhole.set)
        self._note("blackhole-start" if on else "blackhole-end", "", "")

    def count(self, action: str) -> int:
        return sum(1 for i in self.injected if i[1] == action)

    def _note(self, action: str, method: str, target: str) -> None:
        with self._lock:
            self.injected.append((time.time(), action, method, target))

    def _rule_for(self, method: str, target: str) -> Rule | None:
        with self._lock:
            watch = _is_watch(target)
            return next((r for r in self.rules if r.matches(method, target, watch)), None)

    # --- serving ----------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_connection(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()      # the proxy stops: the connection goes with it, quietly

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._outage:
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
                names = {k.lower(): v for k, v in headers}
                body = b""
                if "content-length" in names or names.get("transfer-encoding", "").lower() == "chunked":
                    parts: list[bytes] = []

                    async def keep(piece: bytes) -> None:
                        parts.append(piece)
                    await _relay(reader, names, keep)     # the same framing as a response's
                    body = b"".join(parts)
                self.requests += 1
                await self._blackhole.wait()
                if self._outage:
                    writer.transport.abort()
                    return
                rule = self._rule_for(method, target)
                if rule is not None:
                    self._note(rule.action, method, target)
                    if rule.action == "reset":
                        writer.transport.abort()
                        return
                    if rule.action == "status":
                        await _answer_status(writer, rule.status, rule.retry_after)
                        continue
                    if rule.action == "gone" and _is_watch(target):
                        await _answer_gone(writer)
                        continue
                    if rule.action == "delay":
                        await asyncio.sleep(rule.delay)
                keep = await self._forward(method, target, headers, body, writer,
                                           lose_response=rule is not None and rule.action == "lose-response")
                if not keep:
                    return
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _forward(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes,
                       writer: asyncio.StreamWriter, lose_response: bool) -> bool:
        """Sends the request to the API server and the answer back; False when the client's
        connection is to be closed."""
        try:
            up_r, up_w = await asyncio.open_connection(self.upstream.host, self.upstream.port,
                                                       ssl=self._client_ctx,
                                                       server_hostname=self.upstream.host)
        except OSError:
            await _answer_status(writer, 503, None, "the fault proxy cannot reach the API server")
            return True
        try:
            out = [f"{method} {target} HTTP/1.1", f"Host: {self.upstream.host}:{self.upstream.port}",
                   "Connection: close", f"Content-Length: {len(body)}"]
            out += [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP]
            up_w.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            await up_w.drain()
            status_head = await up_r.readuntil(b"\r\n\r\n")
            if lose_response:
                # The API server did it; the client never hears so (a connection lost after the write).
                writer.transport.abort()
                return False
            lines = status_head.decode("latin-1").split("\r\n")
            resp_headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
            names = {k.lower(): v for k, v in resp_headers}
            head = [lines[0]] + [f"{k}: {v}" for k, v in resp_headers if k.lower() not in HOP_BY_HOP]
            head += ["Transfer-Encoding: chunked", "Connection: keep-alive"]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            async def send(piece: bytes) -> None:
                await self._blackhole.wait()
                if self._outage:
                    raise ConnectionAbortedError("outage")
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
            await _relay(up_r, names, send)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            writer.transport.abort()
            return False
        finally:
            up_w.transport.abort()


async def _relay(reader: asyncio.StreamReader, names: dict[str, str], send) -> None:
    """Passes the response body on as it arrives (`await send(piece)`), whatever its framing."""
    if "content-length" in names:
        left = int(names["content-length"])
        while left > 0:
            piece = await reader.read(min(left, 65536))
            if not piece:
                return
            left -= len(piece)
            await send(piece)
    elif names.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            await send(await reader.readexactly(size))
            await reader.readline()
    else:
        while True:
            piece = await reader.read(65536)
            if not piece:
                return
            await send(piece)


async def _answer_status(writer: asyncio.StreamWriter, code: int, retry_after: int | None,
                         message: str = "injected by the fault proxy") -> None:
    reason = REASONS.get(code, "InternalError")
    body = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()
    head = [f"HTTP/1.1 {code} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()


async def _answer_gone(writer: asyncio.StreamWriter) -> None:
    """A watch that ends at once with 410 Gone, as when its resourceVersion is too old."""
    event = json.dumps({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version (injected by the fault proxy)", "reason": "Expired",
        "code": 410}}).encode() + b"\n"
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + f"{len(event):x}\r\n".encode() + event + b"\r\n0\r\n\r\n")
    await writer.drain()
