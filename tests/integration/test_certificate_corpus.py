"""Certificates judged as a verifying client judges them: a corpus made here (private CA chains,
self-signed and rogue roots, weak keys, IP SANs, misordered chains, validity), validated before a
swap (adapters.tls.check_pair, steps.certificates.validate) and served by a real local TLS server
(adapters.tls.served with the same trust). Loopback only."""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import NameOID

from loopback import LOOPBACK
from rewind.adapters import tls
from rewind.api.v1alpha1 import CertificateTarget
from rewind.context import StepFailed
from rewind.steps import certificates
from rewind_testbed.certs import NOW, Issued, issue, pki

HOST = "www.instylehairboutique.co.za"
IP = "10.1.2.3"
WEEK = datetime.timedelta(days=7)
KEYS = {
    "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
    "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
    "rsa1024": lambda: rsa.generate_private_key(65537, 1024),
    "rsa2048": lambda: rsa.generate_private_key(65537, 2048),
    "dsa": lambda: dsa.generate_private_key(2048),
}


def make(cn: str, issuer: Issued | None = None, *, key: str = "ec", dns=(), ips=(), ca: bool = False,
         not_before: datetime.datetime | None = None, days: int = 90) -> Issued:
    """Like rewind_testbed.certs.issue, with a choice of key and IP SANs."""
    private = KEYS[key]()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = not_before or NOW - datetime.timedelta(days=1)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.cert.subject if issuer else name)
         .public_key(private.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(b.sign((issuer or Issued(None, private)).key, hashes.SHA256()), private)


@pytest.fixture(scope="module")
def ca():
    return pki()


def named(root: Issued) -> tls.Trust:
    return tls.Trust.of_pem(root.cert_pem, "the named CA")


def check(crt: bytes, key: bytes, trust: tls.Trust, hosts=(HOST,), min_valid=WEEK) -> tls.Checked:
    return tls.check_pair(crt, key, hosts=list(hosts), min_valid=min_valid, trust=trust)


def refused(reason: str, *args, **kwargs) -> str:
    with pytest.raises(tls.CertificateError) as err:
        check(*args, **kwargs)
    assert err.value.reason == reason, (err.value.reason, err.value.message)
    assert "PRIVATE" not in err.value.message and "BEGIN" not in err.value.message
    return err.value.message


# --- trust -----------------------------------------------------------------------------------

def test_a_chain_to_a_private_ca_is_trusted_only_when_that_ca_is_named(ca):
    root, inter = ca
    leaf = issue(HOST, inter, hosts=[HOST])
    assert check(leaf.cert_pem + inter.cert_pem, leaf.key_pem, named(root)).fingerprint == tls.fingerprint(leaf.cert)
    message = refused("CertificateUntrusted", leaf.cert_pem + inter.cert_pem, leaf.key_pem, tls.SYSTEM)
    assert "does not lead to the system's trusted roots" in message


def test_a_self_signed_leaf_is_trusted_only_when_pinned():
    leaf = make(HOST, dns=[HOST])
    message = refused("CertificateUntrusted", leaf.cert_pem, leaf.key_pem, tls.SYSTEM)
    assert "self-signed" in message and "pinnedFingerprintSha256" in message
    pinned = tls.Trust(pinned=tls.fingerprint(leaf.cert), what="the pinned certificate")
    assert check(leaf.cert_pem, leaf.key_pem, pinned).fingerprint == tls.fingerprint(leaf.cert)
    other = tls.Trust(pinned=tls.fingerprint(make(HOST, dns=[HOST]).cert), what="the pinned certificate")
    assert "is not the pinned one" in refused("CertificateNotPinned", leaf.cert_pem, leaf.key_pem, other)


def test_a_rogue_root_in_tls_crt_does_not_make_itself_trusted(ca):
    root, _ = ca
    rogue = make("Rogue Root", ca=True, days=3650)
    leaf = make(HOST, rogue, dns=[HOST])
    for trust in (tls.SYSTEM, named(root)):
        message = refused("CertificateUntrusted", leaf.cert_pem + rogue.cert_pem, leaf.key_pem, trust)
        assert "a root in tls.crt is not trusted for being there" in message


def tls_source(leaf: Issued, chain: bytes, ca_crt: bytes | None) -> dict:
    data = {"tls.crt": leaf.cert_pem + chain, "tls.key": leaf.key_pem}
    if ca_crt:
        data["ca.crt"] = ca_crt
    return {"metadata": {"name": "booking-tls-old"}, "type": "kubernetes.io/tls",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def target(**trust) -> CertificateTarget:
    return CertificateTarget.model_validate({"secretName": "booking-tls", "fromSecret": "booking-tls-old",
                                             "hosts": [HOST], **({"trust": trust} if trust else {})})


def test_ca_crt_is_trusted_only_when_the_spec_says_so():
    rogue = make("Rogue Root", ca=True, days=3650)
    leaf = make(HOST, rogue, dns=[HOST])
    source = tls_source(leaf, b"", rogue.cert_pem)
    with pytest.raises(StepFailed) as err:
        certificates.validate(target(), source, "booking-tls-old")
    assert err.value.reason == "CertificateUntrusted", err.value.message
    assert certificates.validate(target(caFromSecret=True), source, "booking-tls-old") == tls.fingerprint(leaf.cert)
    with pytest.raises(StepFailed) as err:
        certificates.validate(target(caFromSecret=True), tls_source(leaf, b"", None), "booking-tls-old")
    assert err.value.reason == "TrustAnchorsInvalid" and "has no ca.crt" in err.value.message


def test_a_pin_in_the_spec_accepts_that_self_signed_certificate_and_no_other():
    leaf = make(HOST, dns=[HOST])
    source = tls_source(leaf, b"", None)
    assert certificates.validate(target(pinnedFingerprintSha256=tls.fingerprint(leaf.cert)), source,
                                 "booking-tls-old") == tls.fingerprint(leaf.cert)
    with pytest.raises(StepFailed) as err:
        certificates.validate(target(), source, "booking-tls-old")
    assert err.value.reason == "CertificateUntrusted"


# --- keys ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,fragment", [
    ("rsa1024", "the certificate has an RSA 1024-bit key (clients require at least 2048 bits)"),
    ("secp256k1", "an EC key on curve secp256k1 (clients accept only P-256, P-384, P-521)"),
    ("dsa", "a DSA key"),
])
def test_weak_keys_are_refused_naming_the_key(ca, key, fragment):
    root, inter = ca
    leaf = make(HOST, inter, key=key, dns=[HOST])
    assert fragment in refused("WeakKey", leaf.cert_pem + inter.cert_pem, leaf.key_pem, named(root))


def test_a_weak_intermediate_is_refused_by_name(ca):
    root, _ = ca
    weak = make("Weak Intermediate", root, key="rsa1024", ca=True)
    leaf = make(HOST, weak, dns=[HOST])
    message = refused("WeakKey", leaf.cert_pem + weak.cert_pem, leaf.key_pem, named(root))
    assert "the CA certificate CN=Weak Intermediate in tls.crt has an RSA 1024-bit key" in message


def test_rsa_2048_is_accepted(ca):
    root, inter = ca
    leaf = make(HOST, inter, key="rsa2048", dns=[HOST])
    check(leaf.cert_pem + inter.cert_pem, leaf.key_pem, named(root))


# --- names -----------------------------------------------------------------------------------

def test_an_ip_address_host_matches_an_ip_san(ca):
    root, inter = ca
    leaf = make(HOST, inter, dns=[HOST], ips=[IP])
    out = check(leaf.cert_pem + inter.cert_pem, leaf.key_pem, named(root), hosts=[IP, HOST])
    assert out.names == [HOST, IP]


def test_dns_names_and_ip_addresses_never_match_each_other(ca):
    root, inter = ca
    only_ip = make("ip only", inter, ips=[IP])
    message = refused("CertificateHostMismatch", only_ip.cert_pem + inter.cert_pem, only_ip.key_pem,
                      named(root))
    assert f"names ({IP}) do not cover {HOST}" in message
    ip_as_dns = make("ip as a DNS name", inter, dns=[IP])
    refused("CertificateHostMismatch", ip_as_dns.cert_pem + inter.cert_pem, ip_as_dns.key_pem, named(root),
            hosts=[IP])


# --- chain order and key ---------------------------------------------------------------------

def test_an_intermediate_first_chain_is_named_as_such(ca):
    root, inter = ca
    leaf = issue(HOST, inter, hosts=[HOST])
    message = refused("ChainOrder", inter.cert_pem + leaf.cert_pem, leaf.key_pem, named(root))
    assert message == "tls.crt lists CN=Test Intermediate before the leaf; put the leaf first, then its intermediates"


def test_a_key_of_another_certificate_is_a_key_mismatch(ca):
    root, inter = ca
    leaf = issue(HOST, inter, hosts=[HOST])
    refused("KeyMismatch", leaf.cert_pem + inter.cert_pem, issue(HOST, inter, hosts=[HOST]).key_pem, named(root))


# --- validity --------------------------------------------------------------------------------

@pytest.mark.parametrize("start,days,reason", [
    (NOW - datetime.timedelta(days=100), 90, "CertificateExpired"),
    (NOW + datetime.timedelta(days=2), 90, "CertificateNotYetValid"),
    (NOW - datetime.timedelta(days=1), 5, "CertificateExpiresSoon"),
])
def test_validity_and_min_valid_days(ca, start, days, reason):
    root, inter = ca
    leaf = issue(HOST, inter, hosts=[HOST], not_before=start, days=days)
    refused(reason, leaf.cert_pem + inter.cert_pem, leaf.key_pem, named(root))
    if reason == "CertificateExpiresSoon":   # fine when fewer days are required
        check(leaf.cert_pem + inter.cert_pem, leaf.key_pem, named(root), min_valid=datetime.timedelta(days=1))


# --- what an endpoint serves, judged with the same trust -------------------------------------

@contextlib.contextmanager
def serving(chain: bytes, key: bytes, tmp_path):
    """A TLS server on 127.0.0.1 serving `chain` (as a server's certificate file) and `key`."""
    (tmp_path / "tls.crt").write_bytes(chain)
    (tmp_path / "tls.key").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                with ctx.wrap_socket(conn, server_side=True) as t:
                    t.recv(1)
            except (OSError, ssl.SSLError):
                continue

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def test_the_endpoint_check_trusts_what_the_validation_trusts(ca, tmp_path):
    root, inter = ca
    leaf = make(HOST, inter, dns=[HOST], ips=["127.0.0.1"])
    with serving(leaf.cert_pem + inter.cert_pem, leaf.key_pem, tmp_path) as port:
        got = tls.served("127.0.0.1", port, HOST, rules=LOOPBACK, trust=named(root))
        assert tls.fingerprint(got) == tls.fingerprint(leaf.cert)
        assert tls.fingerprint(tls.served("127.0.0.1", port, "127.0.0.1", rules=LOOPBACK, trust=named(root))) \
            == tls.fingerprint(leaf.cert)
        with pytest.raises(tls.CertificateError) as err:
            tls.served("127.0.0.1", port, HOST, rules=LOOPBACK, trust=tls.SYSTEM)
        assert err.value.reason == "CertificateUntrusted"
        assert err.value.message.startswith(f"a client that trusts the system's trusted roots rejects the "
                                            f"certificate served for {HOST}: ")
        with pytest.raises(tls.CertificateError) as err:
            tls.served("127.0.0.1", port, "other.example.org", rules=LOOPBACK, trust=named(root))
        assert err.value.reason == "CertificateUntrusted"


def test_an_endpoint_that_omits_the_intermediate_is_rejected(ca, tmp_path):
    root, inter = ca
    leaf = issue(HOST, inter, hosts=[HOST])
    with serving(leaf.cert_pem, leaf.key_pem, tmp_path) as port:
        with pytest.raises(tls.CertificateError) as err:
            tls.served("127.0.0.1", port, HOST, rules=LOOPBACK, trust=named(root))
        assert err.value.reason == "CertificateUntrusted"


def test_a_pinned_self_signed_certificate_is_served_and_compared_by_fingerprint(tmp_path):
    leaf = make(HOST, dns=[HOST])
    with serving(leaf.cert_pem, leaf.key_pem, tmp_path) as port:
        pinned = tls.Trust(pinned=tls.fingerprint(leaf.cert), what="the pinned certificate")
        assert tls.fingerprint(tls.served("127.0.0.1", port, HOST, rules=LOOPBACK, trust=pinned)) \
            == tls.fingerprint(leaf.cert)
        with pytest.raises(tls.CertificateError):
            tls.served("127.0.0.1", port, HOST, rules=LOOPBACK, trust=tls.SYSTEM)
