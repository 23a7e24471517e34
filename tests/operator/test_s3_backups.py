"""Backups in object storage: `restoreFrom.s3` and the pre-rollback dump to the same bucket, against
a real S3 server on loopback (the Versity S3 Gateway, built by testbed/build-versitygw.sh) over
HTTPS with a private CA, through real Jobs whose `s3` container runs `rewind s3 get|put`.

What a user checks: the live database holds the backup's rows, the pre-rollback dump is in the
bucket and is a real dump of what was live before, and every way the object can be wrong (missing,
wrong credentials, damaged on disk under an intact checksum, a store whose certificate is not
trusted, a pinned checksum that differs) ends Failed with a reason, production exactly as it was."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import uuid

import pytest
from kubernetes import client

from dbhelpers import TABLES, add_rows, checksums, database_names, db_secret, pg_bin
from helpers import condition, get_rollback, kubectl_apply, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]

BUCKET = "backups"


def _dump(postgres, dbname: str) -> bytes:
    return subprocess.run([pg_bin("pg_dump"), "-Fc", f"--dbname={postgres.dsn(dbname)}"],
                          check=True, capture_output=True).stdout


def _store_credentials(api_client, ns: str, s3_server, secret_key: str | None = None) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(ns, {"metadata": {"name": "backup-store"}, "data": {
        "AWS_ACCESS_KEY_ID": base64.b64encode(s3_server.access_key.encode()).decode(),
        "AWS_SECRET_ACCESS_KEY": base64.b64encode((secret_key or s3_server.secret_key).encode()).decode()}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "backup-store-ca"},
                                           "data": {"ca.crt": s3_server.ca_pem.decode()}})


def _rollback(name: str, s3_server, key: str, *, ca: bool = True, **s3) -> dict:
    obj = {"endpoint": s3_server.endpoint, "bucket": BUCKET, "key": key,
           "credentialsSecretRef": "backup-store", **s3}
    if ca:
        obj["caBundle"] = {"name": "backup-store-ca", "key": "ca.crt"}
    return {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback", "metadata": {"name": name},
            "spec": {"severity": "High", "reason": "bad migration corrupted appointments", "database": {
                "connection": {"secretRef": {"name": "booking-db", "key": "DATABASE_URL"}},
                "restoreFrom": {"s3": obj}, "verify": {"tables": TABLES}, "image": "postgres:16"}}}


def test_a_backup_in_object_storage_is_restored_and_the_pre_rollback_dump_goes_beside_it(
        cluster, api_client, postgres, booking_db, job_runner, s3_server, restricted, operator):
    ns = restricted
    s3_server.create_bucket(BUCKET)
    key = f"nightly/{ns}/booking.dump"
    dump = _dump(postgres, booking_db)
    s3_server.put(BUCKET, key, dump)
    at_backup = checksums(postgres, booking_db)
    add_rows(postgres, booking_db, 1000, 7)       # written after the backup point
    before = checksums(postgres, booking_db)
    db_secret(api_client, ns, postgres.dsn(booking_db))
    _store_credentials(api_client, ns, s3_server)

    kubectl_apply(cluster, ns, _rollback("from-s3", s3_server, key))
    rb = wait_phase(api_client, ns, "from-s3", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    assert rb["status"]["phase"] == "Succeeded", (rb["status"], operator.output()[-4000:])
    assert checksums(postgres, booking_db) == at_backup
    d = rb["status"]["database"]
    assert checksums(postgres, d["preRollbackDatabase"]) == before
    assert d["backupSource"] == f"s3://{BUCKET}/{key}"
    assert d["backupSourceSha256"] == hashlib.sha256(dump).hexdigest()
    # The pre-rollback dump is an object in the same bucket, a real dump of what was live before.
    uid8 = rb["metadata"]["uid"].replace("-", "")[:8]
    pre_key = f"rewind/{ns}/from-s3-{uid8}/pre-rollback.dump"
    assert d["preRollbackBackup"] == f"s3://{BUCKET}/{pre_key}"
    pre = s3_server.get(BUCKET, pre_key)
    assert d["preRollbackBackupSha256"] == hashlib.sha256(pre).hexdigest()
    head = s3_server.head(BUCKET, pre_key)
    assert head.headers["x-amz-meta-sha256"] == d["preRollbackBackupSha256"]
    assert head.headers["x-amz-meta-rewind-uid"] == rb["metadata"]["uid"]
    toc = subprocess.run([pg_bin("pg_restore"), "--list"], input=pre, check=True, capture_output=True).stdout
    assert all(f"TABLE DATA public {t}".encode() in toc for t in TABLES)
    assert [s["state"] for s in rb["status"]["steps"]] == ["Succeeded"] * 5
    # The store's secret key is nowhere in the Rollback, and the Jobs got it only by reference.
    assert s3_server.secret_key not in str(get_rollback(api_client, ns, "from-s3"))
    logs = [job_runner.log_file, *sorted((job_runner.root_dir / "logs").glob(f"{ns}_*.log"))]
    assert len(logs) >= 4      # the runner's own, and the check, backup and restore pods'
    assert not [p for p in logs if s3_server.secret_key in p.read_text(errors="replace")]


def _corrupt(s3_server, key: str) -> None:
    """Bit rot: the bytes on the store's disk change, its recorded checksum does not."""
    path = s3_server.object_path(BUCKET, key)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 32):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["missing", "wrong-credentials", "corrupted", "untrusted-tls",
                                  "pinned-checksum-differs"])
def test_a_bad_object_or_store_leaves_production_unchanged(
        cluster, api_client, postgres, booking_db, job_runner, s3_server, restricted, operator, case):
    ns = restricted
    s3_server.create_bucket(BUCKET)
    key = f"nightly/{ns}/booking.dump"
    s3_server.put(BUCKET, key, _dump(postgres, booking_db))
    add_rows(postgres, booking_db, 1000, 7)
    wrong_secret = "wrong-canary-" + uuid.uuid4().hex
    spec, reason, fragment = {
        "missing": ({"key": f"nightly/{ns}/nope.dump"}, "BackupNotFound", "not found (404 NoSuchKey)"),
        "wrong-credentials": ({}, "BackupAccessDenied", "access denied (403"),
        "corrupted": ({}, "BackupCorrupt", "does not match its checksum"),
        "untrusted-tls": ({"ca": False}, "BackupUnreachable", "its TLS certificate is not trusted"),
        "pinned-checksum-differs": ({"sha256": "0" * 64}, "BackupCorrupt", "the sha256 (spec) is 0000"),
    }[case]
    if case == "corrupted":
        _corrupt(s3_server, key)
    db_secret(api_client, ns, postgres.dsn(booking_db))
    _store_credentials(api_client, ns, s3_server, wrong_secret if case == "wrong-credentials" else None)
    before = checksums(postgres, booking_db)
    names_before = database_names(postgres)

    kubectl_apply(cluster, ns, _rollback("bad-s3", s3_server, spec.pop("key", key), **spec))
    rb = wait_phase(api_client, ns, "bad-s3", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    assert rb["status"]["phase"] == "Failed", str(rb["status"])
    ready = condition(rb, "Ready")
    assert ready["reason"] == reason, (ready, operator.output()[-3000:])
    assert fragment in ready["message"], ready["message"]
    assert [s["name"] for s in rb["status"]["steps"] if s["state"] == "Failed"] == ["database/check"]
    # Nothing happened to production: same rows, no database made, no dump uploaded.
    assert checksums(postgres, booking_db) == before
    assert database_names(postgres) == names_before
    uid8 = rb["metadata"]["uid"].replace("-", "")[:8]
    assert s3_server.head(BUCKET, f"rewind/{ns}/bad-s3-{uid8}/pre-rollback.dump").status_code == 404
    assert wrong_secret not in str(rb) and s3_server.secret_key not in str(rb)
