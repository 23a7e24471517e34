"""`rewind s3 get|put` (rewind/adapters/s3.py) against a real S3 server on loopback (the Versity
S3 Gateway over HTTPS with a private CA): the paths a whole rollback does not reach with a small
dump. A multipart upload and its download, an object with no checksum to check it by, a pinned
checksum, an object that is not this rollback's, and the CLI's exit codes and termination log."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewind.adapters import s3

BUCKET = "adapter-tests"


@pytest.fixture
def store(s3_server, tmp_path):
    s3_server.create_bucket(BUCKET)
    ca = tmp_path / "ca.crt"
    ca.write_bytes(s3_server.ca_pem)

    def location(key: str) -> s3.Location:
        return s3.Location(s3_server.endpoint, "us-east-1", BUCKET, key, str(ca))
    return location


def _client(s3_server, loc):
    return s3.client(loc, s3_server.access_key, s3_server.secret_key)


def test_a_multipart_upload_comes_back_whole_and_checked(s3_server, store, tmp_path, monkeypatch):
    monkeypatch.setattr(s3, "PART_BYTES", 5 * 1024 * 1024)     # S3's smallest part
    data = os.urandom(12 * 1024 * 1024 + 123)                  # three parts
    src = tmp_path / "dump"
    src.write_bytes(data)
    loc = store(f"multi/{tmp_path.name}.dump")
    with _client(s3_server, loc) as c:
        put = s3.put(c, loc, src, owner="uid-1")
        assert put == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        head = c.head(loc.url)
        assert "-" in head.headers["etag"], "a multipart ETag: no checksum of the content"
        assert head.headers["x-amz-meta-sha256"] == put["sha256"]
        got = s3.get(c, loc, tmp_path / "back", expect_sha256=put["sha256"])
    assert got == put and (tmp_path / "back").read_bytes() == data
    assert not (tmp_path / "back.partial").exists()


def test_an_object_with_no_checksum_is_refused_unless_one_is_pinned(s3_server, store, tmp_path, monkeypatch):
    monkeypatch.setattr(s3, "PART_BYTES", 5 * 1024 * 1024)
    data = os.urandom(6 * 1024 * 1024)
    src = tmp_path / "dump"
    src.write_bytes(data)
    loc = store(f"bare/{tmp_path.name}.dump")
    with _client(s3_server, loc) as c:
        s3._multipart(c, loc, src, meta={})                   # as another tool uploads: no sha256
        with pytest.raises(s3.S3Failure) as refused:
            s3.get(c, loc, tmp_path / "out")
        assert refused.value.exit_code == s3.NO_CHECKSUM
        assert "pin its SHA-256" in refused.value.message
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
        assert s3.get(c, loc, tmp_path / "out", pinned=hashlib.sha256(data).hexdigest())["bytes"] == len(data)
        with pytest.raises(s3.S3Failure) as changed:
            s3.get(c, loc, tmp_path / "again", pinned=hashlib.sha256(data).hexdigest(), expect_sha256="0" * 64)
        assert changed.value.exit_code == s3.CORRUPT and "changed since it was checked" in changed.value.message


def test_an_object_that_is_not_this_rollbacks_is_never_overwritten(s3_server, store, tmp_path):
    src = tmp_path / "dump"
    src.write_bytes(b"first")
    loc = store(f"owned/{tmp_path.name}.dump")
    with _client(s3_server, loc) as c:
        s3.put(c, loc, src, owner="uid-a")
        src.write_bytes(b"second, same rollback")
        s3.put(c, loc, src, owner="uid-a")                     # its own: a run again after a crash
        src.write_bytes(b"third, another rollback")
        with pytest.raises(s3.S3Failure) as refused:
            s3.put(c, loc, src, owner="uid-b")
    assert refused.value.exit_code == s3.EXISTS_NOT_OURS
    assert s3_server.get(BUCKET, loc.key) == b"second, same rollback"


def test_the_cli_says_what_went_wrong_in_its_exit_code_and_termination_log(s3_server, store, tmp_path):
    loc = store("nowhere/missing.dump")
    term = tmp_path / "termination-log"
    env = {**os.environ, "S3_ENDPOINT": loc.endpoint, "S3_BUCKET": BUCKET, "S3_KEY": loc.key,
           "S3_CA_FILE": loc.ca_file, "AWS_ACCESS_KEY_ID": s3_server.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_key, "TERMINATION_LOG": str(term)}
    rewind = [sys.executable, "-m", "rewind.cli", "s3", "get", str(tmp_path / "x")]
    out = subprocess.run(rewind, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == s3.NOT_FOUND, out.stderr
    assert "not found (404 NoSuchKey)" in term.read_text()
    out = subprocess.run(rewind, env={**env, "AWS_SECRET_ACCESS_KEY": "wrong-canary"}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == s3.ACCESS_DENIED, out.stderr
    for text in (term.read_text(), out.stdout, out.stderr):
        assert "wrong-canary" not in text and s3_server.secret_key not in text
    assert Path(term).read_text().startswith("fetching s3://")
