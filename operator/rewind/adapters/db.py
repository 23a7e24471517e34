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
    # CREATE ... IF NOT EXISTS asks for CREATE on the database even when the table is there:
    # a role granted the ledger (and not CREATE) looks first.
    if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{LEDGER_SCHEMA}.{LEDGER_TABLE}",)).fetchone()[0]:
        return
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
    """One transaction: live -> pre, staging -> live, the pre-rollback copy commented, what the
    dump does not carry given to the new live database (carry_over), the ledger row marked done.
    Either all of it happens or none of it: never a moment without a database named `live`, and
    never one that is not the old one's twin."""
    try:
        _swap(conn, live=live, staging=staging, pre=pre, uid=uid, ledger_step=ledger_step)
    except psycopg.errors.ObjectInUse:
        raise DatabaseError("SwapBlocked", f"database {live!r} or {staging!r} is still being "
                                           "accessed by other sessions; nothing was renamed") from None


def _swap(conn: psycopg.Connection, *, live: str, staging: str, pre: str, uid: str,
          ledger_step: str) -> None:
    table = sql.Identifier(LEDGER_SCHEMA, LEDGER_TABLE)
    with conn.transaction():
        was = database_properties(conn, live)
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(live), sql.Identifier(pre)))
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(staging), sql.Identifier(live)))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(pre), sql.Literal(f"rewind:{uid}:pre-rollback copy of {live}")))
        carry_over(conn, was, live)
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


# --- fidelity: the restored database as the live one's twin ----------------------------------
# A dump carries the objects inside a database, not the database itself: how it was created
# (encoding, locale, owner), its settings, its grants, its limit and its comment live in shared
# catalogs. These read them from the live database and give them to staging.

PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}
# Settings whose value is a list of quoted names (PostgreSQL's GUC_LIST_QUOTE): stored as
# `"$user", public`, each element must be given back as its own literal (as pg_dumpall does).
LIST_QUOTE_SETTINGS = {"search_path", "temp_tablespaces", "local_preload_libraries",
                       "session_preload_libraries", "shared_preload_libraries",
                       "unix_socket_directories"}


@dataclass(frozen=True)
class DatabaseProperties:
    """What CREATE DATABASE and the shared catalogs say about a database (pg_database's row,
    whatever the server version names its columns), its settings and its effective grants."""

    encoding: str
    provider: str                 # libc, icu or builtin
    collate: str
    ctype: str
    locale: str | None            # the ICU (or builtin) locale
    icu_rules: str | None
    owner: str
    connection_limit: int
    tablespace: str | None        # None: the default tablespace
    comment: str | None
    acl: tuple[str, ...]          # effective (the default spelled out when datacl is NULL)
    acl_is_default: bool
    settings: tuple[tuple[str, tuple[str, ...]], ...]   # (role or "" for all roles, name=value...)
    grants: tuple[tuple[str, str, str, bool], ...]       # (grantor, grantee or "" for PUBLIC, privilege, grantable)

    def creation(self) -> dict[str, str | None]:
        """What a database is created with and cannot change afterwards."""
        return {"encoding": self.encoding, "locale provider": self.provider, "collation": self.collate,
                "ctype": self.ctype, "ICU locale": self.locale, "ICU rules": self.icu_rules}


def database_properties(conn: psycopg.Connection, name: str) -> DatabaseProperties | None:
    row = conn.execute("""
        SELECT to_jsonb(d), pg_encoding_to_char(d.encoding), pg_get_userbyid(d.datdba),
               CASE WHEN t.spcname = 'pg_default' THEN NULL ELSE t.spcname END,
               shobj_description(d.oid, 'pg_database'),
               coalesce(d.datacl, acldefault('d', d.datdba))::text[], d.datacl IS NULL,
               ARRAY(SELECT ARRAY[coalesce(r.rolname, ''), array_to_string(s.setconfig, E'\\n')]
                     FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
                     WHERE s.setdatabase = d.oid ORDER BY 1),
               ARRAY(SELECT ARRAY[pg_get_userbyid(g.grantor), coalesce(pg_get_userbyid(nullif(g.grantee, 0)), ''),
                                  g.privilege_type, g.is_grantable::text]
                     FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) g ORDER BY 1)
        FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = %s""",
        (name,)).fetchone()
    if row is None:
        return None
    d, encoding, owner, tablespace, comment, acl, acl_default, settings, grants = row
    return DatabaseProperties(
        encoding=encoding, provider=PROVIDERS.get(d.get("datlocprovider", "c"), "libc"),
        collate=d["datcollate"], ctype=d["datctype"],
        locale=d.get("datlocale", d.get("daticulocale")), icu_rules=d.get("daticurules"),
        owner=owner, connection_limit=d["datconnlimit"], tablespace=tablespace, comment=comment,
        acl=tuple(sorted(acl)), acl_is_default=acl_default,
        settings=tuple((role, tuple(sorted(config.split("\n")))) for role, config in settings),
        grants=tuple((g[0], g[1], g[2], g[3] == "true") for g in grants))


def create_database(conn: psycopg.Connection, name: str, comment: str,
                    like: DatabaseProperties | None = None) -> None:
    """CREATE DATABASE, from template0 and created as `like` was when given: a different collation
    changes index order and uniqueness, a different owner changes who may do what."""
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if like is not None:
        query += _created_like(conn, like)
    conn.execute(query)
    set_comment(conn, name, comment)


def _created_like(conn: psycopg.Connection, p: DatabaseProperties) -> sql.Composed:
    version = conn.info.server_version
    parts = [sql.SQL(" WITH TEMPLATE template0 ENCODING {}").format(sql.Literal(p.encoding))]
    if version >= 150000:
        parts.append(sql.SQL(" LOCALE_PROVIDER {}").format(sql.SQL(p.provider)))
    parts.append(sql.SQL(" LC_COLLATE {} LC_CTYPE {}").format(sql.Literal(p.collate), sql.Literal(p.ctype)))
    if p.locale is not None and p.provider == "icu":
        parts.append(sql.SQL(" ICU_LOCALE {}").format(sql.Literal(p.locale)))
    if p.locale is not None and p.provider == "builtin":
        parts.append(sql.SQL(" BUILTIN_LOCALE {}").format(sql.Literal(p.locale)))
    if p.icu_rules is not None:
        parts.append(sql.SQL(" ICU_RULES {}").format(sql.Literal(p.icu_rules)))
    parts.append(sql.SQL(" OWNER {}").format(sql.Identifier(p.owner)))
    if p.tablespace:
        parts.append(sql.SQL(" TABLESPACE {}").format(sql.Identifier(p.tablespace)))
    return sql.Composed(parts)


def differences(a: DatabaseProperties, b: DatabaseProperties, *, creation_only: bool = False) -> list[str]:
    """The names of what differs between two databases; never the values (a setting's value
    may be a secret)."""
    out = [what for what, value in a.creation().items() if b.creation()[what] != value]
    if creation_only:
        return out
    for what, x, y in (("owner", a.owner, b.owner), ("connection limit", a.connection_limit, b.connection_limit),
                       ("tablespace", a.tablespace, b.tablespace), ("comment", a.comment, b.comment),
                       ("grants", a.acl, b.acl)):
        if x != y:
            out.append(what)
    sa, sb = dict(a.settings), dict(b.settings)
    for role in sorted(set(sa) | set(sb)):
        if sa.get(role) != sb.get(role):
            out.append(f"settings of role {role} in the database" if role else "database settings")
    return out


def missing_powers(conn: psycopg.Connection) -> list[str]:
    """Read-only, for preflight, on a connection to the live database: what the connection's role
    lacks to restore it as it is (objects owned as in the backup, the database created with the
    same owner, its settings and grants given back). Each entry names what is needed."""
    me = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                      "WHERE rolname = current_user").fetchone()
    if me[0]:
        return []
    live = conn.info.dbname
    p = database_properties(conn, live)
    out = [] if me[2] else ["CREATEDB"]
    others = sorted(role for role, _ in p.settings if role and role != conn.info.user)
    if others and not me[1]:   # a role may set its own, CREATEROLE those of others
        out.append(f"CREATEROLE (the database has settings for role(s) {', '.join(others)})")
    superuser_only = conn.execute(
        """SELECT array_agg(DISTINCT s.name ORDER BY s.name) FROM pg_db_role_setting r
             JOIN pg_database d ON r.setdatabase = d.oid, unnest(r.setconfig) c, pg_settings s
           WHERE d.datname = %s AND s.name = split_part(c, '=', 1) AND s.context = 'superuser'""",
        (live,)).fetchone()[0]
    if superuser_only:
        out.append(f"SUPERUSER (settings only a superuser may set: {', '.join(superuser_only)})")
    lacking = [r[0] for r in conn.execute(f"""
        SELECT rolname FROM pg_roles WHERE oid IN ({_OWNERS_AND_GRANTORS})
          AND rolname NOT LIKE 'pg\\_%%' AND NOT pg_has_role(current_user, oid, 'USAGE')
        ORDER BY 1""", (live, live))]
    if lacking:
        out.append(f"membership (with INHERIT) in {', '.join(repr(r) for r in lacking)}, which "
                   "own the database, objects in it, or grants on it")
    return out


# The roles that own the database, anything in it outside the system schemas, or granted on it.
_OWNERS_AND_GRANTORS = """
    SELECT datdba FROM pg_database WHERE datname = %s
    UNION SELECT grantor FROM pg_database, aclexplode(datacl) WHERE datname = %s
    UNION SELECT relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%'
    UNION SELECT nspowner FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%%' AND nspname <> 'information_schema'
    UNION SELECT proowner FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION SELECT typowner FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%'
    UNION SELECT lomowner FROM pg_largeobject_metadata
    UNION SELECT extowner FROM pg_extension WHERE extname <> 'plpgsql'"""


def carry_over(conn: psycopg.Connection, was: DatabaseProperties, name: str) -> None:
    """Gives database `name` what `was` had and a dump does not carry: its settings (for all roles
    and per role), grants, connection limit and comment; then compares the two. Inside the
    swap's transaction: the settings and the limit would hinder verify and the actions on staging
    (a read-only default, a limit of 0), and the comment is staging's fence until then."""
    db = sql.Identifier(name)
    now = database_properties(conn, name)
    made = differences(was, now, creation_only=True) + [
        what for what, x, y in (("owner", was.owner, now.owner), ("tablespace", was.tablespace, now.tablespace))
        if x != y]
    if made:
        raise DatabaseError("FidelityMismatch", f"the staging database was created otherwise than the "
                            f"live one ({', '.join(made)}); nothing was renamed")
    try:
        _give(conn, was, now, db)
    except psycopg.errors.InsufficientPrivilege:
        raise DatabaseError("Forbidden", f"role {conn.info.user!r} may not give the restored database "
                            "the live one's settings or grants (SQLSTATE 42501); nothing was renamed") from None
    left = differences(was, database_properties(conn, name))
    if left:
        raise DatabaseError("FidelityMismatch", f"the restored database would differ from the live "
                            f"one in: {', '.join(left)}; nothing was renamed")


def _give(conn: psycopg.Connection, was: DatabaseProperties, now: DatabaseProperties,
          db: sql.Identifier) -> None:
    for role, _ in now.settings:
        conn.execute(_alter_settings(role, db) + sql.SQL(" RESET ALL"))
    for role, configs in was.settings:
        for config in configs:
            key, _, value = config.partition("=")
            values = _split_list(value) if key in LIST_QUOTE_SETTINGS else [value]
            conn.execute(_alter_settings(role, db) + sql.SQL(" SET {} = {}").format(
                sql.Identifier(key), sql.SQL(", ").join(map(sql.Literal, values))))
    if not (was.acl_is_default and now.acl_is_default):
        for grantee in sorted({grantee for _, grantee, _, _ in now.grants}):
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {} CASCADE").format(db, _role(grantee)))
        for grantor, grantee, privilege, grantable in was.grants:
            # As the grantor, so that the grant is recorded as the live database's was.
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(grantor)))
            conn.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(privilege), db, _role(grantee), sql.SQL(" WITH GRANT OPTION" if grantable else "")))
            conn.execute("RESET ROLE")
    conn.execute(sql.SQL("ALTER DATABASE {} WITH CONNECTION LIMIT {}").format(
        db, sql.Literal(was.connection_limit)))
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(was.comment)))


def _alter_settings(role: str, db: sql.Identifier) -> sql.Composed:
    if role:
        return sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), db)
    return sql.SQL("ALTER DATABASE {}").format(db)


def _role(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "" else sql.Identifier(name)


def _split_list(value: str) -> list[str]:
    """A stored list setting (`"$user", public, "x y"`) as its elements, unquoted."""
    out, item, quoted, i = [], "", False, 0
    while i < len(value):
        ch = value[i]
        if ch == '"' and quoted and value[i + 1:i + 2] == '"':
            item, i = item + '"', i + 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append(item.strip())
            item = ""
        else:
            item += ch
        i += 1
    out.append(item.strip())
    return out


# --- what a backup is compared with, and who holds a lock -------------------------------------


def table_names(conn: psycopg.Connection) -> list[str]:
    """`schema.table` of every table pg_dump would dump: ordinary and partitioned tables outside
    the system schemas, not an extension's own. Names only."""
    return [r[0] for r in conn.execute(
        """SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p') AND left(n.nspname, 3) <> 'pg_'
             AND n.nspname <> 'information_schema'
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                               AND d.deptype = 'e')""")]


@dataclass(frozen=True)
class LockHolder:
    """A session holding a lock another one waits for: who, never what it runs."""

    pid: int
    user: str
    application: str
    relation: str
    mode: str

    def __str__(self) -> str:
        app = f", application {self.application!r}" if self.application else ""
        return f"pid {self.pid} (user {self.user!r}{app}) holds {self.mode} on {self.relation}"


def lock_waits(conn: psycopg.Connection, application: str) -> list[LockHolder]:
    """The sessions that block the current database's sessions named `application` (e.g.
    pg_dump) from a table lock they wait for."""
    rows = conn.execute(
        """SELECT DISTINCT b.pid, coalesce(b.usename, ''), coalesce(b.application_name, ''),
                  w.relation::regclass::text, coalesce(h.mode, '')
           FROM pg_catalog.pg_locks w
           JOIN pg_catalog.pg_stat_activity a ON a.pid = w.pid
           CROSS JOIN LATERAL unnest(pg_catalog.pg_blocking_pids(w.pid)) AS bp(pid)
           JOIN pg_catalog.pg_stat_activity b ON b.pid = bp.pid
           LEFT JOIN pg_catalog.pg_locks h ON h.pid = b.pid AND h.granted
                AND h.locktype = 'relation' AND h.relation = w.relation
           WHERE NOT w.granted AND w.locktype = 'relation' AND a.application_name = %s
             AND a.datname = current_database()
           ORDER BY 1""", (application,)).fetchall()
    return [LockHolder(*r) for r in rows]


def exclusive_locks(conn: psycopg.Connection, relation: str | None = None) -> list[LockHolder]:
    """Other sessions holding ACCESS EXCLUSIVE (the one lock a reader waits for) on a table of the
    current database, or on `relation` (schema.table) only."""
    rows = conn.execute(
        """SELECT l.pid, coalesce(a.usename, ''), coalesce(a.application_name, ''),
                  l.relation::regclass::text, l.mode
           FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
           WHERE l.granted AND l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
             AND l.pid <> pg_backend_pid()
             AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
             AND (%(rel)s::text IS NULL OR l.relation = to_regclass(%(rel)s))
           ORDER BY l.pid""", {"rel": relation}).fetchall()
    return [LockHolder(*r) for r in rows]
