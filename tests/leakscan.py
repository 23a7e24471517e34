"""The leak scan (issue 15): canaries, distinctive random values put in every secret a test uses,
looked for everywhere a rollback leaves a trace: the API server's audit log (request bodies of
every write but Secrets'), every version of the objects a watch saw while the rollback ran
(status and Event messages overwritten later included), the operator's and the Job runner's
logs, what every receiver got, and the PostgreSQL server log (every statement, while a scan is
armed). A finding names where, never the value:

    with LeakScan(cluster, api_client, namespace, postgres) as scan:   # before the Rollback
        ...
    assert_no_leaks(canaries, scan.sources(), operator.sources(), receiver_sources(...))
"""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException

from helpers import wait_for

Source = tuple[str, Any]          # (where, a string or a JSON-like value)

# What the watch records, every version: the Rollback (status as it changes), Events (messages
# as they are written and overwritten by counts), and the objects the operator makes.
WATCHED = ("rollbacks", "events", "jobs", "pods", "configmaps")


def forms(value: str) -> list[str]:
    """The ways a value can appear: as is, URL-quoted, JSON-escaped, and base64-encoded at each of
    the three alignments it can have inside a longer base64 text (less the edge characters that
    depend on the neighbouring bytes)."""
    raw = value.encode()
    out = {value, urllib.parse.quote(value, safe=""), json.dumps(value)[1:-1]}
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + raw).decode().rstrip("=")
        out.add(enc[4 if pad else 0:len(enc) - 4] if len(enc) > 12 else enc)
    return sorted(out, key=len)


class Finder:
    """Every form of every canary, as one regular expression."""

    def __init__(self, canaries: dict[str, str]):
        assert all(len(v) >= 12 for v in canaries.values()), "a canary must be distinctive"
        self._label = {f: label for label, value in canaries.items() for f in forms(value)}
        self._re = re.compile("|".join(re.escape(f) for f in sorted(self._label, key=len, reverse=True)))

    def labels(self, text: str) -> list[str]:
        return sorted({self._label[m.group()] for m in self._re.finditer(text)})

    def findings(self, where: str, value: Any) -> list[str]:
        """Where each canary is in `value`: a text's line numbers, a JSON value's field paths."""
        if isinstance(value, str):
            if not self._re.search(value):
                return []
            try:
                return self.findings(where, json.loads(value))
            except ValueError:
                pass
            return [f"{label} in {where}, line {n}" for n, line in enumerate(value.splitlines(), 1)
                    for label in self.labels(line)]
        if not self._re.search(json.dumps(value)):
            return []
        return [f"{label} in {where}, field {path}" for path, text in _leaves(value)
                for label in self.labels(text)] or [f"{label} in {where}"
                                                    for label in self.labels(json.dumps(value))]


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, text) of every key and string in a JSON value; strings that hold JSON (the
    last-applied annotation, a request body) are walked too."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield f"{path}.{k} (the key)", str(k)
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    elif isinstance(value, str):
        if value[:1] in "{[":
            try:
                yield from _leaves(json.loads(value), path)
                return
            except ValueError:
                pass
        yield path or "(the value)", value
    elif value is not None:
        yield path, str(value)


def leaks(canaries: dict[str, str], *sources: Iterable[Source]) -> tuple[list[str], int]:
    """Every place a canary is (named by label, never by value), and how many sources were read."""
    finder, found, count = Finder(canaries), [], 0
    for group in sources:
        for where, value in group:
            count += 1
            found += finder.findings(where, value)
    return found, count


def assert_no_leaks(canaries: dict[str, str], *sources: Iterable[Source]) -> int:
    """Fails naming every place a canary is; returns how many sources it read, so a caller can
    check the scan saw something."""
    found, count = leaks(canaries, *sources)
    assert not found, "secret values outside Secrets:\n" + "\n".join(found[:50])
    return count


# --- where to look --------------------------------------------------------------------------

class Tail:
    """A log file from now on (the session's logs are shared by every test)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def text(self) -> str:
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        # A writer may be in the middle of the last line: only whole lines (a log ends each one).
        return data[:data.rfind(b"\n") + 1].decode(errors="replace")


def audit_sources(tail: Tail, namespace: str) -> Iterator[Source]:
    """Every audited request since `tail` began, in `namespace` or cluster-scoped."""
    # "\n" only: str.splitlines would split inside a body holding U+0085 or U+2028.
    for n, line in enumerate(tail.text().split("\n"), 1):
        if not line:
            continue
        ev = json.loads(line)
        ref = ev.get("objectRef") or {}
        if ref.get("namespace") in (None, namespace):
            what = f"{ev.get('verb')} {ref.get('resource')}/{ref.get('subresource') or ''}{ref.get('name') or ''}"
            yield f"audit log line {n} ({what} by {ev.get('userAgent', '?').split(' ')[0]})", ev


def file_sources(label: str, paths: Iterable[Path]) -> Iterator[Source]:
    for p in paths:
        yield f"{label} {p.name}", p.read_text(errors="replace")


def webhook_sources(name: str, receiver) -> Iterator[Source]:
    for i, r in enumerate(receiver.requests):
        # Not r.path: the URL is the webhook's credential, and its receiver must get it.
        yield f"{name} request {i} headers", "\n".join(f"{k}: {v}" for k, v in r.headers.items())
        yield f"{name} request {i} body", r.body.decode(errors="replace")


def smtp_sources(name: str, receiver) -> Iterator[Source]:
    # The SMTP AUTH exchange is not here: the receiver checks the password and records only
    # who logged in (Mail.user); the password is the one thing it must receive.
    for i, m in enumerate(receiver.messages):
        yield f"{name} message {i} envelope", f"{m.mail_from} {m.rcpt_tos} {m.user}"
        yield f"{name} message {i}", m.message.as_string()


class LeakScan:
    """Started before the Rollback is applied: a watch of every version of WATCHED in the
    namespace, the audit log and the PostgreSQL server log from now on, the latter with every
    statement logged (`log_statement = all`, until stop)."""

    def __init__(self, cluster, api_client, namespace: str, postgres=None):
        self.namespace, self._api, self._postgres = namespace, api_client, postgres
        self.versions: list[tuple[str, dict]] = []
        self._errors: list[str] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        if not getattr(cluster, "audit_log", None):
            pytest.fail("the leak scan reads every request body in the API server's audit log, and this "
                        "cluster gives the tests none (REWIND_TEST_EXISTING_CLUSTER): it would see less "
                        "than it says")
        self._audit = Tail(cluster.audit_log)
        self._pg_log = None
        if postgres is not None:
            self._pg_log = Tail(postgres.proc.log)
            _log_statements(postgres, "all")
        self._threads = []
        for kind in WATCHED:
            ready = threading.Event()
            t = threading.Thread(target=self._guarded_watch, args=(kind, ready), daemon=True,
                                 name=f"leakscan-{kind}")
            t.start()
            ready.wait(30)
            assert ready.is_set(), f"the watch of {kind} never started"
            self._threads.append(t)

    def _list_fn(self, kind: str):
        if kind == "rollbacks":
            api = client.CustomObjectsApi(self._api)
            return lambda **kw: api.list_namespaced_custom_object(
                "rewind.dev", "v1alpha1", self.namespace, "rollbacks", **kw)
        api = client.BatchV1Api(self._api) if kind == "jobs" else client.CoreV1Api(self._api)
        fn = getattr(api, f"list_namespaced_{ {'events': 'event', 'jobs': 'job', 'pods': 'pod', 'configmaps': 'config_map'}[kind]}")
        return lambda **kw: fn(self.namespace, **kw)

    def _record(self, kind: str, obj: dict) -> None:
        with self._lock:
            self.versions.append((kind, obj))

    def _guarded_watch(self, kind: str, ready: threading.Event) -> None:
        """A watch that broke would see nothing more: stop() says so (the error's kind only, as
        an API error can carry an object)."""
        try:
            self._watch(kind, ready)
        except Exception as e:
            if not self._stop.is_set():
                self._errors.append(f"the watch of {kind} broke: {type(e).__name__} {getattr(e, 'status', '')}")

    def _watch(self, kind: str, ready: threading.Event) -> None:
        list_fn = self._list_fn(kind)
        rv = None
        while not self._stop.is_set():
            if rv is None:
                listed = list_fn(_preload_content=False)
                body = json.loads(listed.data)
                for item in body["items"]:
                    self._record(kind, item)
                rv = body["metadata"]["resourceVersion"]
                ready.set()
            try:
                for ev in watch.Watch().stream(list_fn, resource_version=rv, timeout_seconds=2,
                                               allow_watch_bookmarks=False):
                    obj = ev["raw_object"]
                    if ev["type"] == "ERROR":
                        rv = None          # expired: list again (a gap here would be reported)
                        break
                    self._record(kind, obj)
                    rv = obj["metadata"]["resourceVersion"]
            except ApiException as e:
                if e.status != 410:
                    raise
                rv = None

    def __enter__(self) -> "LeakScan":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Idempotent (a test may stop it, and its finalizer again)."""
        if self._stop.is_set():
            return
        self._stop.set()
        for t in self._threads:
            t.join(30)
        if self._postgres is not None:
            _log_statements(self._postgres, None)
        assert not self._errors, self._errors

    def sources(self) -> Iterator[Source]:
        """Every watched version, the audit log, the PostgreSQL log since the start."""
        with self._lock:
            versions = list(self.versions)
        for kind, obj in versions:
            meta = obj.get("metadata", {})
            yield f"{kind} {meta.get('name')} at resourceVersion {meta.get('resourceVersion')}", obj
        if self._audit:
            yield from audit_sources(self._audit, self.namespace)
        if self._pg_log:
            yield "PostgreSQL server log", self._pg_log.text()


def _log_statements(postgres, value: str | None) -> None:
    """Sets (or resets) log_statement server-wide; returns once a new connection has it."""
    with postgres.connect(autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET log_statement = '{value}'" if value else "ALTER SYSTEM RESET log_statement")
        conn.execute("SELECT pg_reload_conf()")

    def applied():
        with postgres.connect() as conn:
            return conn.execute("SHOW log_statement").fetchone()[0] == (value or "none")
    wait_for(f"log_statement = {value or 'none'}", applied, timeout=30)
