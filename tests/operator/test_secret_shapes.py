"""Secrets of the wrong shape (issue 15, item 2): a Rollback whose connection or store credentials
Secret lacks the key, holds bytes that are not text, or text that is not a URL, ends at preflight
with a reason naming the Secret and the key, never a value; nothing is written (no Job, no
database) and production is as it was."""

from __future__ import annotations

import base64

import pytest
from kubernetes import client

from dbhelpers import checksums, database_names, db_rollback
from helpers import audit_writes, condition, kubectl_apply, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]

CANARY = "canary-not-for-status-7f3a"


def _secret(api_client, ns: str, name: str, data: dict[str, bytes]) -> None:
    client.CoreV1Api(api_client).create_namespaced_secret(ns, {
        "metadata": {"name": name}, "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})


@pytest.mark.parametrize("case", ["missing-key", "binary", "key-value-form", "two-ats", "s3-key-missing"])
def test_a_secret_of_the_wrong_shape_is_refused_naming_it_and_changes_nothing(
        cluster, api_client, postgres, booking_db, namespace, operator, case):
    ns = namespace
    url = postgres.dsn(booking_db).encode()
    spec = {}
    connection, reason, fragment = {
        "missing-key": ({"OTHER": url}, "SecretKeyNotFound", "has no key 'DATABASE_URL' (keys: OTHER)"),
        "binary": ({"DATABASE_URL": b"\xff\xfe" + CANARY.encode()}, "InvalidConnection", "is not a UTF-8 URL"),
        "key-value-form": ({"DATABASE_URL": f"host=127.0.0.1 dbname={booking_db} password={CANARY}".encode()},
                           "InvalidConnection", "must hold a postgresql:// URL"),
        "two-ats": ({"DATABASE_URL": f"postgresql://postgres:pa@{CANARY}@127.0.0.1/{booking_db}".encode()},
                    "InvalidConnection", "percent-encode the password (%40 for @)"),
        "s3-key-missing": ({"DATABASE_URL": url}, "SecretKeyNotFound", "has no key 'AWS_SECRET_ACCESS_KEY'"),
    }[case]
    _secret(api_client, ns, "booking-db", connection)
    if case == "s3-key-missing":
        _secret(api_client, ns, "store", {"AWS_ACCESS_KEY_ID": b"key-id", "OTHER": CANARY.encode()})
        spec = {"restoreFrom": {"s3": {"endpoint": "https://localhost:9", "bucket": "backups",
                                       "key": "nightly.dump", "credentialsSecretRef": "store"}}}
    before, names = checksums(postgres, booking_db), database_names(postgres)

    kubectl_apply(cluster, ns, db_rollback("shape", **spec))
    rb = wait_phase(api_client, ns, "shape", {"Succeeded", "Failed", "Interrupted"}, timeout=90)
    assert rb["status"]["phase"] == "Failed", rb["status"]
    ready = condition(rb, "Ready")
    assert ready["reason"] == reason, ready
    assert fragment in ready["message"], ready["message"]
    assert CANARY not in str(rb) and postgres.password not in str(rb)
    assert audit_writes(cluster, ns, "jobs") == []
    assert checksums(postgres, booking_db) == before and database_names(postgres) == names
