"""Test certificates made with `cryptography`: a root CA, an intermediate, leaves for hosts."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def issue(cn: str, issuer: Issued | None = None, *, ca: bool = False, hosts: list[str] = (),
          not_before: datetime.datetime | None = None, days: int = 90) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = not_before or NOW - datetime.timedelta(days=1)
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.cert.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if hosts:
        b = b.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
    return Issued(b.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def _san(host: str) -> x509.GeneralName:
    """A host name, or an IP address (as an IP SAN, which is what a client checks an IP against)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def pki():
    root = issue("Test Root", ca=True, days=3650)
    inter = issue("Test Intermediate", root, ca=True, days=1825)
    return root, inter
