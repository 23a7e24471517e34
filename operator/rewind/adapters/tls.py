"""Certificates (with `cryptography`): is a TLS Secret's content fit to serve, trusted as a
verifying client would trust it, and what does an endpoint actually serve. Every refusal says
why, in words a person on call can act on; none ever contains key material.

Trust is decided by `cryptography`'s own path validation (x509.verification), never by the
certificates under test: a root or self-signed certificate in tls.crt is only an untrusted
intermediate to the verifier. The anchors are the system's trusted roots, or the CA certificates
a Rollback names; a certificate is trusted as itself only when its fingerprint is pinned."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import ssl
import warnings
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtensionOID
from cryptography.x509.verification import (
    Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError,
)

from rewind import egress
from rewind.api.errors import ReasonedError
from rewind.api.policy import EgressRule

MIN_RSA_BITS = 2048
CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class CertificateError(ReasonedError):
    pass


@dataclass(frozen=True)
class Checked:
    fingerprint: str          # sha256 of the leaf, hex
    not_after: datetime.datetime
    names: list[str]


@dataclass(frozen=True)
class Trust:
    """Whom a client trusts. `anchors` None: the system's trusted roots. `pinned`: the SHA-256
    of the one leaf trusted as itself (then no path to a root is needed, nor accepted instead)."""

    anchors: tuple[x509.Certificate, ...] | None = None
    pinned: str | None = None
    what: str = "the system's trusted roots"

    @classmethod
    def of_pem(cls, pem: bytes, what: str) -> "Trust":
        try:
            anchors = tuple(x509.load_pem_x509_certificates(pem))
        except ValueError:
            anchors = ()
        if not anchors:
            raise CertificateError("TrustAnchorsInvalid", f"{what} holds no PEM-encoded CA certificate")
        return cls(anchors=anchors, what=what)


SYSTEM = Trust()


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _load_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CertificateError("CertificateInvalid", "tls.crt is not PEM-encoded X.509 certificates") from None
    if not chain:
        raise CertificateError("CertificateInvalid", "tls.crt holds no certificate")
    return chain


@functools.lru_cache(maxsize=1)
def _system_roots() -> tuple[x509.Certificate, ...]:
    """The roots the operator's own TLS clients trust (the ssl module's default verify paths)."""
    ctx = ssl.create_default_context()
    out = []
    with warnings.catch_warnings():   # some distributions' roots have non-RFC serial numbers
        warnings.simplefilter("ignore")
        for der in ctx.get_ca_certs(binary_form=True):
            try:
                out.append(x509.load_der_x509_certificate(der))
            except ValueError:
                continue
    return tuple(out)


# --- names -----------------------------------------------------------------------------------

def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return None


def _names(cert: x509.Certificate) -> list[str]:
    """The DNS names of the certificate (subjectAltName dNSName entries)."""
    san = _san(cert)
    return san.get_values_for_type(x509.DNSName) if san else []


def _ips(cert: x509.Certificate) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    san = _san(cert)
    return san.get_values_for_type(x509.IPAddress) if san else []


def names(cert: x509.Certificate) -> list[str]:
    """Every name the certificate is valid for: DNS names, then IP addresses."""
    return _names(cert) + [str(ip) for ip in _ips(cert)]


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def covers(names: list[str], host: str) -> bool:
    """RFC 6125 matching of a DNS name: exact, or a wildcard for exactly one left-most label."""
    host = host.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def matches(cert: x509.Certificate, host: str) -> bool:
    """As a client matches: an IP address only an IP SAN, a DNS name only a DNS SAN."""
    ip = _ip(host)
    return ip in _ips(cert) if ip is not None else covers(_names(cert), host)


def _subject_of(host: str) -> x509.DNSName | x509.IPAddress:
    ip = _ip(host)
    return x509.IPAddress(ip) if ip is not None else x509.DNSName(host.lower().rstrip("."))


# --- keys ------------------------------------------------------------------------------------

def weakness(key) -> str | None:
    """Why a public key is too weak for TLS clients to accept, or None."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return f"an RSA {key.key_size}-bit key (clients require at least {MIN_RSA_BITS} bits)"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in CURVES:
            return (f"an EC key on curve {key.curve.name} (clients accept only "
                    f"{', '.join(CURVES.values())})")
        return None
    if isinstance(key, dsa.DSAPublicKey):
        return "a DSA key (TLS clients no longer accept DSA)"
    kind = type(key).__name__.removesuffix("PublicKey").lstrip("_") or "unknown"
    return f"a key of type {kind}, which browsers do not accept (they accept RSA, and EC P-256/P-384/P-521)"


def _check_keys(chain: list[x509.Certificate]) -> None:
    for i, cert in enumerate(chain):
        weak = weakness(cert.public_key())
        if weak:
            what = "the certificate" if i == 0 else f"the CA certificate {_subject(cert)} in tls.crt"
            raise CertificateError("WeakKey", f"{what} has {weak}; reissue it with an RSA key of "
                                              f"{MIN_RSA_BITS} bits or more, or an EC P-256 key")


def _same_key(private, cert: x509.Certificate) -> bool:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return private.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


# --- path validation -------------------------------------------------------------------------

def _ca_key_usage(policy, cert, usage: x509.KeyUsage | None) -> None:
    """A CA's keyUsage, when it has one, allows signing certificates (as OpenSSL requires)."""
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("the CA's keyUsage does not allow signing certificates")


def _verifier(trust: Trust, host: str, now: datetime.datetime):
    # The CA/B Forum profile, less the parts that private CAs commonly omit and that OpenSSL
    # clients do not require: key identifiers, and keyUsage on a CA (checked when present).
    ca = (ExtensionPolicy.webpki_defaults_ca()
          .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
          .may_be_present(x509.SubjectKeyIdentifier, Criticality.AGNOSTIC, None)
          .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage))
    ee = (ExtensionPolicy.webpki_defaults_ee()
          .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None))
    anchors = trust.anchors if trust.anchors is not None else _system_roots()
    return (PolicyBuilder().store(Store(list(anchors))).time(now)
            .extension_policies(ca_policy=ca, ee_policy=ee).build_server_verifier(_subject_of(host)))


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _untrusted(chain: list[x509.Certificate], trust: Trust) -> CertificateError:
    leaf, top = chain[0], chain[-1]
    if _self_signed(leaf):
        return CertificateError("CertificateUntrusted", "the certificate is self-signed, so no client "
                                "trusts it; pin it (trust.pinnedFingerprintSha256) if that is intended")
    rooted = " (a root in tls.crt is not trusted for being there)" if _self_signed(top) else ""
    return CertificateError("CertificateUntrusted", f"the chain in tls.crt (ending at {_subject(top)}, "
                            f"issued by {top.issuer.rfc4514_string()}) does not lead to {trust.what}"
                            f"{rooted}; add the missing intermediates, or name the CA that issued it "
                            "(trust.caFromSecret)")


def _verify(chain: list[x509.Certificate], trust: Trust, host: str, now: datetime.datetime) -> None:
    leaf = chain[0]
    if trust.pinned is not None:
        if fingerprint(leaf) != trust.pinned:
            raise CertificateError("CertificateNotPinned", f"the certificate ({fingerprint(leaf)[:16]}...) "
                                   f"is not the pinned one ({trust.pinned[:16]}...)")
        return
    try:
        _verifier(trust, host, now).verify(leaf, chain[1:])
    except VerificationError:
        raise _untrusted(chain, trust) from None


def check_pair(crt: bytes, key: bytes, *, hosts: list[str], min_valid: datetime.timedelta,
               trust: Trust = SYSTEM, now: datetime.datetime | None = None) -> Checked:
    """A TLS Secret's tls.crt/tls.key are fit to serve: PEM parses, the key matches the leaf (which
    comes first), no key is weak, the leaf is valid now and for `min_valid` more, its names cover
    every host, and a verifying client that trusts `trust` accepts it for each host."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    chain = _load_chain(crt)
    leaf = chain[0]
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise CertificateError("CertificateInvalid", "tls.key is not an unencrypted PEM private key") from None
    if not _same_key(private, leaf):
        if any(_same_key(private, c) for c in chain[1:]):
            raise CertificateError("ChainOrder", f"tls.crt lists {_subject(leaf)} before the leaf; "
                                                 "put the leaf first, then its intermediates")
        raise CertificateError("KeyMismatch", "tls.key does not belong to the certificate in tls.crt")
    _check_keys(chain)
    if leaf.not_valid_before_utc > now:
        raise CertificateError("CertificateNotYetValid", f"the certificate is valid only from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M}Z")
    if leaf.not_valid_after_utc <= now:
        raise CertificateError("CertificateExpired", f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
    if leaf.not_valid_after_utc <= now + min_valid:
        raise CertificateError("CertificateExpiresSoon", f"the certificate expires on "
                               f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z, within the required "
                               f"{min_valid.days} day(s)")
    missing = [h for h in hosts if not matches(leaf, h)]
    if missing:
        raise CertificateError("CertificateHostMismatch", f"the certificate's names ({', '.join(names(leaf)) or 'none'}) "
                               f"do not cover {', '.join(missing)}")
    for host in hosts:
        _verify(chain, trust, host, now)
    return Checked(fingerprint(leaf), leaf.not_valid_after_utc, names(leaf))


# --- what an endpoint serves -----------------------------------------------------------------

def _client_context(trust: Trust | None) -> ssl.SSLContext:
    if trust is None or trust.pinned is not None:   # compared by fingerprint afterwards
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if trust.anchors is None:
        return ssl.create_default_context()
    pem = "".join(a.public_bytes(serialization.Encoding.PEM).decode() for a in trust.anchors)
    return ssl.create_default_context(cadata=pem)


def served(host: str, port: int, server_name: str, *, rules: Sequence[EgressRule],
           timeout: float = 5.0, trust: Trust | None = None) -> x509.Certificate:
    """The leaf certificate an endpoint serves, connecting only where `rules` (the policy's
    egress) allow, to the address that was checked. With `trust`, the handshake is a verifying
    client's (chain to those anchors, name, validity; a pinned leaf is compared afterwards) and a
    rejection raises CertificateUntrusted naming OpenSSL's verdict; without, nothing is judged
    here. Raises EgressDenied/HostNotFound, or OSError: say why with egress.failure, never its text."""
    ctx = _client_context(trust)
    with egress.connect(host, port, rules, timeout) as sock:
        try:
            with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
                der = tls.getpeercert(binary_form=True)
        except ssl.SSLCertVerificationError as e:   # OpenSSL's fixed verdict, nothing the server sent
            raise CertificateError("CertificateUntrusted", f"a client that trusts {trust.what} rejects "
                                   f"the certificate served for {server_name}: {e.verify_message}") from None
    return x509.load_der_x509_certificate(der)
