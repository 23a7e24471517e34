"""A real PostgreSQL server on loopback for the tests, from Debian's `postgresql` package.

It runs as the `postgres` system user when started by root (PostgreSQL refuses to run as root),
listens on 127.0.0.1 on a free port, and requires a password (scram-sha-256) over TCP.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from rewind_testbed.procs import Proc, free_port, wait_until


def find_bindir() -> Path:
    """The newest installed PostgreSQL server's bin directory (or $REWIND_PG_BINDIR)."""
    override = os.environ.get("REWIND_PG_BINDIR")
    if override:
        return Path(override)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not candidates:
        raise RuntimeError("no PostgreSQL server found under /usr/lib/postgresql; "
                           "install it with `apt-get install -y postgresql` (or run .ci/run)")
    return candidates[-1].parent


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root but there is no `postgres` system user; "
                           "install Debian's postgresql package") from None
    return "postgres"


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    password: str = field(repr=False)      # never in a repr: pytest prints fixtures on failure
    host: str = "127.0.0.1"
    superuser: str = "postgres"
    proc: Proc | None = field(default=None, repr=False)

    def dsn(self, dbname: str = "postgres", user: str | None = None,
            password: str | None = None) -> str:
        user = user or self.superuser
        password = self.password if password is None else password
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kw) -> psycopg.Connection:
        return psycopg.connect(host=self.host, port=self.port, user=self.superuser,
                               password=self.password, dbname=dbname, **kw)

    def create_database(self, name: str) -> str:
        with self.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        with self.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))

    @classmethod
    def start(cls, run_dir: Path, host: str = "127.0.0.1") -> "PostgresServer":
        """On loopback; and on `host` too, an address pods of an existing cluster reach this machine
        at (then any client that knows the password may connect: scram-sha-256 from anywhere)."""
        bindir = find_bindir()
        user = _run_as()
        run_dir.mkdir(parents=True, exist_ok=True)
        data = run_dir / "pgdata"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(mode=0o700)
        password = secrets.token_urlsafe(24)
        pwfile = run_dir / "pg.pw"
        pwfile.write_text(password)
        pwfile.chmod(0o600)
        if user:
            shutil.chown(run_dir, user)
            shutil.chown(data, user)
            shutil.chown(pwfile, user)
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8",
             "--locale=C.UTF-8", "--no-sync"],
            capture_output=True, text=True, user=user,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}); every parent of {run_dir} must "
                               f"be reachable by the {user or 'current'} user: {init.stderr.strip()}")
        pwfile.unlink()
        if host != "127.0.0.1":
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        port = free_port()
        server = cls(data_dir=data, port=port, password=password, host=host)
        log = run_dir / "postgres.log"
        if user:
            log.touch()
            shutil.chown(log, user)
        server.proc = Proc(
            "postgres",
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
             "-c", f"listen_addresses={','.join(dict.fromkeys(['127.0.0.1', host]))}",
             "-c", f"unix_socket_directories={data}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200", "-c", "log_min_messages=warning"],
            log, user=user,
        )
        server.proc.start()
        wait_until("PostgreSQL accepting connections", lambda: server.connect().close() or True,
                   60, [server.proc])
        return server

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(timeout=30)
            self.proc = None
