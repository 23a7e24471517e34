"""Where the operator may connect: the policy's egress rules, applied to the addresses a name
resolves to, and connections made to exactly the addresses that were checked.

The rules (api.policy.EgressRule) are the platform team's, never the Rollback author's:

- An empty list allows nothing.
- A `cidr` rule allows the addresses inside it; a `host` rule allows a name (exact, or `*.suffix`
  for its subdomains at any depth), and every address the name resolves to must pass as well.
- Loopback, link-local (cloud metadata at 169.254.169.254 included), fd00:ec2::254 and the
  unspecified addresses are special: only a `cidr` rule that lies inside such a range opens it
  (0.0.0.0/0 does not; 169.254.169.254/32 does). A host rule never opens one.
- `ports`, when given, restrict a rule to those ports.
- IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are checked as the IPv4 address they are.

A name is resolved once, every address is checked, and the connection goes to a checked address
(`http_transport`, `connect`): a resolver that answers differently a moment later (DNS rebinding)
cannot lead a connection elsewhere. TLS still verifies, and sends as SNI, the original name.

Messages name the host and port and say what rule would allow them, except for a URL read from a
Secret: that is "the URL in Secret <name> key <key>", and neither its host nor its address.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Sequence

import httpcore
import httpx

from rewind.api.errors import ReasonedError
from rewind.api.policy import SEED_POLICY, EgressRule

EGRESS_DENIED = "EgressDenied"
HOST_NOT_FOUND = "HostNotFound"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges no broad rule opens: only a cidr rule inside one of them.
SPECIAL: dict[Network, str] = {
    ipaddress.ip_network("127.0.0.0/8"): "loopback",
    ipaddress.ip_network("::1/128"): "loopback",
    ipaddress.ip_network("169.254.0.0/16"): "link-local (cloud metadata)",
    ipaddress.ip_network("fe80::/10"): "link-local",
    ipaddress.ip_network("fd00:ec2::254/128"): "cloud metadata",
    ipaddress.ip_network("0.0.0.0/8"): "unspecified",
    ipaddress.ip_network("::/128"): "unspecified",
}


class EgressDenied(ReasonedError):
    def __init__(self, message: str):
        super().__init__(EGRESS_DENIED, message)


class HostNotFound(ReasonedError):
    def __init__(self, message: str):
        super().__init__(HOST_NOT_FOUND, message)


def rules_of(policy) -> list[EgressRule]:
    """The egress rules of a policy (api.policy.RollbackPolicySpec; None: the seed policy's, none)."""
    return list((policy or SEED_POLICY).egress)


def address(ip) -> Address:
    """An address as checked: a scope (%eth0) dropped, an IPv4-mapped IPv6 address as IPv4."""
    a = ipaddress.ip_address(str(ip).split("%", 1)[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a


def _network(cidr: str) -> Network:
    net = ipaddress.ip_network(cidr, strict=False)
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(mapped):
        net = ipaddress.ip_network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def special(ip: Address) -> str | None:
    """What kind of special address `ip` is, or None."""
    return next((kind for net, kind in SPECIAL.items() if ip.version == net.version and ip in net), None)


def _inside_special(net: Network) -> bool:
    return any(net.version == s.version and net.subnet_of(s) for s in SPECIAL)


def host_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def check_address(ip, port: int, rules: Sequence[EgressRule], name: str | None = None) -> bool:
    """Whether the rules allow a connection to `ip` on `port`; `name` is the host name it was
    resolved from (None for an address given as such), which host rules match."""
    ip = address(ip)
    is_special = special(ip) is not None
    for rule in rules:
        if rule.ports and port not in rule.ports:
            continue
        if rule.cidr:
            net = _network(rule.cidr)
            if ip.version == net.version and ip in net and (not is_special or _inside_special(net)):
                return True
        elif rule.host and name and not is_special and host_matches(rule.host, name):
            return True
    return False


def _literal(host: str) -> Address | None:
    try:
        return address(host.strip("[]"))
    except ValueError:
        return None


def resolve(host: str, port: int, rules: Sequence[EgressRule], *, secret: str | None = None) -> list[Address]:
    """Every address `host` resolves to, each allowed by `rules` (else EgressDenied, before any
    connection). `secret`
    ("Secret booking/ops-slack key url") says the host came from a Secret: messages then name the
    Secret, never the host or its addresses."""
    ip = _literal(host)
    name = None if ip else host.rstrip(".")
    if ip:
        found = [ip]
    else:
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError):
            raise HostNotFound(f"the host of the URL in {secret} does not resolve" if secret
                               else f"{host} does not resolve") from None
        found = list(dict.fromkeys(address(info[4][0]) for info in infos))
    denied = [a for a in found if not check_address(a, port, rules, name)]
    if denied:
        raise EgressDenied(_denied_message(host, name, port, denied[0], secret))
    return found


def _denied_message(host: str, name: str | None, port: int, ip: Address, secret: str | None) -> str:
    kind = special(ip)
    if secret:
        return (f"the egress policy does not allow the URL in {secret} (its host, on port {port}"
                + (f", resolves to a {kind} address" if kind else "") + "); the platform team can "
                "add an egress rule for its host to the RollbackPolicy (or ClusterRollbackPolicy) default")
    where = f"{host} port {port}" + (f" ({name} resolves to {ip})" if name else "")
    if kind:
        hint = (f"{ip} is a {kind} address, which only a cidr rule inside that range opens, e.g. "
                f"{{cidr: {ip}/{ip.max_prefixlen}, ports: [{port}]}}")
    elif name:
        hint = f"add an egress rule such as {{host: {name}, ports: [{port}]}} or {{cidr: {ip}/{ip.max_prefixlen}}}"
    else:
        hint = f"add an egress rule such as {{cidr: {ip}/{ip.max_prefixlen}, ports: [{port}]}}"
    return (f"the egress policy does not allow {where}; {hint} to the RollbackPolicy (or "
            "ClusterRollbackPolicy) default, which the platform team sets")


def connect(host: str, port: int, rules: Sequence[EgressRule], timeout: float | None, *,
            secret: str | None = None) -> socket.socket:
    """A TCP connection to the first checked address of `host` that answers."""
    error: OSError | None = None
    for ip in resolve(host, port, rules, secret=secret):
        try:
            return socket.create_connection((str(ip), port), timeout=timeout)
        except OSError as e:
            error = e
    raise error


class _PinnedBackend(httpcore.NetworkBackend):
    """httpcore's network, resolving and checking every host itself and connecting to the address
    it checked (TLS keeps the URL's host name for SNI and verification)."""

    def __init__(self, rules: Sequence[EgressRule], secret: str | None):
        self._rules, self._secret, self._backend = rules, secret, httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        error: Exception | None = None
        for ip in resolve(host, port, self._rules, secret=self._secret):
            try:
                return self._backend.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        raise error

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise EgressDenied("the egress policy allows no Unix socket")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _PinnedTransport(httpx.HTTPTransport):
    def __init__(self, backend: _PinnedBackend, **kwargs):
        super().__init__(**kwargs)
        self._pool._network_backend = backend   # httpx passes no backend through; this is its pool's


def http_client(rules: Sequence[EgressRule], *, verify=True, secret: str | None = None,
                **kwargs) -> httpx.Client:
    """An httpx client whose every connection is checked and pinned (see `resolve`). Proxies from
    the environment are not used: a proxy would make the policy check the proxy, not the target."""
    transport = _PinnedTransport(_PinnedBackend(rules, secret), verify=verify, trust_env=False)
    return httpx.Client(transport=transport, trust_env=False, **kwargs)


def check_url(url: str, rules: Sequence[EgressRule], *, secret: str | None = None) -> list[Address]:
    """A URL's host and port (default 80/443) resolved and checked; EgressDenied or HostNotFound."""
    u = httpx.URL(url.strip())
    port = u.port or (443 if u.scheme == "https" else 80)
    return resolve(u.host, port, rules, secret=secret)


def failure(e: BaseException) -> str:
    """Why a connection or exchange failed, in the few words a status may carry: an exception's
    text is never shown (it can hold what the endpoint said, or tell open ports from closed ones
    in more detail than this)."""
    import ssl

    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    has = lambda *types: any(isinstance(x, types) for x in chain)  # noqa: E731
    if has(ssl.SSLCertVerificationError) or any("CERTIFICATE_VERIFY_FAILED" in str(x) for x in chain):
        return "certificate not trusted"
    if has(ConnectionRefusedError):
        return "connection refused"
    if has(TimeoutError, socket.timeout, httpx.TimeoutException, httpcore.TimeoutException):
        return "timed out"
    if has(socket.gaierror):
        return "name did not resolve"
    if has(ssl.SSLError):
        return "TLS handshake failed"
    if has(ConnectionResetError, BrokenPipeError, httpx.RemoteProtocolError, httpcore.RemoteProtocolError):
        return "connection closed"
    return "connection failed"
