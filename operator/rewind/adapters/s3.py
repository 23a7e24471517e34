"""Backups in object storage (S3 and what speaks its API), for the database Jobs: `rewind s3 get`
fetches a backup into the Job's scratch volume and checks its checksum before anything reads it;
`rewind s3 put` uploads the pre-rollback dump. The operator never moves a backup's bytes itself.

Requests are signed (AWS Signature Version 4, by httpx-auth) and sent over TLS, verified against
the system's trust store or the CA bundle the spec names; there is no way to turn verification
off. boto3 would be the usual client, but botocore pins python-dateutil below 3 and the official
Kubernetes client needs 3 or newer, so the two cannot share the operator's image.

A checksum is checked before anything else reads the object, from what the store recorded for it
at upload: `x-amz-checksum-sha256` (a whole-object SHA-256), the `sha256` metadata Rewind's own
uploads carry, or a single-part upload's MD5 ETag; or against the SHA-256 the spec pins. An object
with none of these is refused (a multipart ETag is no checksum of the content).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import httpx_auth

# Exit codes, the same as the database scripts' (scripts/check.sh, backup.sh) where they mean the
# same: the operator maps them to a step's reason.
NOT_FOUND, EMPTY, CORRUPT, ACCESS_DENIED, UNREACHABLE, NO_CHECKSUM = 10, 11, 12, 14, 15, 16
EXISTS_NOT_OURS, FAILED = 20, 21
# Single PUT up to this size; above it, a multipart upload with parts of this size (each part is
# held in memory once, to be signed).
PART_BYTES = 64 * 1024 * 1024
CHUNK = 1024 * 1024
TIMEOUT = httpx.Timeout(30.0, read=300.0)


class S3Failure(Exception):
    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code, self.message = exit_code, message


@dataclass(frozen=True)
class Location:
    endpoint: str     # https://host[:port], no path
    region: str
    bucket: str
    key: str
    ca_file: str | None = None

    @property
    def ref(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def url(self) -> str:
        return f"{self.endpoint.rstrip('/')}/{quote(self.bucket)}/{quote(self.key, safe='/')}"

    @classmethod
    def from_env(cls, env=os.environ) -> "Location":
        return cls(env["S3_ENDPOINT"], env.get("S3_REGION") or "us-east-1", env["S3_BUCKET"],
                   env["S3_KEY"], env.get("S3_CA_FILE") or None)


def client(loc: Location, access_key: str, secret_key: str) -> httpx.Client:
    # The system's trust store (or the named bundle), as a client of the store would verify it.
    context = ssl.create_default_context(cafile=loc.ca_file)
    return httpx.Client(auth=httpx_auth.AWS4Auth(access_key, secret_key, loc.region, "s3"),
                        verify=context, timeout=TIMEOUT, follow_redirects=False)


def _error(loc: Location, response: httpx.Response, doing: str) -> S3Failure:
    """The store's error code (never its whole answer: it may echo the request)."""
    code = ""
    if response.headers.get("content-type", "").split(";")[0].strip() in ("application/xml", "text/xml"):
        found = re.search(rb"<Code>([A-Za-z0-9.]{1,64})</Code>", response.read()[:4096])
        code = found.group(1).decode() if found else ""
    what = f"{response.status_code}{' ' + code if code else ''}"
    if response.status_code == 404 or code in ("NoSuchKey", "NoSuchBucket"):
        return S3Failure(NOT_FOUND, f"{doing} {loc.ref} at {loc.endpoint}: not found ({what})")
    if response.status_code == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return S3Failure(ACCESS_DENIED, f"{doing} {loc.ref} at {loc.endpoint}: access denied ({what}); "
                                        "check the credentials Secret and the key's permissions")
    return S3Failure(FAILED, f"{doing} {loc.ref} at {loc.endpoint}: the store answered {what}")


def _unreachable(loc: Location, e: Exception) -> S3Failure:
    cause = e
    while cause.__cause__ or cause.__context__:
        if isinstance(cause, ssl.SSLCertVerificationError):
            break
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        how = f"its TLS certificate is not trusted ({cause.verify_message})"
    else:
        how = f"{type(e).__name__}"
    return S3Failure(UNREACHABLE, f"cannot reach {loc.endpoint} for {loc.ref}: {how}")


def expected_checksums(headers: httpx.Headers, pinned: str | None) -> dict[str, str]:
    """What the object's content must hash to, by the algorithm each is in."""
    out = {}
    if pinned:
        out["sha256 (spec)"] = pinned.lower()
    whole = headers.get("x-amz-checksum-sha256", "")
    if whole and "-" not in whole and headers.get("x-amz-checksum-type", "FULL_OBJECT") == "FULL_OBJECT":
        try:
            out["sha256 (x-amz-checksum-sha256)"] = base64.b64decode(whole, validate=True).hex()
        except ValueError:
            pass
    meta = headers.get("x-amz-meta-sha256", "")
    if re.fullmatch(r"[0-9a-fA-F]{64}", meta):
        out["sha256 (metadata)"] = meta.lower()
    etag = headers.get("etag", "").strip('"')
    if re.fullmatch(r"[0-9a-fA-F]{32}", etag):
        out["md5 (ETag)"] = etag.lower()
    return out


def get(c: httpx.Client, loc: Location, out: Path, pinned: str | None = None,
        expect_sha256: str | None = None) -> dict:
    """Downloads the object to `out` and checks it against every checksum there is for it.
    Returns {"sha256", "bytes"}; raises S3Failure."""
    partial = out.with_name(out.name + ".partial")
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    try:
        with c.stream("GET", loc.url, headers={"x-amz-checksum-mode": "ENABLED"}) as r:
            if r.status_code != 200:
                raise _error(loc, r, "fetching")
            expected = expected_checksums(r.headers, pinned)
            if not expected:
                raise S3Failure(NO_CHECKSUM, f"{loc.ref} has no checksum to check it by (no SHA-256 "
                                             "checksum, no sha256 metadata, a multipart ETag); pin its "
                                             "SHA-256 in the spec (s3.sha256) to restore it")
            with open(partial, "wb") as f:
                for chunk in r.iter_bytes(CHUNK):
                    sha.update(chunk)
                    md5.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
    except httpx.TransportError as e:
        partial.unlink(missing_ok=True)
        raise _unreachable(loc, e) from None
    except S3Failure:
        partial.unlink(missing_ok=True)
        raise
    got = {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}
    try:
        _check(loc, got, expected, expect_sha256, size)
    except S3Failure:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(out)
    return {"sha256": got["sha256"], "bytes": size}


def _check(loc: Location, got: dict[str, str], expected: dict[str, str], expect_sha256: str | None,
           size: int) -> None:
    """The downloaded content against every checksum there is for it; S3Failure if one differs."""
    for name, value in expected.items():
        algorithm = name.split(" ")[0]
        if got[algorithm] != value:
            raise S3Failure(CORRUPT, f"{loc.ref} does not match its checksum: its content's {algorithm} is "
                                     f"{got[algorithm][:16]}..., the {name} is {value[:16]}...; nothing was "
                                     "restored from it")
    if expect_sha256 and got["sha256"] != expect_sha256:
        raise S3Failure(CORRUPT, f"{loc.ref} changed since it was checked (sha256 {got['sha256'][:16]}..., "
                                 f"checked {expect_sha256[:16]}...); nothing was restored from it")
    if size == 0:
        raise S3Failure(EMPTY, f"{loc.ref} is empty (0 bytes)")


def put(c: httpx.Client, loc: Location, path: Path, owner: str) -> dict:
    """Uploads `path` (the pre-rollback dump) unless an object that is not this rollback's
    (metadata rewind-uid) is there. Returns {"sha256", "bytes"}; raises S3Failure."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    sha, size = digest.hexdigest(), path.stat().st_size
    meta = {"x-amz-meta-sha256": sha, "x-amz-meta-rewind-uid": owner}
    try:
        r = c.head(loc.url)
        if r.status_code == 200 and r.headers.get("x-amz-meta-rewind-uid") != owner:
            raise S3Failure(EXISTS_NOT_OURS, f"refusing to overwrite an existing object: {loc.ref}")
        if r.status_code not in (200, 404):
            raise _error(loc, r, "looking up")
        if size <= PART_BYTES:
            body = path.read_bytes()
            headers = {**meta, "x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(sha)).decode()}
            r = c.put(loc.url, content=body, headers=headers)
            if r.status_code != 200:
                raise _error(loc, r, "uploading")
        else:
            _multipart(c, loc, path, meta)
    except httpx.TransportError as e:
        raise _unreachable(loc, e) from None
    return {"sha256": sha, "bytes": size}


def _multipart(c: httpx.Client, loc: Location, path: Path, meta: dict) -> None:
    r = c.post(loc.url, params={"uploads": ""}, headers=meta)
    if r.status_code != 200:
        raise _error(loc, r, "starting the upload of")
    upload = re.search(rb"<UploadId>([^<]{1,1024})</UploadId>", r.content)
    if not upload:
        raise S3Failure(FAILED, f"starting the upload of {loc.ref}: the store gave no upload id")
    upload_id = upload.group(1).decode()
    parts = []
    try:
        with open(path, "rb") as f:
            for number in range(1, 10001):
                body = f.read(PART_BYTES)
                if not body:
                    break
                r = c.put(loc.url, params={"partNumber": str(number), "uploadId": upload_id}, content=body,
                          headers={"x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(body).digest()).decode()})
                if r.status_code != 200:
                    raise _error(loc, r, f"uploading part {number} of")
                parts.append((number, r.headers.get("etag", "")))
        done = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts)
        r = c.post(loc.url, params={"uploadId": upload_id},
                   content=f"<CompleteMultipartUpload>{done}</CompleteMultipartUpload>".encode())
        if r.status_code != 200 or b"<Error>" in r.content[:512]:
            raise _error(loc, r, "completing the upload of")
    except BaseException:
        c.delete(loc.url, params={"uploadId": upload_id})
        raise


def main(argv: list[str]) -> int:
    """`rewind s3 get FILE` / `rewind s3 put FILE`: the object named by S3_* in the environment,
    credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. A failure's message goes to the
    termination log (TERMINATION_LOG, default /dev/termination-log) and its exit code says which."""
    if len(argv) != 2 or argv[0] not in ("get", "put"):
        print("usage: rewind s3 get|put FILE", file=sys.stderr)
        return 2
    env = os.environ
    termination = Path(env.get("TERMINATION_LOG", "/dev/termination-log"))
    loc = Location.from_env(env)
    try:
        with client(loc, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) as c:
            if argv[0] == "get":
                result = get(c, loc, Path(argv[1]), env.get("S3_SHA256") or None, env.get("EXPECT_SHA256") or None)
            else:
                result = put(c, loc, Path(argv[1]), env["ROLLBACK_UID"])
    except S3Failure as e:
        termination.write_text(e.message)
        print(f"rewind s3 {argv[0]}: {e.message}", file=sys.stderr)
        return e.exit_code
    termination.write_text(json.dumps(result))
    print(f"rewind s3 {argv[0]}: {loc.ref}: {result['bytes']} bytes, sha256 {result['sha256']}", file=sys.stderr)
    return 0
