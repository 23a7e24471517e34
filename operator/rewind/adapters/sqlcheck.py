"""SQL checks (psycopg 3): one measurement of a read-only query against the live database.

What a check's query can do, and what it costs the operator:

- It runs in a READ ONLY transaction that is always rolled back, with `SET LOCAL`
  statement_timeout and idle_in_transaction_session_timeout of the check's timeoutSeconds.
  COMMIT, SET TRANSACTION READ WRITE, `set_config('transaction_read_only', ...)` and writes
  (also inside functions, sequences included) are refused by the server.
- It runs as a subquery of our own SELECT over the extended protocol, so it is one SELECT,
  VALUES, TABLE or WITH ... SELECT: a second statement (also one that closes our parentheses)
  and a data-modifying WITH are refused. Parameters are bound, never spliced.
- The comparison happens in the database: our SELECT reads at most rowLimit + 1 rows of the
  query and answers only a row count and booleans (does the single row's first column equal
  `equals`, is any first column true or non-zero, what kinds of value the first column holds).
  No value of a row ever reaches the operator, so none can reach status, Events or logs; nor
  does a server message (it can quote data, e.g. a name built from a row): a failed query is
  shown by its SQLSTATE only.
- The database is reached only where the policy's egress allows (TCP hosts, at the address that
  was checked; TLS verifies the URL's host name).

Limits: READ ONLY covers this database only; a function with effects elsewhere (dblink,
pg_terminate_backend) still has them, so give checks a read-only role. `equals` compares with the
value as row_to_json renders it: text as is, numbers and booleans as PostgreSQL prints them,
dates and times in ISO 8601, NULL as the text NULL; cast in the query (`::text`) for
PostgreSQL's text form.
"""

from __future__ import annotations

import time
from typing import Sequence

import psycopg

from rewind import egress
from rewind.adapters.db import DatabaseError, Target, first_line, parse_url
from rewind.adapters.measurement import Measurement
from rewind.api.errors import ReasonedError
from rewind.api.policy import EgressRule
from rewind.api.v1alpha1 import SqlCheck

# The check's query, judged in the database. `v` is each row's first column as JSON (NULL when
# the row has no column), `t` its JSON type. Answers: rows (at most limit), rows without a
# column, rows whose first column is text / an array, JSON or composite value, whether any first
# column is true or a non-zero number, whether every first column equals rewind.equals as text.
_WRAPPER = """SELECT count(*)::int,
  count(*) FILTER (WHERE v IS NULL)::int,
  count(*) FILTER (WHERE t = 'string')::int,
  count(*) FILTER (WHERE t IN ('object', 'array'))::int,
  coalesce(bool_or(CASE t WHEN 'boolean' THEN v::text = 'true'
                          WHEN 'number' THEN (v::text)::numeric <> 0 ELSE false END), false),
  coalesce(bool_and(coalesce(v #>> '{{}}', 'NULL') = current_setting('rewind.equals', true)), false)
FROM (SELECT v, json_typeof(v) AS t FROM (
  SELECT (SELECT e.value FROM json_each(j) WITH ORDINALITY AS e(key, value, n) ORDER BY n LIMIT 1) AS v
  FROM (SELECT row_to_json(q.*) AS j FROM (
{query}
) AS q LIMIT {limit}) AS r) AS f) AS s"""


def measure(url: str, check: SqlCheck, rules: Sequence[EgressRule]) -> Measurement:
    """`rules`: the policy's egress (the database host must be allowed)."""
    try:
        target = parse_url(url)
        conn = _connect(target, check.timeout_seconds, rules)
    except ReasonedError as e:      # DatabaseError, EgressDenied, HostNotFound
        return Measurement("Failed", e.message)
    query = _WRAPPER.format(query=check.query.strip().rstrip(";"), limit=check.row_limit + 1)
    try:
        conn.read_only = True
        with conn.transaction(force_rollback=True):
            ms = check.timeout_seconds * 1000
            conn.execute(f"SET LOCAL statement_timeout = {ms}")
            conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {ms}")
            if check.equals is not None:
                conn.execute("SELECT set_config('rewind.equals', %s, true)", [check.equals])
            t0 = time.monotonic()
            # Binary results make psycopg use the extended protocol even without parameters.
            answer = conn.execute(query, check.params or None, binary=True).fetchone()
            took = int((time.monotonic() - t0) * 1000)
    except psycopg.Error as e:
        if conn.broken and not isinstance(e, psycopg.errors.QueryCanceled):
            return Measurement("Failed", f"{target.redacted} closed the connection during the query")
        return Measurement("Inconclusive", _query_error(e, check))
    finally:
        conn.close()
    return judge(Answer(*answer), took, check)


def _connect(target: Target, timeout: int, rules: Sequence[EgressRule]) -> psycopg.Connection:
    """A connection to a checked address of each TCP host (hostaddr; host stays for TLS)."""
    hosts, ports = target.host.split(","), target.port.split(",")
    if any(h.startswith("/") or h.startswith("@") or not h for h in hosts):
        raise egress.EgressDenied(f"the egress policy allows no Unix socket ({target.redacted})")
    pinned = [str(egress.resolve(h, int(ports[min(i, len(ports) - 1)]), rules)[0])
              for i, h in enumerate(hosts)]
    try:
        return psycopg.connect(target.conninfo(), connect_timeout=min(timeout, 10), hostaddr=",".join(pinned),
                               application_name="rewind-check", autocommit=True)
    except psycopg.OperationalError as e:
        text = str(e)
        if "authentication failed" in text:
            why = f"it refused the credentials of user {target.user!r}"
        elif "does not exist" in text and "database" in text:
            why = "the database does not exist"
        elif "Connection refused" in text:
            why = "connection refused"
        elif "timeout" in text or "timed out" in text:
            why = "timed out"
        elif "connection to server" not in text:
            why = first_line(text)          # libpq refused the URL itself, before connecting
        else:
            why = "connection failed"       # libpq's text can quote what answered
        raise DatabaseError("DatabaseUnreachable",
                            f"the database is not reachable ({target.redacted}): {why}") from None


def _query_error(e: psycopg.Error, check: SqlCheck) -> str:
    if isinstance(e, psycopg.errors.QueryCanceled):
        return f"the query did not answer within {check.timeout_seconds}s"
    if e.sqlstate is None:  # refused by psycopg before sending, e.g. placeholders vs params
        return f"the query could not be sent ({type(e).__name__}): check its %(name)s placeholders and params"
    hint = next((h for prefix, h in _HINTS.items() if e.sqlstate.startswith(prefix)), "")
    return f"the query failed with {type(e).__name__} ({e.sqlstate})" + (f": {hint}" if hint else "")


# What a failed query most likely means, by SQLSTATE: our words, never the server's (its message
# can quote data, e.g. a relation name built from a row by dynamic SQL).
_HINTS = {
    "25006": "it tries to write; checks run read-only",
    "42601": "a syntax error, or more than one statement (a check is one SELECT, VALUES, TABLE or WITH ... SELECT)",
    "0A000": "a feature not supported here (e.g. a data-modifying WITH)",
    "42501": "the check's role may not read what the query reads",
    "42P01": "a table or view the query names does not exist",
    "42703": "a column the query names does not exist",
    "42883": "a function or operator the query uses does not exist for these types",
}


class Answer(tuple):
    """What the database answered about the rows: counts and booleans, never a value."""

    def __new__(cls, rows, no_column, text, compound, any_true, all_equal):
        return super().__new__(cls, (rows, no_column, text, compound, any_true, all_equal))

    rows = property(lambda self: self[0])
    no_column = property(lambda self: self[1])
    text = property(lambda self: self[2])
    compound = property(lambda self: self[3])
    any_true = property(lambda self: self[4])
    all_equal = property(lambda self: self[5])


def judge(a: Answer, took: int, check: SqlCheck) -> Measurement:
    n = a.rows
    if n > check.row_limit:
        return Measurement("Inconclusive", f"the query returned more than {check.row_limit} rows")
    if a.no_column:
        return Measurement("Inconclusive", "the query returns no columns")
    passed = f"returned {n} row(s) in {took} ms"
    if check.equals is not None:
        if n != 1:
            return Measurement("Failed", f"the query returned {n} rows, expected one")
        if a.compound:
            return Measurement("Inconclusive", "the first column is an array, JSON or composite value; "
                                               "cast it to text to compare it with equals")
        if a.all_equal:
            return Measurement("Passed", f"{passed}; the value matches")
        return Measurement("Failed", "the first column differs from the expected value")
    if check.min_rows is not None or check.max_rows is not None:
        if check.min_rows is not None and n < check.min_rows:
            return Measurement("Failed", f"the query returned {n} row(s), fewer than minRows {check.min_rows}")
        if check.max_rows is not None and n > check.max_rows:
            return Measurement("Failed", f"the query returned {n} row(s), more than maxRows {check.max_rows}")
        return Measurement("Passed", f"{passed}; the row count is within bounds")
    if n == 0:
        return Measurement("Failed", "the query returned no rows")
    if a.text or a.compound:
        kind = "text" if a.text else "an array, JSON or composite value"
        return Measurement("Inconclusive", f"the first column is {kind}, not a boolean or number; "
                                           "use equals")
    if a.any_true:
        return Measurement("Passed", f"{passed}; the first column is true")
    return Measurement("Failed", "the first column is false, zero or NULL" if n == 1
                       else f"none of the {n} rows has a true or non-zero first column")
