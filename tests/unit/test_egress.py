"""The egress rules, without a cluster: special ranges open only to a cidr rule inside them, host
rules checked after resolution, ports, IPv4-mapped addresses, and connections pinned to the
address that was checked."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rewind import egress
from rewind.api.policy import EgressRule


def rules(*specs: dict) -> list[EgressRule]:
    return [EgressRule.model_validate(s) for s in specs]


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "169.254.169.254", "169.254.1.1", "fe80::1",
                                "fd00:ec2::254", "0.0.0.0", "::", "::ffff:127.0.0.1", "::ffff:169.254.169.254"])
def test_special_addresses_do_not_pass_a_rule_for_everything(ip):
    everything = rules({"cidr": "0.0.0.0/0"}, {"cidr": "::/0"})
    assert not egress.check_address(ip, 80, everything)


@pytest.mark.parametrize("ip,rule", [
    ("127.0.0.1", "127.0.0.0/8"), ("127.0.0.1", "127.0.0.1/32"), ("::1", "::1/128"),
    ("169.254.169.254", "169.254.169.254/32"), ("169.254.169.254", "169.254.0.0/16"),
    ("fd00:ec2::254", "fd00:ec2::254/128"), ("::ffff:127.0.0.1", "127.0.0.1/32"),
    ("127.0.0.1", "::ffff:127.0.0.1/128"),
])
def test_a_cidr_rule_inside_a_special_range_opens_it(ip, rule):
    assert egress.check_address(ip, 80, rules({"cidr": rule}))


def test_a_special_rule_opens_only_its_own_range():
    loopback = rules({"cidr": "127.0.0.0/8"})
    assert not egress.check_address("169.254.169.254", 80, loopback)
    assert not egress.check_address("10.0.0.1", 80, loopback)


def test_ordinary_addresses_and_an_empty_policy():
    assert egress.check_address("10.1.2.3", 443, rules({"cidr": "10.0.0.0/8"}))
    assert egress.check_address("203.0.113.7", 443, rules({"cidr": "0.0.0.0/0"}))
    assert not egress.check_address("10.1.2.3", 443, [])
    assert not egress.check_address("192.168.1.1", 443, rules({"cidr": "10.0.0.0/8"}))
    assert not egress.check_address("2001:db8::1", 443, rules({"cidr": "0.0.0.0/0"}))


def test_ports_restrict_a_rule():
    r = rules({"cidr": "127.0.0.1/32", "ports": [1]})
    assert egress.check_address("127.0.0.1", 1, r)
    assert not egress.check_address("127.0.0.1", 8080, r)
    assert egress.check_address("10.0.0.1", 8080, rules({"cidr": "10.0.0.0/8", "ports": [1]},
                                                         {"cidr": "10.0.0.0/8", "ports": [8080]}))


def test_host_rules_match_names_not_special_addresses():
    r = rules({"host": "api.example.com"}, {"host": "*.svc.example.com", "ports": [443]})
    assert egress.check_address("203.0.113.7", 80, r, name="api.example.com")
    assert egress.check_address("203.0.113.7", 80, r, name="API.example.com.")
    assert not egress.check_address("203.0.113.7", 80, r, name="other.example.com")
    assert not egress.check_address("203.0.113.7", 80, r)                  # an address, no name
    assert egress.check_address("10.0.0.1", 443, r, name="a.b.svc.example.com")
    assert not egress.check_address("10.0.0.1", 80, r, name="a.svc.example.com")   # port
    assert not egress.check_address("10.0.0.1", 443, r, name="svc.example.com")    # not a subdomain
    assert not egress.check_address("10.0.0.1", 443, r, name="evilsvc.example.com")
    # A host rule never opens a special range, whatever the name resolves to.
    assert not egress.check_address("169.254.169.254", 80, r, name="api.example.com")
    assert not egress.check_address("127.0.0.1", 80, r, name="api.example.com")


@pytest.fixture
def fake_dns(monkeypatch):
    """Names resolved from a table; every lookup of a name is counted."""
    table: dict[str, list[str]] = {}
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in table:
            asked.append(host)
            fam = lambda a: socket.AF_INET6 if ":" in a else socket.AF_INET  # noqa: E731
            return [(fam(a), socket.SOCK_STREAM, 6, "", (a, port) if ":" not in a else (a, port, 0, 0))
                    for a in table[host]]
        if host.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "not known")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table, asked


def test_every_address_a_name_resolves_to_must_pass(fake_dns):
    table, _ = fake_dns
    table["app.example.test"] = ["10.0.0.5", "169.254.169.254"]
    r = rules({"host": "app.example.test"})
    with pytest.raises(egress.EgressDenied) as e:
        egress.resolve("app.example.test", 80, r)
    assert e.value.reason == "EgressDenied"
    assert "169.254.169.254" in e.value.message and "cidr" in e.value.message
    table["app.example.test"] = ["10.0.0.5", "10.0.0.6"]
    assert [str(a) for a in egress.resolve("app.example.test", 80, r)] == ["10.0.0.5", "10.0.0.6"]


def test_a_name_passes_cidr_rules_by_its_addresses(fake_dns):
    table, _ = fake_dns
    table["db.example.test"] = ["10.0.0.5"]
    assert egress.resolve("db.example.test", 5432, rules({"cidr": "10.0.0.0/8"}))
    with pytest.raises(egress.EgressDenied):
        egress.resolve("db.example.test", 5432, rules({"cidr": "192.168.0.0/16"}))


def test_a_name_that_does_not_resolve_is_refused_with_its_own_reason(fake_dns):
    with pytest.raises(egress.HostNotFound) as e:
        egress.resolve("nowhere.example.test", 80, rules({"cidr": "0.0.0.0/0"}))
    assert e.value.reason == "HostNotFound"


def test_a_url_from_a_secret_is_never_named(fake_dns):
    table, _ = fake_dns
    table["hooks.example.test"] = ["169.254.169.254"]
    with pytest.raises(egress.EgressDenied) as e:
        egress.check_url("https://hooks.example.test/T0/B0/canary-token", [],
                         secret="Secret ops-slack key url")
    assert "Secret ops-slack key url" in e.value.message
    assert "hooks.example.test" not in e.value.message and "169.254" not in e.value.message
    assert "canary-token" not in e.value.message


def test_a_denied_address_names_host_port_and_the_rule_to_add():
    with pytest.raises(egress.EgressDenied) as e:
        egress.check_url("http://169.254.169.254/latest/meta-data/", rules({"cidr": "0.0.0.0/0"}))
    m = e.value.message
    assert "169.254.169.254 port 80" in m and "{cidr: 169.254.169.254/32, ports: [80]}" in m
    assert "latest" not in m


class _Hello(BaseHTTPRequestHandler):
    hosts: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Hello.hosts.append(self.headers["Host"])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def test_an_http_connection_goes_to_the_address_that_was_checked(fake_dns):
    """A name is resolved once: the connection uses the checked address (the Host header keeps
    the name), so a resolver answering differently afterwards cannot redirect it."""
    table, asked = fake_dns
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        table["rebind.example.test"] = ["127.0.0.1"]
        with egress.http_client(rules({"cidr": "127.0.0.1/32"}), timeout=5) as c:
            assert c.get(f"http://rebind.example.test:{port}/").status_code == 200
        assert asked == ["rebind.example.test"] and _Hello.hosts[-1] == f"rebind.example.test:{port}"
        table["rebind.example.test"] = ["169.254.169.254"]
        with egress.http_client(rules({"cidr": "127.0.0.1/32"}), timeout=5) as c, \
                pytest.raises(egress.EgressDenied):
            c.get(f"http://rebind.example.test:{port}/")
    finally:
        server.shutdown()


def test_a_denied_http_connection_never_reaches_the_server():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    try:
        with egress.http_client(rules({"cidr": "127.0.0.1/32", "ports": [1]}), timeout=5) as c, \
                pytest.raises(egress.EgressDenied):
            c.get(f"http://127.0.0.1:{port}/")
        with pytest.raises(socket.timeout):
            listener.accept()
        with pytest.raises(egress.EgressDenied):
            egress.connect("127.0.0.1", port, [], timeout=1)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
