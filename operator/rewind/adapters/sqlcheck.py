"""SQL checks (psycopg 3): one measurement of a read-only query against the live database.

What a check's query can do, and what it costs the operator:

- It runs in a READ ONLY transaction that is always rolled back, with `SET LOCAL`
  statement_timeout and idle_in_transaction_session_timeout of the check's timeoutSeconds.
  COMMIT, SET TRANSACTION READ WRITE, `set_config('transaction_read_only', ...)` and writes
  (also inside functions, sequences included) are refused by the server.
- It runs as a subquery of our own SELECT over the extended protocol, so it is one SELECT,
  VALUES, TABLE or WITH ... SELECT: a second statement (also one that closes our parentheses)
  and a data-modifying WITH are refused. Parameters are bound, never spliced.
- Each row comes back as its `row_to_json` text. The server stops after rowLimit + 1 rows
  (LIMIT) and keeps a running total of their size: past MAX_BYTES it sends NULL instead of a
  row, so a huge value or a million rows cost the operator at most about MAX_BYTES. The server
  still computes them, within the statement timeout.
- A detail never shows the URL's password, a parameter value, the query text or a text value
  found; server messages are shown only for errors that do not quote data.

Limits: READ ONLY covers this database only; a function with effects elsewhere (dblink,
pg_terminate_backend) still has them, so give checks a read-only role. `equals` compares with the
value as row_to_json renders it: text as is, numbers and booleans as PostgreSQL prints them,
dates and times in ISO 8601; cast in the query (`::text`) for PostgreSQL's text form.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import psycopg

from rewind.adapters.db import DatabaseError, Target, first_line, parse_url
from rewind.adapters.measurement import Measurement
from rewind.api.v1alpha1 import SqlCheck

MAX_BYTES = 1024 * 1024
# Error classes whose messages name statements and objects, not data values.
_SHOWN_CLASSES = ("0A", "25", "42", "54")
_WRAPPER = ("SELECT CASE WHEN size <= {max} THEN j END, size FROM ("
            "SELECT j, sum(octet_length(j)) OVER (ROWS UNBOUNDED PRECEDING) AS size FROM ("
            "SELECT row_to_json(q.*)::text AS j FROM (\n{query}\n) AS q) AS r) AS t LIMIT {limit}")


class _Number(str):
    """A JSON number, kept as PostgreSQL printed it."""


def measure(url: str, check: SqlCheck) -> Measurement:
    try:
        target = parse_url(url)
        conn = _connect(target, check.timeout_seconds)
    except DatabaseError as e:
        return Measurement("Failed", e.message)
    query = _WRAPPER.format(max=MAX_BYTES, query=check.query.strip().rstrip(";"),
                            limit=check.row_limit + 1)
    try:
        conn.read_only = True
        with conn.transaction(force_rollback=True):
            ms = check.timeout_seconds * 1000
            conn.execute(f"SET LOCAL statement_timeout = {ms}")
            conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {ms}")
            t0 = time.monotonic()
            # Binary results make psycopg use the extended protocol even without parameters.
            rows = conn.execute(query, check.params or None, binary=True).fetchall()
            took = int((time.monotonic() - t0) * 1000)
    except psycopg.Error as e:
        if conn.broken and not isinstance(e, psycopg.errors.QueryCanceled):
            return Measurement("Failed", f"{target.redacted} closed the connection during the query")
        return Measurement("Inconclusive", _query_error(e, check))
    finally:
        conn.close()
    return _judge(rows, took, check)


def _connect(target: Target, timeout: int) -> psycopg.Connection:
    try:
        return psycopg.connect(target.conninfo(), connect_timeout=min(timeout, 10),
                               application_name="rewind-check", autocommit=True)
    except psycopg.OperationalError as e:
        text = str(e)
        if "authentication failed" in text:
            why = f"it refused the credentials of user {target.user!r}"
        elif "does not exist" in text and "database" in text:
            why = "the database does not exist"
        else:
            why = first_line(text)
        raise DatabaseError("DatabaseUnreachable",
                            f"the database is not reachable ({target.redacted}): {why}") from None


def _query_error(e: psycopg.Error, check: SqlCheck) -> str:
    if isinstance(e, psycopg.errors.QueryCanceled):
        return f"the query did not answer within {check.timeout_seconds}s"
    if e.sqlstate is None:  # refused by psycopg before sending, e.g. placeholders vs params
        kind, message, shown = "could not be sent", str(e), True
    else:
        kind = f"failed with {type(e).__name__} ({e.sqlstate})"
        message, shown = e.diag.message_primary or "", e.sqlstate[:2] in _SHOWN_CLASSES
    first = message.strip().splitlines()[0] if message.strip() else ""
    if any(value and value in first for value in (check.params or {}).values()):
        shown = False
    return f"the query {kind}" + (f": {first}" if shown and first else "")


def _first_column(row_json: str):
    """The first column's value: None, bool, _Number, str, or a list (array, JSON, composite)."""
    pairs = json.loads(row_json, parse_int=_Number, parse_float=_Number, object_pairs_hook=list)
    if not pairs:
        raise ValueError("the query returns no columns")
    return pairs[0][1]


def _kind(value) -> str | None:
    """What the value is when it is neither NULL, a boolean nor a number."""
    if value is None or isinstance(value, (bool, _Number)):
        return None
    return "text" if isinstance(value, str) else "an array, JSON or composite value"


def _text(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _judge(rows: list[tuple[str | None, int]], took: int, check: SqlCheck) -> Measurement:
    n = len(rows)
    if n > check.row_limit:
        return Measurement("Inconclusive", f"the query returned more than {check.row_limit} rows")
    if rows and rows[-1][1] > MAX_BYTES:
        return Measurement("Inconclusive", f"the query returned more than {MAX_BYTES // 1024} KiB "
                                           "of data; select only what the check compares")
    try:
        values = [_first_column(j) for j, _ in rows]
    except ValueError as e:
        return Measurement("Inconclusive", str(e))
    passed = f"returned {n} row(s) in {took} ms"
    if check.equals is not None:
        if n != 1:
            return Measurement("Failed", f"the query returned {n} rows, expected one")
        value, kind = values[0], _kind(values[0])
        if kind not in (None, "text"):
            return Measurement("Inconclusive", f"the first column is {kind}; cast it to text to "
                                               "compare it with equals")
        if _text(value) == check.equals:
            return Measurement("Passed", f"{passed}; the value matches")
        found = (f"a {len(value)}-character text that differs from the expected value"
                 if kind else f"{_text(value)}, expected {check.equals!r}")
        return Measurement("Failed", f"the first column is {found}")
    if check.min_rows is not None or check.max_rows is not None:
        if check.min_rows is not None and n < check.min_rows:
            return Measurement("Failed", f"the query returned {n} row(s), fewer than minRows {check.min_rows}")
        if check.max_rows is not None and n > check.max_rows:
            return Measurement("Failed", f"the query returned {n} row(s), more than maxRows {check.max_rows}")
        return Measurement("Passed", f"{passed}; the row count is within bounds")
    if n == 0:
        return Measurement("Failed", "the query returned no rows")
    kind = next((k for k in map(_kind, values) if k), None)
    if kind:
        return Measurement("Inconclusive", f"the first column is {kind}, not a boolean or number; "
                                           "use equals")
    if any(v is True or (isinstance(v, _Number) and Decimal(v) != 0) for v in values):
        return Measurement("Passed", f"{passed}; the first column is true")
    return Measurement("Failed", f"the first column is {_text(values[0])}" if n == 1
                       else f"none of the {n} rows has a true or non-zero first column")
