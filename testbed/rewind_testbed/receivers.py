"""Real local receivers of notifications, on 127.0.0.1: an HTTP webhook (also Slack-like) and an
SMTP server (aiosmtpd). Each records what it got, says what a receiver that drops repeats would
have acted on, and fails on request: an error answer, a lost answer, a slow answer. Thread-safe,
so the tests and an operator under test can use one from any thread."""

from __future__ import annotations

import collections
import email
import email.policy
import json
import ssl
import tempfile
import threading
from dataclasses import dataclass
from email.message import EmailMessage, Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

HOST = "127.0.0.1"


def server_tls_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server's TLS context serving `cert_pem` (the chain, leaf first) with `key_pem`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "cert.pem").write_bytes(cert_pem)
        (Path(d) / "key.pem").write_bytes(key_pem)
        ctx.load_cert_chain(Path(d) / "cert.pem", Path(d) / "key.pem")
    return ctx


def _first_of_each(items: list, key: Callable[[Any], str | None]) -> list:
    """The items, less those whose key an earlier item had (items without a key all stay)."""
    seen: set[str] = set()
    kept = []
    for item in items:
        k = key(item)
        if k is None or k not in seen:
            kept.append(item)
            if k is not None:
                seen.add(k)
    return kept


@dataclass(frozen=True)
class _Fault:
    kind: str             # "fail", "drop" or "slow"
    code: int = 0         # the status or SMTP reply of a "fail"
    body: str = ""
    seconds: float = 0.0
    at: str = ""          # the SMTP command it answers; "" for HTTP


class _Log:
    """What a receiver got, and the faults still to inject, in the order they were asked for."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: list = []
        self._faults: collections.deque[_Fault] = collections.deque()

    def add_faults(self, n: int, fault: _Fault) -> None:
        with self._lock:
            self._faults.extend([fault] * n)

    def take_fault(self, at: str = "") -> _Fault | None:
        with self._lock:
            if self._faults and self._faults[0].at == at:
                return self._faults.popleft()
            return None

    def record(self, item) -> None:
        with self._lock:
            self._items.append(item)

    def items(self) -> list:
        with self._lock:
            return list(self._items)


# --- webhooks ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One request as received, and the status answered (None: closed without an answer)."""

    method: str
    path: str
    headers: Message      # case-insensitive: headers["idempotency-key"]
    body: bytes
    payload: Any          # the body parsed as JSON; None if it is not JSON
    answer: int | None

    @property
    def key(self) -> str | None:
        return self.headers.get("Idempotency-Key")

    @property
    def acted_on(self) -> bool:
        """A receiver acts on what it answers 2xx, and on what it got but could not answer."""
        return self.answer is None or 200 <= self.answer < 300


class _WebhookHandler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, closed after the answer (or instead of it).

    def log_message(self, *args):
        pass

    def do_POST(self):
        receiver: WebhookReceiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = receiver._log.take_fault()
        kind = fault.kind if fault else "ok"
        status = None if kind == "drop" else fault.code if kind == "fail" else 200
        receiver._log.record(Request(self.command, self.path, self.headers, body, _json(body), status))
        if kind == "drop":
            return
        if kind == "slow":
            receiver._stopping.wait(fault.seconds)
        text = fault.body if kind == "fail" else "ok" if receiver.slack else '{"ok": true}'
        data = text.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if receiver.slack else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass              # the client stopped waiting


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class WebhookReceiver:
    """An HTTP receiver of JSON POSTs. It answers 200 `{"ok": true}`, or like a Slack incoming
    webhook 200 `ok` with `slack=True`."""

    def __init__(self, *, slack: bool = False):
        self.slack = slack
        self._log = _Log()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer((HOST, 0), _WebhookHandler)
        self._server.receiver = self
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://{HOST}:{self.port}{path}"

    @property
    def requests(self) -> list[Request]:
        return self._log.items()

    @property
    def delivered(self) -> list[Request]:
        """What a receiver that drops repeats would act on: the first request acted on of each
        Idempotency-Key (and every one acted on without a key)."""
        return _first_of_each([r for r in self.requests if r.acted_on], lambda r: r.key)

    def fail_next(self, n: int = 1, status: int = 503, body: str = "") -> None:
        """Answer the next n requests with `status` (and `body`); they are not acted on."""
        self._log.add_faults(n, _Fault("fail", code=status, body=body))

    def drop_next(self, n: int = 1) -> None:
        """Read and record the next n requests, then close without answering: the receiver acted,
        the answer was lost."""
        self._log.add_faults(n, _Fault("drop"))

    def slow_next(self, n: int = 1, seconds: float = 2.0) -> None:
        """Answer the next n requests (200, acted on) only after `seconds`."""
        self._log.add_faults(n, _Fault("slow", seconds=seconds))

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- e-mail ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mail:
    """One message the server accepted (or got, and lost the answer to)."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage     # message["Subject"], message.get_content()
    tls: bool                 # the session was encrypted
    user: str | None          # who authenticated, if anyone

    @property
    def message_id(self) -> str | None:
        return self.message["Message-ID"]


class _SmtpHandler:
    def __init__(self, log: _Log, auth_required: bool):
        self.log, self.auth_required = log, auth_required

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        # Here, not aiosmtpd's auth_required: that one warns when AUTH is over implicit TLS.
        if self.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        fault = self.log.take_fault("RCPT")
        if fault:
            return f"{fault.code} Refused by the test"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        fault = self.log.take_fault("DATA")
        if fault and fault.kind == "fail":
            return f"{fault.code} Refused by the test"
        self.log.record(Mail(
            envelope.mail_from, list(envelope.rcpt_tos),
            email.message_from_bytes(envelope.content, policy=email.policy.default),
            server.transport.get_extra_info("ssl_object") is not None, session.auth_data))
        if fault:                 # "drop": accepted, and the answer is lost
            server.transport.close()
        return "250 OK"


class _Controller(Controller):
    """aiosmtpd's Controller on a port the kernel picks (no race for a free one), counting the
    connections it gets."""

    connections = 0

    async def _create_server(self):
        server = await self.loop.create_server(self._factory_invoker, host=self.hostname, port=0,
                                               ssl=self.ssl_context)
        self.port = server.sockets[0].getsockname()[1]
        return server

    def factory(self):
        self.connections += 1
        return super().factory()


class SmtpReceiver:
    """An SMTP server. With `tls_context` it offers STARTTLS and requires it (or, with
    `implicit_tls`, speaks TLS from the first byte); with `credentials` (username, password) it
    requires AUTH, offered over TLS only."""

    host = HOST

    def __init__(self, *, tls_context: ssl.SSLContext | None = None, implicit_tls: bool = False,
                 credentials: tuple[str, str] | None = None):
        self._log = _Log()
        self._credentials = credentials
        smtp = {"tls_context": tls_context, "require_starttls": tls_context is not None}
        if implicit_tls:
            # TLS from the first byte, so no STARTTLS; aiosmtpd 1.4 counts only STARTTLS as TLS
            # when it decides whether to offer AUTH.
            smtp = {"auth_require_tls": False}
        if credentials:
            smtp["authenticator"] = self._authenticate
        self._controller = _Controller(
            _SmtpHandler(self._log, auth_required=credentials is not None), hostname=HOST,
            server_hostname="rewind-test-smtp", ssl_context=tls_context if implicit_tls else None, **smtp)
        self._controller.start()
        self._controller.connections = 0      # not the controller's own check that it is up

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and self._credentials == (
            auth_data.login.decode(), auth_data.password.decode())
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login.decode() if ok else None)

    @property
    def port(self) -> int:
        return self._controller.port

    @property
    def connections(self) -> int:
        """How many connections clients made."""
        return self._controller.connections

    @property
    def messages(self) -> list[Mail]:
        return self._log.items()

    @property
    def unique(self) -> list[Mail]:
        """What a mail system that drops repeats would deliver: the first message of each Message-ID."""
        return _first_of_each(self.messages, lambda m: m.message_id)

    def fail_next(self, n: int = 1, code: int = 451, at: str = "DATA") -> None:
        """Answer the next n `at` commands (DATA, or RCPT: one per recipient) with `code`."""
        self._log.add_faults(n, _Fault("fail", code=code, at=at))

    def drop_next(self, n: int = 1) -> None:
        """Accept the next n messages and close the connection instead of answering DATA."""
        self._log.add_faults(n, _Fault("drop", at="DATA"))

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpReceiver:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
