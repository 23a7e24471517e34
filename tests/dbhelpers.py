"""Helpers for the database tests: the booking schema, rows, dumps, per-table checksums."""

from __future__ import annotations

import base64
import subprocess

from kubernetes import client

TABLES = ["appointments", "users", "calendar_connections"]
CLAIM = "db-backups"


def checksums(postgres, dbname: str) -> dict[str, tuple[int, str]]:
    out = {}
    with postgres.connect(dbname) as conn:
        for t in TABLES:
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (t,)).fetchone()[0]
            if exists:
                out[t] = conn.execute(
                    f"SELECT count(*), coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM {t} x"
                ).fetchone()
    return out


def add_rows(postgres, dbname: str, start: int, count: int) -> None:
    with postgres.connect(dbname) as conn:
        conn.execute("INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(%s::int, %s::int) g",
                     (start, start + count - 1))
        conn.execute("INSERT INTO appointments SELECT g, g, now() FROM generate_series(%s::int, %s::int) g",
                     (start, start + count - 1))
        conn.execute("INSERT INTO calendar_connections SELECT g, g, 'google', 'tok' || g FROM generate_series(%s::int, %s::int) g",
                     (start, start + count - 1))
        conn.commit()


def pg_bin(name: str) -> str:
    from rewind_testbed.postgres import find_bindir
    return str(find_bindir() / name)


def make_dump(postgres, dbname: str, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([pg_bin("pg_dump"), "-Fc", f"--dbname={postgres.dsn(dbname)}", "-f", str(path)],
                   check=True, capture_output=True)


def db_secret(api_client, namespace: str, url: str) -> None:
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
        "metadata": {"name": "booking-db"},
        "data": {"DATABASE_URL": base64.b64encode(url.encode()).decode()}})


def db_rollback(name: str, path: str = "nightly/backup.dump", **database) -> dict:
    spec = {"connection": {"secretRef": {"name": "booking-db", "key": "DATABASE_URL"}},
            "restoreFrom": {"persistentVolumeClaim": {"claimName": CLAIM, "path": path}},
            "verify": {"tables": TABLES}, "image": "postgres:16", **database}
    return {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback", "metadata": {"name": name},
            "spec": {"severity": "High", "reason": "bad migration corrupted appointments",
                     "database": spec}}


def database_names(postgres) -> set[str]:
    with postgres.connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def uid8(rb: dict) -> str:
    return rb["metadata"]["uid"].replace("-", "")[:8]


def ledger(postgres, uid: str, step: str) -> str | None:
    with postgres.connect("postgres") as conn:
        if not conn.execute("SELECT to_regclass('rewind.restore_ledger') IS NOT NULL").fetchone()[0]:
            return None
        row = conn.execute("SELECT state FROM rewind.restore_ledger WHERE rollback_uid = %s AND step = %s",
                           (uid, step)).fetchone()
        return row[0] if row else None


def allows_connections(postgres, dbname: str) -> bool:
    with postgres.connect("postgres") as conn:
        return conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (dbname,)).fetchone()[0]
