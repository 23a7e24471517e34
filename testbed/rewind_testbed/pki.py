"""A throw-away PKI for the local control plane: a CA, the API server's serving certificate, an
admin client certificate (group system:masters) and the service-account signing key pair."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def admin_crt(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _sign(
    subject: x509.Name,
    public_key,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usages: list | None = None,
    sans: list | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def generate(directory: Path) -> Pki:
    """Writes a fresh PKI into `directory` and returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)

    ca_key = _key()
    ca_name = _name("rewind-testbed-ca")
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_crt, _sign(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True))

    api_key = _key()
    _write_key(pki.apiserver_key, api_key)
    sans = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
    ]
    _write_cert(
        pki.apiserver_crt,
        _sign(_name("kube-apiserver"), api_key.public_key(), ca_name, ca_key,
              usages=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans),
    )

    admin_key = _key()
    _write_key(pki.admin_key, admin_key)
    _write_cert(
        pki.admin_crt,
        _sign(_name("rewind-testbed-admin", "system:masters"), admin_key.public_key(),
              ca_name, ca_key, usages=[ExtendedKeyUsageOID.CLIENT_AUTH]),
    )

    sa_key = _key()
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def issue_client(pki: Pki, directory: Path, username: str, groups: list[str]) -> tuple[Path, Path]:
    """A client certificate for `username` in `groups` (the API server reads CN as the user name
    and O as groups), signed by the test bed's CA: a distinct user, as a real cluster's
    authentication would present them. Returns (certificate, key) paths."""
    from cryptography.x509.oid import NameOID as _oid

    directory.mkdir(parents=True, exist_ok=True)
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    ca_name = x509.load_pem_x509_certificate(pki.ca_crt.read_bytes()).subject
    key = _key()
    attrs = [x509.NameAttribute(_oid.COMMON_NAME, username)]
    attrs += [x509.NameAttribute(_oid.ORGANIZATION_NAME, g) for g in groups]
    safe = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in username)
    crt, key_path = directory / f"{safe}.crt", directory / f"{safe}.key"
    _write_key(key_path, key)
    _write_cert(crt, _sign(x509.Name(attrs), key.public_key(), ca_name, ca_key,
                           usages=[ExtendedKeyUsageOID.CLIENT_AUTH]))
    return crt, key_path


def user_kubeconfig(pki: Pki, admin_kubeconfig: Path, username: str, groups: list[str],
                    directory: Path) -> Path:
    """A kubeconfig (mode 0600) for a distinct user with a client certificate from the test bed's
    CA, for the cluster of `admin_kubeconfig`."""
    import yaml

    crt, key = issue_client(pki, directory, username, groups)
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cl = admin["clusters"][0]
    path = directory / f"{crt.stem}.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cl],
        "users": [{"name": username, "user": {"client-certificate": str(crt), "client-key": str(key)}}],
        "contexts": [{"name": username, "context": {"cluster": cl["name"], "user": username}}],
        "current-context": username}))
    path.chmod(0o600)
    return path
