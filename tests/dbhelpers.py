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


def fingerprint(postgres, dbname: str) -> dict:
    """What a person would compare between a database and its restored twin, by name (no OIDs):
    how the database was created, its owner, limit, grants, comment and settings; the owner and
    grants of every schema, relation, function and large object; extensions; sequences' values;
    large objects' contents; and the order text sorts in (its collation at work)."""
    with postgres.connect("postgres") as conn:
        db = conn.execute("""
            SELECT pg_encoding_to_char(encoding), datlocprovider, datcollate, datctype,
                   coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale'),
                   pg_get_userbyid(datdba), datconnlimit, datallowconn,
                   (SELECT array_agg(a ORDER BY a) FROM unnest(coalesce(datacl, acldefault('d', datdba))::text[]) a),
                   shobj_description(oid, 'pg_database'),
                   (SELECT spcname FROM pg_tablespace WHERE oid = dattablespace)
            FROM pg_database d WHERE datname = %s""", (dbname,)).fetchone()
        settings = conn.execute("""
            SELECT coalesce(r.rolname, ''), s.setconfig FROM pg_db_role_setting s
            JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole
            WHERE d.datname = %s ORDER BY 1""", (dbname,)).fetchall()
    with postgres.connect(dbname) as conn:
        q = lambda text: conn.execute(text).fetchall()   # noqa: E731
        objects = {
            "schemas": q("""SELECT nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace
                            WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1"""),
            "relations": q("""SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relacl::text
                              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                              WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                                AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1, 2"""),
            "functions": q("""SELECT p.proname, pg_get_userbyid(p.proowner), p.proacl::text FROM pg_proc p
                              JOIN pg_namespace n ON n.oid = p.pronamespace
                              WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"""),
            "extensions": q("SELECT extname, extversion, pg_get_userbyid(extowner) FROM pg_extension ORDER BY 1"),
            "large objects": q("""SELECT oid::bigint, pg_get_userbyid(lomowner), lomacl::text, md5(lo_get(oid))
                                  FROM pg_largeobject_metadata ORDER BY 1"""),
            "sequences": q("""SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2"""),
        }
        sorted_emails = conn.execute("SELECT string_agg(email, ',' ORDER BY email) FROM users").fetchone()[0] \
            if conn.execute("SELECT to_regclass('users') IS NOT NULL").fetchone()[0] else None
    return {"database": db, "settings": settings, **objects, "text order": sorted_emails}
