"""One SQL measurement against the real PostgreSQL: what passes, what fails, what is inconclusive;
that no query can change the data (the rows a user would look at are unchanged after every
hostile query), that parameters are data, and that no row's data ever leaves the database: the
comparison is made there, and only counts and booleans come back."""

from __future__ import annotations

import resource

import pytest

from loopback import LOOPBACK, Relay
from rewind.adapters import sqlcheck
from rewind.api.v1alpha1 import SqlCheck

pytestmark = pytest.mark.postgres

INJECTION = "x'; drop table users; --"


@pytest.fixture
def url(postgres, database):
    with postgres.connect(database) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, active bool NOT NULL)")
        conn.execute("INSERT INTO users SELECT g, 'user' || g || '@example.com', g % 2 = 0 "
                     "FROM generate_series(1, 10) g")
        conn.execute("CREATE SEQUENCE ids")
        conn.execute("CREATE FUNCTION wipe() RETURNS int LANGUAGE plpgsql AS "
                     "'BEGIN DELETE FROM users; RETURN 1; END'")
        conn.commit()
    return postgres.dsn(database)


def data(postgres, database):
    """What a user would check: the users rows and the sequence; None once the table is gone."""
    with postgres.connect(database) as conn:
        if conn.execute("SELECT to_regclass('users')").fetchone()[0] is None:
            return None
        return conn.execute("SELECT count(*), md5(string_agg(u::text, ',' ORDER BY id)), "
                            "(SELECT last_value FROM ids), (SELECT is_called FROM ids) FROM users u").fetchone()


def measure(postgres, url, query, **kw):
    m = sqlcheck.measure(url, SqlCheck.model_validate({"name": "c", "query": query, **kw}), LOOPBACK)
    assert postgres.password not in m.detail and "wrong-canary" not in m.detail
    assert "@example.com" not in m.detail           # no user's e-mail, whatever the query selects
    for value in (kw.get("params") or {}).values():
        assert value not in m.detail
    return m


@pytest.mark.parametrize("query,kw,fragment", [
    ("SELECT count(*) > 0 FROM users", {}, "returned 1 row(s)"),
    ("SELECT count(*) FROM users WHERE active", {}, "the first column is true"),
    ("SELECT id FROM users WHERE active", {"minRows": 5, "maxRows": 5}, "returned 5 row(s)"),
    ("SELECT id FROM users", {"minRows": 1}, "within bounds"),
    ("SELECT email FROM users WHERE id = %(id)s::int", {"params": {"id": "0003"}, "equals": "user3@example.com"},
     "the value matches"),
    ("SELECT count(*) FROM users;", {"equals": "10"}, "the value matches"),
    ("SELECT active FROM users WHERE id = 2", {"equals": "true"}, "the value matches"),
    ("SELECT NULL::int", {"equals": "NULL"}, "the value matches"),
    ("SELECT 1.50::numeric, 'second column ignored'", {"equals": "1.50"}, "the value matches"),
    ("SELECT email FROM users WHERE email LIKE 'user1%' ORDER BY id", {"minRows": 2}, "returned 2 row(s)"),
    ("WITH a AS (SELECT * FROM users WHERE active) SELECT count(*) = 5 FROM a", {}, "true"),
    ("VALUES (0), (2)", {}, "true"),
    ("SELECT current_setting('transaction_read_only')", {"equals": "on"}, "the value matches"),
])
def test_passes(postgres, url, query, kw, fragment):
    m = measure(postgres, url, query, **kw)
    assert m.outcome == "Passed", m.detail
    assert fragment in m.detail


@pytest.mark.parametrize("query,kw,detail", [
    ("SELECT count(*) FROM users", {"equals": "11"}, "the first column differs from the expected value"),
    ("SELECT email FROM users WHERE id = 1", {"equals": "admin@example.com"},
     "the first column differs from the expected value"),
    ("SELECT id FROM users", {"equals": "1"}, "the query returned 10 rows, expected one"),
    ("SELECT id FROM users WHERE active", {"minRows": 6}, "the query returned 5 row(s), fewer than minRows 6"),
    ("SELECT id FROM users", {"maxRows": 3}, "the query returned 10 row(s), more than maxRows 3"),
    ("SELECT count(*) > 10 FROM users", {}, "the first column is false, zero or NULL"),
    ("SELECT 0 FROM users", {}, "none of the 10 rows has a true or non-zero first column"),
    ("SELECT 1 FROM users WHERE false", {}, "the query returned no rows"),
])
def test_fails(postgres, url, query, kw, detail):
    m = measure(postgres, url, query, **kw)
    assert (m.outcome, m.detail) == ("Failed", detail)


def test_unreachable_database_fails_without_secrets(postgres, database, url):
    cases = [(f"postgresql://postgres:{postgres.password}@127.0.0.1:1/{database}", "127.0.0.1:1"),
             (postgres.dsn(database, password="wrong-canary"), "refused the credentials of user 'postgres'"),
             (postgres.dsn("no_such_db"), "the database does not exist"),
             ("mysql://u:wrong-canary@h/db", "postgresql:// URL"),
             # libpq quotes an option it refuses; the value came from the Secret's URL.
             (postgres.dsn(database) + "?sslmode=wrong-canary", "invalid sslmode value")]
    for bad, fragment in cases:
        m = measure(postgres, bad, "SELECT true")
        assert m.outcome == "Failed" and fragment in m.detail, m.detail
        assert bad.startswith("mysql") or "the database is not reachable (postgresql://postgres@" in m.detail


HOSTILE = [
    ("DELETE FROM users", "SyntaxError (42601)"),
    ("INSERT INTO users VALUES (99, 'x', true)", "SyntaxError (42601)"),
    ("WITH d AS (DELETE FROM users RETURNING 1) SELECT count(*) FROM d", "FeatureNotSupported (0A000)"),
    ("SELECT wipe()", "ReadOnlySqlTransaction (25006): it tries to write; checks run read-only"),
    ("SELECT nextval('ids')", "ReadOnlySqlTransaction (25006)"),
    ("SELECT 1; DELETE FROM users", "SyntaxError (42601)"),
    # Closing the wrapper's parentheses makes several statements: the extended protocol refuses them.
    ("SELECT 1) q) r) t; DELETE FROM users; SELECT * FROM (SELECT (SELECT (SELECT 1",
     "SyntaxError (42601): a syntax error, or more than one statement"),
    ("SELECT 1) q) r) t; COMMIT; DELETE FROM users; SELECT * FROM (SELECT (SELECT (SELECT 1",
     "SyntaxError (42601): a syntax error, or more than one statement"),
    ("COMMIT", "SyntaxError (42601)"),
    ("SET TRANSACTION READ WRITE", "SyntaxError (42601)"),
    ("SELECT set_config('transaction_read_only', 'off', true), wipe()", "ActiveSqlTransaction (25001)"),
    ("SELECT * FROM no_such_table", "UndefinedTable (42P01)"),
    ("SELEC 1", "SyntaxError (42601)"),
    ("SELECT pg_sleep(5)", "the query did not answer within 1s"),
    ("SELECT set_config('statement_timeout', '0', true), pg_sleep(5)", "the query did not answer within 1s"),
    ("SELECT g FROM generate_series(1, 1000000) g", "the query returned more than 1000 rows"),
    ("SELECT repeat('x', 2000) FROM generate_series(1, 900)", "the first column is text, not a boolean"),
    ("SELECT email FROM users", "the first column is text, not a boolean or number; use equals"),
    ("SELECT ARRAY[1]", "the first column is an array, JSON or composite value"),
    ("SELECT", "the query returns no columns"),
    ("SELECT 1 / (count(*) - 10) FROM users", "DivisionByZero (22012)"),
]


@pytest.mark.parametrize("query,fragment", HOSTILE, ids=[q[:40] for q, _ in HOSTILE])
def test_hostile_queries_are_inconclusive_and_change_nothing(postgres, database, url, query, fragment):
    before = data(postgres, database)
    m = measure(postgres, url, query, timeoutSeconds=1)
    assert m.outcome == "Inconclusive", m.detail
    assert fragment in m.detail
    # Our words only: not the query, nor the server's message ("cannot execute DELETE in a ...").
    assert "DELETE" not in m.detail and "users" not in m.detail and "multiple commands" not in m.detail
    assert before is not None and data(postgres, database) == before


def test_parameters_are_data(postgres, database, url):
    before = data(postgres, database)
    m = measure(postgres, url, "SELECT count(*) FROM users WHERE email = %(email)s",
                params={"email": INJECTION}, equals="0")
    assert m.outcome == "Passed", m.detail
    # The server quotes the value in its message; the detail must not.
    m = measure(postgres, url, "SELECT %(n)s::int", params={"n": INJECTION})
    assert m.outcome == "Inconclusive"
    assert m.detail == "the query failed with InvalidTextRepresentation (22P02)"
    m = measure(postgres, url, "SELECT %(missing)s", params={"n": INJECTION})
    assert m.outcome == "Inconclusive" and "could not be sent" in m.detail
    assert before is not None and data(postgres, database) == before


@pytest.mark.parametrize("query,kw,outcome,detail", [
    ("SELECT repeat('x', 200000000)", {}, "Inconclusive",
     "the first column is text, not a boolean or number; use equals"),
    ("SELECT repeat('x', 200000000)", {"equals": "x"}, "Failed",
     "the first column differs from the expected value"),
    ("SELECT repeat('x', 2000) FROM generate_series(1, 900)", {}, "Inconclusive",
     "the first column is text, not a boolean or number; use equals"),
    ("SELECT repeat('x', 2000) FROM generate_series(1, 900)", {"minRows": 900}, "Passed", "within bounds"),
], ids=["200 MB value", "200 MB value, equals", "900 rows of 2 KB", "900 rows of 2 KB, minRows"])
def test_no_row_data_comes_back(postgres, database, url, query, kw, outcome, detail):
    """Whatever the query selects, what crosses the network from the database is the few counts
    and booleans of the comparison: the operator's memory does not grow with the rows."""
    before = data(postgres, database)
    with Relay((postgres.host, postgres.port)) as relay:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        m = measure(postgres, postgres.dsn(database).replace(f":{postgres.port}/", f":{relay.port}/"),
                    query, timeoutSeconds=60, **kw)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
        assert relay.connections() == 1
    assert m.outcome == outcome and detail in m.detail, m.detail
    # Authentication, parameters, a description of six columns and one row: a few KiB at most.
    assert relay.received < 16 * 1024, f"{relay.received} bytes came back from the database"
    assert "x" * 16 not in m.detail
    assert grown_mib < 50, f"the operator's memory grew by {grown_mib:.0f} MiB"
    assert data(postgres, database) == before
