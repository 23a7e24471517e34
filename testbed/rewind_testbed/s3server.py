"""A real S3 server on loopback for the tests: the Versity S3 Gateway (Apache-2.0) over a plain
directory, built from its Go module by testbed/build-versitygw.sh, serving HTTPS with a
certificate from a CA of its own (so a client must be given `ca_pem` to trust it). Objects are
files under `data_dir/<bucket>/<key>`; their metadata (checksums, ETag) is kept apart in a sidecar
directory, so a test can damage an object's bytes on disk and leave its recorded checksum as it
was (bit rot, as a store would serve it).

    with S3Server.start(run_dir) as s3:
        s3.create_bucket("backups"); s3.put("backups", "x.dump", data)
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import httpx_auth

from rewind_testbed import certs
from rewind_testbed.procs import Proc, free_port, wait_until

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "build-versitygw.sh"
REGION = "us-east-1"


def find_binary() -> Path:
    """$REWIND_VERSITYGW, else the binary the build script keeps in the cache."""
    override = os.environ.get("REWIND_VERSITYGW")
    if override:
        return Path(override)
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(result.stdout.strip().splitlines()[-1]) / "versitygw"


@dataclass
class S3Server:
    run_dir: Path
    port: int
    access_key: str
    secret_key: str
    ca_pem: bytes
    proc: Proc | None = field(default=None, repr=False)

    host: str = "localhost"

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def ca_file(self) -> Path:
        return self.run_dir / "ca.crt"

    @property
    def log(self) -> Path:
        return self.run_dir / "versitygw.log"

    @classmethod
    def start(cls, run_dir: Path, binary: Path | None = None, host: str = "localhost") -> "S3Server":
        """On loopback (https://localhost:PORT); or on `host`, an address pods of an existing
        cluster reach this machine at (its certificate then names that address)."""
        binary = binary or find_binary()
        run_dir.mkdir(parents=True, exist_ok=True)
        for d in ("data", "meta"):
            (run_dir / d).mkdir(exist_ok=True)
        ca = certs.issue("Rewind test S3 CA", ca=True, days=30)
        leaf = certs.issue(host, ca, hosts=[host])
        (run_dir / "ca.crt").write_bytes(ca.cert_pem)
        (run_dir / "tls.crt").write_bytes(leaf.cert_pem)
        key = run_dir / "tls.key"
        key.write_bytes(leaf.key_pem)
        key.chmod(0o600)
        s3 = cls(run_dir, free_port(), "rewind-test-" + secrets.token_hex(4), secrets.token_urlsafe(24),
                 ca.cert_pem, host=host)
        env = {**os.environ, "ROOT_ACCESS_KEY_ID": s3.access_key, "ROOT_SECRET_ACCESS_KEY": s3.secret_key}
        listen = "127.0.0.1" if host == "localhost" else host
        s3.proc = Proc("versitygw", [str(binary), "--port", f"{listen}:{s3.port}",
                                     "--cert", str(run_dir / "tls.crt"), "--key", str(key), "--quiet",
                                     "posix", "--sidecar", str(run_dir / "meta"), str(s3.data_dir)],
                       s3.log, env=env)
        s3.proc.start()
        try:
            wait_until("versitygw answers", lambda: s3.client().get(f"{s3.endpoint}/").status_code == 200,
                       60, [s3.proc])
        except BaseException:
            s3.stop()
            raise
        return s3

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> httpx.Client:
        import ssl
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        return httpx.Client(auth=httpx_auth.AWS4Auth(access_key or self.access_key, secret_key or self.secret_key,
                                                     REGION, "s3"), verify=context, timeout=60)

    def create_bucket(self, bucket: str) -> None:
        with self.client() as c:
            r = c.put(f"{self.endpoint}/{bucket}")
            if r.status_code not in (200, 409):
                raise RuntimeError(f"creating bucket {bucket}: {r.status_code} {r.text[:200]}")

    def put(self, bucket: str, key: str, data: bytes, *, checksum: bool = True) -> None:
        """Uploads in one PUT; with `checksum`, a SHA-256 the store records (as `aws s3 cp
        --checksum-algorithm SHA256` does), else only its MD5 ETag."""
        headers = {"x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(data).digest()).decode()} \
            if checksum else {}
        with self.client() as c:
            r = c.put(f"{self.endpoint}/{bucket}/{key}", content=data, headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"uploading {bucket}/{key}: {r.status_code} {r.text[:200]}")

    def head(self, bucket: str, key: str) -> httpx.Response:
        with self.client() as c:
            return c.head(f"{self.endpoint}/{bucket}/{key}")

    def get(self, bucket: str, key: str) -> bytes:
        with self.client() as c:
            r = c.get(f"{self.endpoint}/{bucket}/{key}")
            r.raise_for_status()
            return r.content

    def object_path(self, bucket: str, key: str) -> Path:
        return self.data_dir / bucket / key

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None

    def __enter__(self) -> "S3Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
