"""Certificates (with `cryptography`): is a TLS Secret's content fit to serve, and what does an
endpoint actually serve. Every refusal says why, in words a person on call can act on; none ever
contains key material."""

from __future__ import annotations

import datetime
import ssl
import warnings
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtensionOID

from rewind import egress
from rewind.api.errors import ReasonedError
from rewind.api.policy import EgressRule


class CertificateError(ReasonedError):
    pass


@dataclass(frozen=True)
class Checked:
    fingerprint: str          # sha256 of the leaf, hex
    not_after: datetime.datetime
    names: list[str]


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _load_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CertificateError("CertificateInvalid", "tls.crt is not PEM-encoded X.509 certificates") from None
    if not chain:
        raise CertificateError("CertificateInvalid", "tls.crt holds no certificate")
    return chain


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                       cert.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _system_roots() -> list[x509.Certificate]:
    ctx = ssl.create_default_context()
    out = []
    with warnings.catch_warnings():   # some distributions' roots have non-RFC serial numbers
        warnings.simplefilter("ignore")
        for der in ctx.get_ca_certs(binary_form=True):
            try:
                out.append(x509.load_der_x509_certificate(der))
            except ValueError:
                continue
    return out


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        return san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        return []


def covers(names: list[str], host: str) -> bool:
    """RFC 6125 matching: exact, or a wildcard for exactly one left-most label."""
    host = host.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def check_pair(crt: bytes, key: bytes, *, hosts: list[str], min_valid: datetime.timedelta,
               ca: bytes | None = None, now: datetime.datetime | None = None) -> Checked:
    """A TLS Secret's tls.crt/tls.key are fit to serve: PEM parses, the key matches the leaf, the
    chain links up to a root (self-signed, in ca.crt, or in the system's trust store), the leaf is
    valid now and for `min_valid` more, and its names cover every host."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    chain = _load_chain(crt)
    leaf = chain[0]
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise CertificateError("CertificateInvalid", "tls.key is not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(serialization.Encoding.DER, public) != \
            leaf.public_key().public_bytes(serialization.Encoding.DER, public):
        raise CertificateError("KeyMismatch", "tls.key does not belong to the certificate in tls.crt")
    for cert, issuer in zip(chain, chain[1:]):
        if not _signed_by(cert, issuer):
            raise CertificateError("ChainIncomplete", f"{cert.subject.rfc4514_string()} is not signed "
                                   f"by the next certificate in tls.crt ({issuer.subject.rfc4514_string()})")
    top = chain[-1]
    if not _signed_by(top, top):
        anchors = (_load_chain(ca) if ca else []) + _system_roots()
        if not any(_signed_by(top, a) for a in anchors):
            raise CertificateError("ChainIncomplete", f"the chain ends at {top.subject.rfc4514_string()}, "
                                   f"whose issuer {top.issuer.rfc4514_string()} is neither in tls.crt, "
                                   "nor in ca.crt, nor a trusted root")
    if leaf.not_valid_before_utc > now:
        raise CertificateError("CertificateNotYetValid", f"the certificate is valid only from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M}Z")
    if leaf.not_valid_after_utc <= now:
        raise CertificateError("CertificateExpired", f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
    if leaf.not_valid_after_utc <= now + min_valid:
        raise CertificateError("CertificateExpiresSoon", f"the certificate expires on "
                               f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z, within the required "
                               f"{min_valid.days} day(s)")
    names = _names(leaf)
    missing = [h for h in hosts if not covers(names, h)]
    if missing:
        raise CertificateError("CertificateHostMismatch", f"the certificate's names ({', '.join(names) or 'none'}) "
                               f"do not cover {', '.join(missing)}")
    return Checked(fingerprint(leaf), leaf.not_valid_after_utc, names)


def served(host: str, port: int, server_name: str, *, rules: Sequence[EgressRule],
           timeout: float = 5.0) -> x509.Certificate:
    """The leaf certificate an endpoint serves (no trust decision here: it is compared after),
    connecting only where `rules` (the policy's egress) allow, to the address that was checked.
    Raises EgressDenied/HostNotFound, or OSError: say why with egress.failure, never its text."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with egress.connect(host, port, rules, timeout) as sock:
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)
