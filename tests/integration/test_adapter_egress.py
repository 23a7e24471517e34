"""Every adapter that connects anywhere checks the policy's egress rules first: a local server the
rules do not allow gets no connection at all (counted where it listens) and the adapter reports
EgressDenied, while the same server under loopback rules is reached. One case per adapter family:
HTTP checks and hooks, Slack, webhooks, e-mail, served TLS certificates, Alertmanager, SQL checks."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import pytest

import httpservers
from loopback import LOOPBACK, Relay
from rewind import egress
from rewind.adapters import alertmanager, http, notify, sqlcheck, tls
from rewind.api.policy import EgressRule
from rewind.api.v1alpha1 import HttpCheck, SmtpServer, SqlCheck
from rewind_testbed.certs import issue
from rewind_testbed.receivers import SmtpReceiver, WebhookReceiver

SECRET = "Secret ops-hooks key url"

DENYING = {
    "no rule": [],
    "any address": [EgressRule(cidr="0.0.0.0/0"), EgressRule(cidr="::/0")],     # opens no loopback
    "loopback on another port": [EgressRule(cidr="127.0.0.0/8", ports=[1]), EgressRule(cidr="::1/128", ports=[1])],
}


@dataclass
class Family:
    """A server (`target`) and one use of an adapter against `port` under `rules`: (ok, detail);
    EgressDenied may be raised. `secret`: the URL is treated as read from that Secret."""

    target: tuple[str, int]
    use: Callable[[int, list], tuple[bool, str]]
    secret: str | None = None


def _http_check(stack, request) -> Family:
    server, url = httpservers.start()
    stack.callback(server.shutdown)

    def use(port, rules):
        m = http.measure(HttpCheck.model_validate({"name": "c", "url": f"http://127.0.0.1:{port}/api/health"}), rules)
        return m.ok, m.detail
    return Family(server.server_address, use)


def _hook(stack, request) -> Family:
    server, url = httpservers.start()
    stack.callback(server.shutdown)

    def use(port, rules):
        ok, _, detail = http.call(f"http://127.0.0.1:{port}/api/health", "GET", None, timeout=5,
                                  rules=rules, secret=SECRET)
        return ok, detail
    return Family(server.server_address, use, SECRET)


def _slack(stack, request) -> Family:
    receiver = stack.enter_context(WebhookReceiver(slack=True))

    def use(port, rules):
        d = notify.send_slack(f"http://127.0.0.1:{port}/services/T0KEN", "hello", rules=rules, secret=SECRET)
        return d.ok, d.detail
    return Family(("127.0.0.1", receiver.port), use, SECRET)


def _webhook(stack, request) -> Family:
    receiver = stack.enter_context(WebhookReceiver())

    def use(port, rules):
        d = notify.send_webhook(f"http://127.0.0.1:{port}/hook", {"n": 1}, "key-1", rules=rules, secret=SECRET)
        return d.ok, d.detail
    return Family(("127.0.0.1", receiver.port), use, SECRET)


def _email(stack, request) -> Family:
    receiver = stack.enter_context(SmtpReceiver())

    def use(port, rules):
        d = notify.send_email(SmtpServer(host="127.0.0.1", port=port, security="None"),
                              sender="rewind@example.com", to=["oncall@example.com"], subject="s",
                              body="b", message_id="<m-1@rewind.dev>", timeout=3, rules=rules)
        return d.ok, d.detail
    return Family((receiver.host, receiver.port), use)


def _tls(stack, request) -> Family:
    tmp = request.getfixturevalue("tmp_path")
    leaf = issue("localhost", hosts=["localhost"])
    (tmp / "c.pem").write_bytes(leaf.cert_pem)
    (tmp / "k.pem").write_bytes(leaf.key_pem)
    server, _ = httpservers.start(str(tmp / "c.pem"), str(tmp / "k.pem"))
    stack.callback(server.shutdown)

    def use(port, rules):
        served = tls.served("127.0.0.1", port, "localhost", rules=rules, timeout=5)
        return tls.fingerprint(served) == tls.fingerprint(leaf.cert), "served"
    return Family(server.server_address, use)


def _alertmanager(stack, request) -> Family:
    am = request.getfixturevalue("alertmanager")

    def use(port, rules):
        found = alertmanager.find_silence(f"http://127.0.0.1:{port}", "no-such-marker", timeout=5, rules=rules)
        return found is None, "listed"
    return Family(("127.0.0.1", am.port), use)


def _sql(stack, request) -> Family:
    postgres = request.getfixturevalue("postgres")

    def use(port, rules):
        dsn = postgres.dsn().replace(f":{postgres.port}/", f":{port}/")
        m = sqlcheck.measure(dsn, SqlCheck.model_validate({"name": "c", "query": "SELECT true"}), rules)
        return m.ok, m.detail
    return Family((postgres.host, postgres.port), use)


FAMILIES = {"HTTP check": _http_check, "hook": _hook, "Slack": _slack, "webhook": _webhook,
            "e-mail": _email, "TLS": _tls, "Alertmanager": _alertmanager, "SQL check": _sql}


@pytest.fixture(params=[pytest.param(name, marks=[pytest.mark.postgres] if name == "SQL check" else [])
                        for name in FAMILIES])
def family(request):
    with contextlib.ExitStack() as stack:
        yield FAMILIES[request.param](stack, request)


def _refusal(family: Family, port: int, rules) -> str:
    """What the adapter said: a raised EgressDenied's message, or the detail of a failure."""
    try:
        ok, detail = family.use(port, rules)
    except egress.EgressDenied as e:
        return e.message
    assert not ok, detail
    return detail


@pytest.mark.parametrize("rules", DENYING.values(), ids=DENYING.keys())
def test_a_server_outside_the_rules_gets_no_connection(family, rules):
    with Relay(family.target) as relay:
        with pytest.raises(egress.EgressDenied) as denied:
            egress.resolve("127.0.0.1", relay.port, rules, secret=family.secret)
        said = _refusal(family, relay.port, rules)
        assert relay.connections() == 0
    assert denied.value.message in said, said
    if family.secret:
        assert "127.0.0.1" not in said, said


def test_the_same_server_inside_the_rules_is_reached(family):
    with Relay(family.target) as relay:
        ok, detail = family.use(relay.port, LOOPBACK)
        assert ok, detail
        assert relay.connections() >= 1
