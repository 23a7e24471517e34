"""PostgreSQL, as the operator uses it directly (psycopg 3): checks, the restore ledger, staging
database creation, connection termination, the swap and verification queries.

Identifiers are always quoted with `psycopg.sql.Identifier`; values are always bound parameters.
Credentials come from the connection URL and never appear in an error message we raise.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit
from dataclasses import dataclass
from typing import Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from rewind.api.errors import ReasonedError

CONNECT_TIMEOUT = 10
STATEMENT_TIMEOUT_MS = 30_000
LEDGER_SCHEMA = "rewind"
LEDGER_TABLE = "restore_ledger"


class DatabaseError(ReasonedError):
    """PostgreSQL refused or failed; the message names host, port, user and database only."""


@dataclass(frozen=True)
class Target:
    """A parsed connection URL; `redacted` is safe to show."""

    url: str
    dbname: str
    host: str
    port: str
    user: str

    @property
    def redacted(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def conninfo(self, dbname: str | None = None) -> str:
        return make_conninfo(self.url, dbname=dbname or self.dbname, connect_timeout=CONNECT_TIMEOUT,
                             application_name="rewind")


def parse_url(url: str) -> Target:
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise DatabaseError("InvalidConnection", "the connection Secret does not hold a valid "
                                                 "postgresql:// URL") from None
    if not url.startswith(("postgresql://", "postgres://")):
        raise DatabaseError("InvalidConnection", "the connection Secret must hold a postgresql:// URL")
    # Nothing from an ambiguous URL is echoed: its parts may be pieces of the password.
    authority = url.split("://", 1)[1].split("/", 1)[0]
    if authority.count("@") > 1:
        raise DatabaseError("InvalidConnection", "the connection URL has more than one '@' before "
                                                 "the host: percent-encode the password (%40 for @)")
    port = params.get("port", "5432")
    if not str(port).isdigit():
        raise DatabaseError("InvalidConnection", "the connection URL's port is not a number: "
                                                 "percent-encode the password (%2F for /, %3A for :)")
    overridden = sorted(set(params) & {"dbname", "host", "hostaddr", "port", "user", "service"}
                        & set(parse_qs(urlsplit(url).query)))
    if overridden:
        raise DatabaseError("InvalidConnection", "the connection URL's query sets "
                            f"{', '.join(overridden)}; put them in the URL itself, not after '?'")
    dbname = params.get("dbname")
    if not dbname or "/" in dbname:
        raise DatabaseError("InvalidConnection", "the connection URL names no database "
                                                 "(postgresql://user:password@host:port/DBNAME)")
    return Target(url=url, dbname=dbname, host=params.get("host", "localhost"),
                  port=str(params.get("port", "5432")), user=params.get("user", ""))


@contextmanager
def connect(target: Target, dbname: str | None = None, autocommit: bool = True) -> Iterator[psycopg.Connection]:
    try:
        conn = psycopg.connect(target.conninfo(dbname), autocommit=autocommit)
    except psycopg.OperationalError as e:
        text = str(e)
        if "password authentication failed" in text or "authentication failed" in text:
            raise DatabaseError("AuthenticationFailed", f"PostgreSQL at {target.host}:{target.port} "
                                f"refused the credentials of user {target.user!r}") from None
        if "does not exist" in text and "database" in text:
            raise DatabaseError("DatabaseNotFound", f"database {dbname or target.dbname!r} does "
                                f"not exist on {target.host}:{target.port}") from None
        raise DatabaseError("DatabaseUnreachable", f"cannot connect to PostgreSQL at "
                            f"{target.host}:{target.port}: {first_line(text)}") from None
    try:
        conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT_MS)))
        yield conn
    finally:
        conn.close()


def first_line(text: str) -> str:
    """libpq's first line, with every quoted value dropped: libpq quotes connection options it
    refuses (`invalid sslmode value: "..."`), and those come from the Secret's URL."""
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return re.sub(r'"[^"]*"', '"…"', line)


# --- facts -----------------------------------------------------------------------------------


def database_comment(conn: psycopg.Connection, name: str) -> tuple[bool, str | None]:
    """(exists, comment) of a database."""
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,)).fetchone()
    return (row is not None, row[0] if row else None)


def can_swap(conn: psycopg.Connection, dbname: str) -> bool:
    """Renaming needs CREATEDB and ownership (or superuser)."""
    row = conn.execute(
        """SELECT r.rolsuper OR (r.rolcreatedb AND d.datdba = r.oid)
           FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = %s""",
        (dbname,)).fetchone()
    return bool(row and row[0])


def table_counts(conn: psycopg.Connection, tables: list[str]) -> dict[str, int | None]:
    """Row count per table; None for a table that does not exist."""
    out: dict[str, int | None] = {}
    for table in tables:
        schema, _, name = table.rpartition(".")
        schema = schema or "public"
        exists = conn.execute(
            """SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p'))""",
            (schema, name)).fetchone()[0]
        out[table] = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema, name))).fetchone()[0] if exists else None
    return out


# --- the restore ledger ----------------------------------------------------------------------


def try_lock(conn: psycopg.Connection, key: str) -> bool:
    """A session-level advisory lock on `key`, held until the connection closes: one operator at
    a time works on a fenced step, even if two run by mistake."""
    return conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()[0]


def ensure_ledger(conn: psycopg.Connection) -> None:
    try:
        _ensure_ledger(conn)
    except psycopg.errors.InsufficientPrivilege:
        raise DatabaseError("Forbidden", f"role {conn.info.user!r} cannot create the restore ledger "
                            f"(schema {LEDGER_SCHEMA}) in database {conn.info.dbname!r}: grant it "
                            "CREATE there, or create the schema for it") from None


def check_ledger(conn: psycopg.Connection) -> None:
    """Read-only (for preflight): the restore ledger exists and this role may write it, or this
    role may create it. Raises DatabaseError (Forbidden) with what to grant."""
    ok = conn.execute(sql.SQL("""SELECT CASE
        WHEN to_regclass(%(table)s) IS NOT NULL THEN has_table_privilege(%(table)s, 'SELECT,INSERT,UPDATE')
        WHEN to_regnamespace(%(schema)s) IS NOT NULL THEN has_schema_privilege(%(schema)s, 'CREATE')
        ELSE has_database_privilege(current_database(), 'CREATE') END"""),
        {"table": f"{LEDGER_SCHEMA}.{LEDGER_TABLE}", "schema": LEDGER_SCHEMA}).fetchone()[0]
    if not ok:
        raise DatabaseError("Forbidden", f"role {conn.info.user!r} cannot create or write the restore "
                            f"ledger (schema {LEDGER_SCHEMA}) in database {conn.info.dbname!r}: grant it "
                            "CREATE there, or create the schema for it")


def _ensure_ledger(conn: psycopg.Connection) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(LEDGER_SCHEMA)))
    conn.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        rollback_uid text NOT NULL, step text NOT NULL, state text NOT NULL,
        detail text, updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (rollback_uid, step))""").format(sql.Identifier(LEDGER_SCHEMA, LEDGER_TABLE)))


def ledger_state(conn: psycopg.Connection, uid: str, step: str) -> str | None:
    row = conn.execute(sql.SQL("SELECT state FROM {} WHERE rollback_uid = %s AND step = %s")
                       .format(sql.Identifier(LEDGER_SCHEMA, LEDGER_TABLE)), (uid, step)).fetchone()
    return row[0] if row else None


def ledger_advance(conn: psycopg.Connection, uid: str, step: str, from_state: str | None,
                   to_state: str, detail: str | None = None) -> bool:
    """Moves a ledger row from `from_state` (None: no row yet) to `to_state`; False when the row
    was not in `from_state` (someone, or an earlier run, moved it first). This is the fence."""
    table = sql.Identifier(LEDGER_SCHEMA, LEDGER_TABLE)
    if from_state is None:
        cur = conn.execute(sql.SQL("INSERT INTO {} (rollback_uid, step, state, detail) "
                                   "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING").format(table),
                           (uid, step, to_state, detail))
    else:
        cur = conn.execute(sql.SQL("UPDATE {} SET state = %s, detail = %s, updated_at = now() "
                                   "WHERE rollback_uid = %s AND step = %s AND state = %s").format(table),
                           (to_state, detail, uid, step, from_state))
    return cur.rowcount == 1


# --- staging and the swap --------------------------------------------------------------------


def create_database(conn: psycopg.Connection, name: str, comment: str) -> None:
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    set_comment(conn, name, comment)


def set_comment(conn: psycopg.Connection, name: str, comment: str) -> None:
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment)))


def is_empty(target: Target, name: str) -> bool:
    """No tables, views or sequences outside the system schemas."""
    with connect(target, name) as conn:
        return conn.execute("""SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE left(n.nspname, 3) <> 'pg_' AND n.nspname <> 'information_schema')""").fetchone()[0]


def set_allow_connections(conn: psycopg.Connection, name: str, allow: bool) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
        sql.Identifier(name), sql.SQL("true" if allow else "false")))


def sessions(conn: psycopg.Connection, name: str) -> int:
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,)).fetchone()[0]


# A terminated backend exits within milliseconds: a short look settles the usual case. Sessions
# that stay longer are the caller's to wait for, on its own timer, without holding its thread.
END_SESSIONS_WITHIN_SECONDS = 0.5
END_SESSIONS_POLL_SECONDS = 0.05


def end_sessions(conn: psycopg.Connection, name: str, terminate: bool,
                 wait_seconds: float = END_SESSIONS_WITHIN_SECONDS) -> int:
    """Terminates the database's other sessions (when allowed) and gives them `wait_seconds` at
    most to go; returns how many remain. A session this role may not end (a superuser's) simply
    remains."""
    deadline = time.monotonic() + wait_seconds
    while True:
        if terminate:
            pids = [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,))]
            for pid in pids:
                try:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                except psycopg.errors.InsufficientPrivilege:
                    pass
        left = sessions(conn, name)
        if left == 0 or time.monotonic() >= deadline:
            return left
        time.sleep(END_SESSIONS_POLL_SECONDS)


def swap(conn: psycopg.Connection, *, live: str, staging: str, pre: str, uid: str,
         ledger_step: str) -> None:
    """One transaction: live -> pre, staging -> live, both commented, the ledger row marked done.
    Either all of it happens or none of it: never a moment without a database named `live`."""
    try:
        _swap(conn, live=live, staging=staging, pre=pre, uid=uid, ledger_step=ledger_step)
    except psycopg.errors.ObjectInUse:
        raise DatabaseError("SwapBlocked", f"database {live!r} or {staging!r} is still being "
                                           "accessed by other sessions; nothing was renamed") from None


def _swap(conn: psycopg.Connection, *, live: str, staging: str, pre: str, uid: str,
          ledger_step: str) -> None:
    table = sql.Identifier(LEDGER_SCHEMA, LEDGER_TABLE)
    with conn.transaction():
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(live), sql.Identifier(pre)))
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(staging), sql.Identifier(live)))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(pre), sql.Literal(f"rewind:{uid}:pre-rollback copy of {live}")))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(live), sql.Literal(f"rewind:{uid}:restored")))
        cur = conn.execute(sql.SQL("UPDATE {} SET state = 'swapped', updated_at = now() "
                                   "WHERE rollback_uid = %s AND step = %s AND state = 'swapping'")
                           .format(table), (uid, ledger_step))
        if cur.rowcount != 1:
            raise DatabaseError("Interrupted", "the restore ledger is not in the state the swap "
                                               "expects; nothing was renamed")


def clear_columns(conn: psycopg.Connection, table: str, columns: list[str],
                  filters: list[tuple[str, str]], timeout_seconds: int) -> int:
    """UPDATE table SET col = NULL, ... WHERE f1 = $1 AND ...; in one transaction with a statement
    timeout. Returns the number of rows changed."""
    schema, _, name = table.rpartition(".")
    target = sql.Identifier(schema or "public", name)
    sets = sql.SQL(", ").join(sql.SQL("{} = NULL").format(sql.Identifier(c)) for c in columns)
    where = sql.SQL(" AND ").join(sql.SQL("{}::text = %s").format(sql.Identifier(c)) for c, _ in filters) \
        if filters else sql.SQL("true")
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(timeout_seconds * 1000)))
        try:
            cur = conn.execute(sql.SQL("UPDATE {} SET {} WHERE {}").format(target, sets, where),
                               [v for _, v in filters])
        except psycopg.errors.UndefinedTable:
            raise DatabaseError("ActionFailed", f"table {table} does not exist in the restored database") from None
        except psycopg.errors.UndefinedColumn as e:
            raise DatabaseError("ActionFailed", f"{first_line(str(e))} (table {table})") from None
        except psycopg.errors.QueryCanceled:
            raise DatabaseError("ActionFailed", f"the update of {table} ran past its statement "
                                                f"timeout of {timeout_seconds}s") from None
        return cur.rowcount
