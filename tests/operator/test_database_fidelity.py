"""The restored database is the live one's twin, as the application sees it: after the swap the
application's own role (not the operator's) connects with its own password and reads and writes
what it could before; a role refused CONNECT is still refused; and a catalog fingerprint (how the
database was created, its owner, limit, grants, comment and settings, every object's owner and
grants, sequences, large objects, the order its collation sorts text in) is the backup's.

The live database uses an ICU collation (de-DE: "apfel" sorts before "Birne", unlike C), so a
restore into a database created bare would sort, and index, differently."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from psycopg import sql

from dbhelpers import CLAIM, db_rollback, db_secret, fingerprint, make_dump, uid8
from helpers import condition, get_rollback, kubectl_apply, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]

EMAILS = ["Birne@example.com", "apfel@example.com", "Zitrone@example.com", "äpfel@example.com"]


class Roles:
    """Login roles of one test (roles are server-wide): the application owning its database,
    a reader granted SELECT, a stranger refused CONNECT. Passwords are random and never printed."""

    def __init__(self, postgres, prefix: str):
        self.postgres = postgres
        self.app, self.reader, self.stranger = (f"{prefix}_{r}" for r in ("app", "reader", "stranger"))
        self.passwords = {r: secrets.token_urlsafe(18) for r in (self.app, self.reader, self.stranger)}
        with postgres.connect(autocommit=True) as conn:
            for role, pw in self.passwords.items():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(pw)))

    def connect(self, role: str, dbname: str) -> psycopg.Connection:
        return psycopg.connect(host=self.postgres.host, port=self.postgres.port, user=role,
                               password=self.passwords[role], dbname=dbname)

    def dsn(self, role: str, dbname: str) -> str:
        return self.postgres.dsn(dbname, user=role, password=self.passwords[role])

    def drop(self) -> None:
        """The databases the roles own (the live one, its pre-rollback copy), then the roles."""
        with self.postgres.connect(autocommit=True) as conn:
            for role in self.passwords:
                for (d,) in conn.execute("SELECT datname FROM pg_database WHERE datdba = "
                                         "(SELECT oid FROM pg_roles WHERE rolname = %s)", (role,)).fetchall():
                    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(d)))
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def twin_setup(postgres, database):
    """The live database as an application would have it: created with an ICU collation, owned by
    the application's role, CONNECT revoked from PUBLIC and granted to the app and the reader,
    a connection limit, a comment, database and role-in-database settings; tables, a view, a
    sequence and a large object owned by the app, SELECT granted to the reader."""
    roles = Roles(postgres, database[-40:])
    app, reader = sql.Identifier(roles.app), sql.Identifier(roles.reader)
    live = sql.Identifier(database)
    with postgres.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(live))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu "
                             "ICU_LOCALE 'de-DE' LOCALE 'C.UTF-8' OWNER {} CONNECTION LIMIT 25").format(live, app))
        conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(live))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(live, reader))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'booking: appointments and users'").format(live))
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = \"$user\", public, booking").format(live))
        conn.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '3MB'").format(live))
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET statement_timeout = '7s'").format(app, live))
        # The operator's ledger in `postgres`, writable by the app for the owner's own rollback.
        conn.execute("CREATE SCHEMA IF NOT EXISTS rewind")
        conn.execute("CREATE TABLE IF NOT EXISTS rewind.restore_ledger (rollback_uid text NOT NULL, "
                     "step text NOT NULL, state text NOT NULL, detail text, updated_at timestamptz NOT NULL "
                     "DEFAULT now(), PRIMARY KEY (rollback_uid, step))")
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA rewind TO {}").format(app))
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON rewind.restore_ledger TO {}").format(app))
    with roles.connect(roles.app, database) as conn:
        conn.execute("CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL UNIQUE)")
        conn.execute("CREATE TABLE appointments (id serial PRIMARY KEY, user_id int REFERENCES users, at timestamptz)")
        conn.execute("CREATE TABLE calendar_connections (id serial PRIMARY KEY, user_id int REFERENCES users, "
                     "provider text, access_token text)")
        conn.execute("CREATE VIEW upcoming AS SELECT u.email, a.at FROM appointments a JOIN users u ON u.id = a.user_id")
        for email in EMAILS:
            conn.execute("INSERT INTO users (email) VALUES (%s)", (email,))
        conn.execute("INSERT INTO appointments (user_id, at) SELECT id, now() FROM users")
        conn.execute("INSERT INTO calendar_connections (user_id, provider, access_token) "
                     "SELECT id, 'google', 'tok' || id FROM users")
        conn.execute("SELECT lo_from_bytea(0, 'invoice #1'::bytea)")
        conn.execute(sql.SQL("GRANT SELECT ON users, upcoming TO {}").format(reader))
        conn.commit()
    yield roles
    roles.drop()


def _as_app_after_the_swap(roles, live: str) -> None:
    """What the application does, with its own password: read, write, its sequence, its large object."""
    with roles.connect(roles.app, live) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "7s"
        assert conn.execute("SHOW work_mem").fetchone()[0] == "3MB"
        assert [r[0] for r in conn.execute("SELECT email FROM users ORDER BY email")] == \
            ["apfel@example.com", "äpfel@example.com", "Birne@example.com", "Zitrone@example.com"]
        assert conn.execute("SELECT count(*) FROM upcoming").fetchone()[0] == len(EMAILS)
        new_id = conn.execute("INSERT INTO users (email) VALUES ('new@example.com') RETURNING id").fetchone()[0]
        assert new_id == len(EMAILS) + 1      # the sequence went on from the backup's value
        conn.execute("UPDATE calendar_connections SET access_token = NULL WHERE user_id = %s", (1,))
        conn.execute("DELETE FROM appointments WHERE user_id = 1")
        assert conn.execute("SELECT lo_get(oid) FROM pg_largeobject_metadata").fetchone()[0] == b"invoice #1"
        conn.execute("SELECT lo_put(oid, 0, 'I') FROM pg_largeobject_metadata")
        conn.execute("CREATE TABLE app_can_still_create (x int)")
        conn.rollback()
    with roles.connect(roles.reader, live) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == len(EMAILS)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM appointments")
    with pytest.raises(psycopg.OperationalError) as refused:
        roles.connect(roles.stranger, live).close()
    assert "permission denied for database" in str(refused.value)


@pytest.mark.parametrize("via", ["superuser", "owner"])
def test_the_restored_database_is_the_live_ones_twin(
        cluster, api_client, postgres, database, twin_setup, job_runner, restricted, operator, via):
    roles, ns, live = twin_setup, restricted, database
    backup = job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump"
    make_dump(postgres, live, backup)
    at_backup = fingerprint(postgres, live)
    with roles.connect(roles.app, live) as conn:          # after the backup point
        conn.execute("INSERT INTO users (email) VALUES ('late@example.com')")
        conn.execute("SELECT lo_from_bytea(0, 'invoice #2'::bytea)")
        conn.commit()
    assert fingerprint(postgres, live) != at_backup
    if via == "owner":     # the owner may create, and rename, databases: all a rollback needs
        with postgres.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(roles.app)))
    url = postgres.dsn(live) if via == "superuser" else roles.dsn(roles.app, live)
    db_secret(api_client, ns, url)

    kubectl_apply(cluster, ns, db_rollback("twin"))
    rb = wait_phase(api_client, ns, "twin", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    assert rb["status"]["phase"] == "Succeeded", (rb["status"], operator.output()[-3000:])
    assert condition(rb, "Verified")["status"] == "True"

    assert fingerprint(postgres, live) == at_backup
    _as_app_after_the_swap(roles, live)
    pre = rb["status"]["database"]["preRollbackDatabase"]
    assert pre == f"{live[:44]}_pre_{uid8(rb)}"
    with postgres.connect() as conn:
        assert conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                            "WHERE datname = %s", (pre,)).fetchone()[0].startswith("rewind:")
    for secret in roles.passwords.values():
        assert secret not in str(get_rollback(api_client, ns, "twin"))
    assert postgres.password not in str(get_rollback(api_client, ns, "twin"))


def test_a_plain_sql_backup_restores_with_owners(
        cluster, api_client, postgres, database, twin_setup, job_runner, restricted, operator):
    """`pg_dump > backup.sql`, the seed's own procedure: restored in one transaction, as it was."""
    import subprocess
    from dbhelpers import pg_bin

    roles, ns, live = twin_setup, restricted, database
    backup = job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.sql"
    backup.parent.mkdir(parents=True, exist_ok=True)
    with open(backup, "wb") as out:
        subprocess.run([pg_bin("pg_dump"), f"--dbname={postgres.dsn(live)}"], stdout=out, check=True)
    at_backup = fingerprint(postgres, live)
    with roles.connect(roles.app, live) as conn:
        conn.execute("DELETE FROM appointments")
        conn.commit()
    db_secret(api_client, ns, postgres.dsn(live))
    kubectl_apply(cluster, ns, db_rollback("plain", "nightly/backup.sql"))
    rb = wait_phase(api_client, ns, "plain", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    assert rb["status"]["phase"] == "Succeeded", (rb["status"], operator.output()[-3000:])
    assert fingerprint(postgres, live) == at_backup
    _as_app_after_the_swap(roles, live)


def test_a_role_that_cannot_restore_the_owners_is_refused_at_preflight(
        cluster, api_client, postgres, database, twin_setup, job_runner, restricted, operator):
    """The reader may connect but owns nothing: restoring as it would lock the app out."""
    roles, ns, live = twin_setup, restricted, database
    make_dump(postgres, live, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    with postgres.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(roles.reader)))
    before = fingerprint(postgres, live)
    db_secret(api_client, ns, roles.dsn(roles.reader, live))
    kubectl_apply(cluster, ns, db_rollback("cannot"))
    rb = wait_phase(api_client, ns, "cannot", {"Succeeded", "Failed", "Interrupted"}, timeout=120)
    assert rb["status"]["phase"] == "Failed", str(rb["status"])
    ready = condition(rb, "Ready")
    assert ready["reason"] in ("Forbidden", "PreflightFailed"), ready
    message = ready["message"]
    assert f"role {roles.reader!r}" in message and repr(roles.app) in message, message
    assert fingerprint(postgres, live) == before


def _recreate(postgres, name: str, how: str) -> None:
    with postgres.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 " + how).format(sql.Identifier(name)))
    with postgres.connect(name) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL)")
        conn.execute("INSERT INTO users VALUES (1, 'a@example.com')")
        conn.commit()


@pytest.mark.parametrize("accept", [False, True])
def test_a_backup_of_a_database_created_otherwise_is_refused_unless_accepted(
        cluster, api_client, postgres, database, job_runner, restricted, operator, accept):
    ns, live = restricted, database
    _recreate(postgres, live, "LOCALE 'C.UTF-8'")                 # the backup's source: libc
    make_dump(postgres, live, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    _recreate(postgres, live, "LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LOCALE 'C.UTF-8'")
    db_secret(api_client, ns, postgres.dsn(live))
    extra = {"acceptSourceDifferencesReason": "collation changed on purpose"} if accept else {}
    kubectl_apply(cluster, ns, db_rollback("otherwise", verify={"tables": ["users"]}, **extra))
    rb = wait_phase(api_client, ns, "otherwise", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    if accept:
        assert rb["status"]["phase"] == "Succeeded", str(rb["status"])
        assert fingerprint(postgres, live)["database"][1:5] == ("i", "C.UTF-8", "C.UTF-8", "de-DE")
        return
    ready = condition(rb, "Ready")
    assert rb["status"]["phase"] == "Failed" and ready["reason"] == "SourceDiffers", ready
    assert "provider=libc" in ready["message"] and "provider=icu" in ready["message"], ready["message"]


def test_restore_errors_reach_status_as_sqlstate_never_row_values(
        cluster, api_client, postgres, database, job_runner, restricted, operator):
    ns, live = restricted, database
    _recreate(postgres, live, "LOCALE 'C.UTF-8'")
    backup = job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.sql"
    import subprocess
    from dbhelpers import pg_bin
    script = subprocess.run([pg_bin("pg_dump"), f"--dbname={postgres.dsn(live)}"], check=True,
                            capture_output=True, text=True).stdout
    # A row value the server would quote in its message: `invalid input syntax for type integer`.
    backup.parent.mkdir(parents=True, exist_ok=True)
    backup.write_text(script.replace("1\ta@example.com", "row-canary-4711\ta@example.com"))
    db_secret(api_client, ns, postgres.dsn(live))
    kubectl_apply(cluster, ns, db_rollback("sqlstate", "nightly/backup.sql", verify={"tables": ["users"]}))
    rb = wait_phase(api_client, ns, "sqlstate", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    ready = condition(rb, "Ready")
    assert rb["status"]["phase"] == "Failed" and ready["reason"] == "RestoreFailed", ready
    assert "SQLSTATE 22P02" in ready["message"], ready["message"]
    assert "row-canary-4711" not in str(rb) and "row-canary-4711" not in operator.output()
