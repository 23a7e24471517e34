"""The PostgreSQL adapter against the real server: URL parsing, errors a person can act on, the
ledger fence, and the atomic swap (never a moment without the live name)."""

from __future__ import annotations

import psycopg
import pytest

from rewind.adapters import db

pytestmark = pytest.mark.postgres


def _seed(postgres, name, rows):
    postgres.create_database(name)
    with postgres.connect(name) as conn:
        conn.execute("CREATE TABLE appointments (id int PRIMARY KEY, who text)")
        conn.execute("INSERT INTO appointments SELECT g, 'client ' || g FROM generate_series(1, %s) g", (rows,))
        conn.commit()


def test_parse_url_and_redaction(postgres, database):
    t = db.parse_url(postgres.dsn(database))
    assert t.dbname == database and t.port == str(postgres.port)
    assert postgres.password not in t.redacted
    for bad in ("mysql://x@y/z", "postgresql://u:p@h:5432", "not a url"):
        with pytest.raises(db.DatabaseError) as err:
            db.parse_url(bad)
        assert err.value.reason == "InvalidConnection"


def test_connection_errors_are_specific_and_secret_free(postgres, database):
    wrong = db.parse_url(postgres.dsn(database, password="wrong-password-canary"))
    with pytest.raises(db.DatabaseError) as err:
        with db.connect(wrong):
            pass
    assert err.value.reason == "AuthenticationFailed"
    assert "wrong-password-canary" not in err.value.message
    missing = db.parse_url(postgres.dsn("no_such_db"))
    with pytest.raises(db.DatabaseError) as err:
        with db.connect(missing):
            pass
    assert err.value.reason == "DatabaseNotFound"
    closed = db.parse_url(f"postgresql://u:p@127.0.0.1:1/{database}")
    with pytest.raises(db.DatabaseError) as err:
        with db.connect(closed):
            pass
    assert err.value.reason == "DatabaseUnreachable"


def test_ledger_is_a_fence(postgres, database):
    t = db.parse_url(postgres.dsn(database))
    with db.connect(t) as conn:
        db.ensure_ledger(conn)
        db.ensure_ledger(conn)  # idempotent
        assert db.ledger_advance(conn, "uid-1", "restore", None, "claimed")
        assert not db.ledger_advance(conn, "uid-1", "restore", None, "claimed")
        assert db.ledger_advance(conn, "uid-1", "restore", "claimed", "job-created")
        assert not db.ledger_advance(conn, "uid-1", "restore", "claimed", "job-created")
        assert db.ledger_state(conn, "uid-1", "restore") == "job-created"
        assert db.ledger_state(conn, "uid-2", "restore") is None


def test_swap_is_atomic_and_keeps_the_old_database(postgres, database):
    live, staging, pre = f"{database}_live", f"{database}_stg", f"{database}_pre"
    _seed(postgres, live, 5)
    _seed(postgres, staging, 3)
    t = db.parse_url(postgres.dsn("postgres"))
    try:
        with db.connect(t) as conn:
            db.ensure_ledger(conn)
            db.ledger_advance(conn, "uid-swap", "swap", None, "swapping")
            db.swap(conn, live=live, staging=staging, pre=pre, uid="uid-swap", ledger_step="swap")
            assert db.ledger_state(conn, "uid-swap", "swap") == "swapped"
            # The new live database keeps live's own comment (none here), not a Rewind marker.
            assert db.database_comment(conn, live) == (True, None)
            assert db.database_comment(conn, staging) == (False, None)
        with postgres.connect(live) as c:
            assert c.execute("SELECT count(*) FROM appointments").fetchone()[0] == 3
        with postgres.connect(pre) as c:
            assert c.execute("SELECT count(*) FROM appointments").fetchone()[0] == 5
    finally:
        for name in (live, staging, pre):
            postgres.drop_database(name)


def test_swap_refused_while_sessions_hold_the_database_renames_nothing(postgres, database):
    live, staging, pre = f"{database}_live", f"{database}_stg", f"{database}_pre"
    _seed(postgres, live, 5)
    _seed(postgres, staging, 3)
    t = db.parse_url(postgres.dsn("postgres"))
    holder = postgres.connect(live)
    try:
        with db.connect(t) as conn:
            db.ensure_ledger(conn)
            db.ledger_advance(conn, "uid-busy", "swap", None, "swapping")
            assert db.sessions(conn, live) == 1
            assert db.end_sessions(conn, live, terminate=False, wait_seconds=0.5) == 1
            with pytest.raises(db.DatabaseError) as err:
                db.swap(conn, live=live, staging=staging, pre=pre, uid="uid-busy", ledger_step="swap")
            assert err.value.reason == "SwapBlocked"
            assert db.database_comment(conn, live)[0] and db.database_comment(conn, staging)[0]
            assert not db.database_comment(conn, pre)[0]
            assert db.ledger_state(conn, "uid-busy", "swap") == "swapping"
            # With termination allowed, the session ends and the swap goes through.
            db.set_allow_connections(conn, live, False)
            assert db.end_sessions(conn, live, terminate=True) == 0
            db.swap(conn, live=live, staging=staging, pre=pre, uid="uid-busy", ledger_step="swap")
            db.set_allow_connections(conn, live, True)
            db.set_allow_connections(conn, pre, True)
        with pytest.raises(psycopg.OperationalError):
            holder.execute("SELECT 1")
    finally:
        holder.close()
        for name in (live, staging, pre):
            postgres.drop_database(name)


def test_table_counts_quote_identifiers(postgres, database):
    _seed(postgres, f"{database}_c", 4)
    t = db.parse_url(postgres.dsn(f"{database}_c"))
    try:
        with db.connect(t) as conn:
            counts = db.table_counts(conn, ["appointments", "public.appointments", "missing",
                                            'appointments"; DROP TABLE appointments; --'])
            assert counts["appointments"] == 4 and counts["public.appointments"] == 4
            assert counts["missing"] is None
            assert counts['appointments"; DROP TABLE appointments; --'] is None
            assert conn.execute("SELECT count(*) FROM appointments").fetchone()[0] == 4
    finally:
        postgres.drop_database(f"{database}_c")


@pytest.mark.parametrize("url,fragment", [
    ("postgresql://app:p@ss@db.internal:5432/booking", "more than one '@'"),
    ("postgresql://app:s3/cret@db.internal:5432/booking", "port is not a number"),
    ("postgresql://app:pw@db.internal:5x432/booking", "port is not a number"),
    ("postgresql://app:pw@db.internal:5432/booking?dbname=other", "query sets dbname"),
    ("postgresql://app:pw@db.internal:5432/booking?host=evil&user=root", "query sets host, user"),
])
def test_ambiguous_urls_are_refused_without_echoing_them(url, fragment):
    with pytest.raises(db.DatabaseError) as err:
        db.parse_url(url)
    assert err.value.reason == "InvalidConnection"
    assert fragment in err.value.message, err.value.message
    for piece in ("ss@db", "s3", "cret", "pw@", "5x432", "evil"):
        assert piece not in err.value.message


def test_sessions_this_role_may_not_end_simply_remain(postgres, database):
    """A non-superuser cannot terminate a superuser's session: end_sessions reports it as left."""
    with postgres.connect(autocommit=True) as admin:
        admin.execute("CREATE ROLE rewind_app LOGIN PASSWORD 'app-pw' CREATEDB")
    holder = postgres.connect(database)   # a superuser session
    try:
        t = db.parse_url(f"postgresql://rewind_app:app-pw@127.0.0.1:{postgres.port}/postgres")
        with db.connect(t) as conn:
            assert db.end_sessions(conn, database, terminate=True, wait_seconds=0.5) == 1
        assert holder.execute("SELECT 1").fetchone() == (1,)
    finally:
        holder.close()
        with postgres.connect(autocommit=True) as admin:
            admin.execute("DROP ROLE rewind_app")


def test_ledger_needs_create_on_the_maintenance_database(postgres, database):
    # A fresh database: PUBLIC may connect but not create schemas in it.
    with postgres.connect(autocommit=True) as admin:
        admin.execute("CREATE ROLE rewind_weak LOGIN PASSWORD 'weak-pw'")
    try:
        t = db.parse_url(f"postgresql://rewind_weak:weak-pw@127.0.0.1:{postgres.port}/{database}")
        with db.connect(t) as conn:
            with pytest.raises(db.DatabaseError) as checked:
                db.check_ledger(conn)          # preflight's look: refused the same way
            with pytest.raises(db.DatabaseError) as err:
                db.ensure_ledger(conn)
        assert err.value.reason == "Forbidden" and "grant it CREATE there" in err.value.message
        assert checked.value.reason == "Forbidden" and "grant it CREATE there" in checked.value.message
    finally:
        with postgres.connect(autocommit=True) as admin:
            admin.execute("DROP ROLE rewind_weak")


def test_preflights_ledger_check_reads_only(postgres, database):
    """`kubectl rewind plan` and preflight run check_ledger: it must create nothing."""
    t = db.parse_url(postgres.dsn(database))
    with db.connect(t) as conn:
        db.check_ledger(conn)                  # the superuser may create it: no error...
        assert conn.execute("SELECT to_regnamespace('rewind')").fetchone()[0] is None   # ...and nothing made
        db.ensure_ledger(conn)
        db.check_ledger(conn)                  # once made, writable: still no error
