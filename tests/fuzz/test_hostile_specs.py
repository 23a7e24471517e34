"""Hostile input from the schema, against the real API server and a real operator: Rollback specs
generated from the CRD's own schema (fuzzspecs), valid ones and ones with one thing broken.

Everything the server accepts either runs or ends with a clear condition; a refused spec changes
nothing; the operator neither crashes, nor logs a traceback, nor loops (its writes to each
Rollback, counted in the API server's audit log, stay bounded).

The generator is steered, not replaced: most targets name objects that exist in the namespace
(a Deployment `web` with two revisions, a tracked Secret `oauth`, ...) so that runs get past
preflight, others are whatever the schema allows. Every address is loopback, on a port where
nothing listens, or TEST-NET-1 (192.0.2.1), which the test bed's egress policy refuses before
connecting: nothing leaves the machine, and no name is looked up in DNS.

One operator per test function, one namespace, a fresh Rollback per example. Hypothesis does not
shrink here (every example is a real rollback); a failure prints the example as generated.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import note as _note
from hypothesis.errors import InvalidArgument
from kubernetes import client

from fuzzspecs import examples, is_camel_case, json_schema, mutated, specs
from helpers import GROUP, PLURAL, VERSION, audit_writes, deploy_revisions, deployment, wait_for

pytestmark = pytest.mark.cluster

SETTLED = {"Succeeded", "Failed", "Interrupted", "Planned", "AwaitingApproval", "WaitingForTarget"}
TERMINAL = {"Succeeded", "Failed", "Interrupted", "Planned"}
HOSTS = ["127.0.0.1", "::1", "localhost", "192.0.2.1"]
# Port 1: nothing listens there; 192.0.2.1 never gets as far as a connection.
URL = {"type": "string", "maxLength": 2048,
       "pattern": r"^https?://(127\.0\.0\.1|\[::1\]|localhost|192\.0\.2\.1):1(/[^\s]*)?\Z"}
HOOK_URL = "http://127.0.0.1:1/hook"
OPERATOR_USER = "system:serviceaccount:rewind-test-system:"    # tests/conftest.py's operator
DSN = "postgresql://rewind:secret@127.0.0.1:1/booking"

RUN = settings(max_examples=examples(6), derandomize=True, deadline=None, database=None,
               phases=[Phase.explicit, Phase.generate],
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large, HealthCheck.filter_too_much])


def note(text: str) -> None:
    """Hypothesis's note (printed with a failing example), or print outside a @given test."""
    try:
        _note(text)
    except InvalidArgument:
        print(text)


def _edit(schema: dict, path: str, fn) -> None:
    """Replaces the node at `path` (property names, `[]` for items) with fn(node), in place; a
    path the schema does not have fails, so a renamed field is noticed."""
    *parents, last = path.split(".")
    node = schema
    for part in parents:
        node = node["items"] if part == "[]" else node["properties"][part]
    if last == "[]":
        node["items"] = fn(node["items"])
    else:
        node["properties"][last] = fn(node["properties"][last])


def _often(*values):
    """Mostly one of `values`, sometimes whatever the schema allows."""
    return lambda node: {"anyOf": [{"enum": list(values)}, node]}


def _only(value):
    return lambda node: {"const": value}


def _at_most(n):
    return lambda node: {**node, "maximum": min(n, node.get("maximum", n))}


def _few(n):
    return lambda node: {**node, "maxItems": min(n, node.get("maxItems", n))}


def steered_schema() -> dict:
    s = json_schema()
    ref = {"name": "hooks", "key": "url"}
    for path, fn in [
        ("application", _few(3)),
        ("application.[].name", _often("web", "monitor")),
        ("application.[].toRevision", _often("previous", 1, 2)),
        ("secrets", _few(3)),
        ("secrets.[].name", _often("oauth")),
        ("secrets.[].fromSecret", _often("oauth-old")),
        ("certificates", _few(2)),
        ("certificates.[].secretName", _often("tls")),
        ("certificates.[].verify.host", _only("127.0.0.1")),
        ("certificates.[].verify.port", _only(1)),
        ("certificates.[].verify.timeoutSeconds", _at_most(2)),
        ("database.connection.secretRef", _often({"name": "db", "key": "DATABASE_URL"})),
        ("verification.http", _few(3)),
        ("verification.http.[].url", lambda node: URL),
        ("verification.sql", _few(3)),
        ("verification.sql.[].connection.secretRef", _often({"name": "db", "key": "DATABASE_URL"})),
        ("verification.tls", _few(3)),
        ("verification.tls.[].host", lambda node: {"enum": HOSTS}),
        ("verification.tls.[].port", _only(1)),
        ("notifications", _few(3)),
        ("notifications.[].slack.webhookSecretRef", _only(ref)),
        ("notifications.[].webhook.urlSecretRef", _only(ref)),
        ("notifications.[].email.smtp.host", lambda node: {"enum": HOSTS}),
        ("notifications.[].email.smtp.port", _only(1)),
        ("maintenance.http.enter.url", lambda node: URL),
        ("maintenance.http.exit.url", lambda node: URL),
        ("maintenance.http.enter.urlSecretRef", _only(ref)),
        ("maintenance.http.exit.urlSecretRef", _only(ref)),
        ("maintenance.http.enter.timeoutSeconds", _at_most(2)),
        ("maintenance.http.exit.timeoutSeconds", _at_most(2)),
        ("maintenance.service.name", _often("web")),
        ("monitoring.scaleDown.[].name", _often("monitor")),
        ("monitoring.alertmanager.url", lambda node: URL),
    ]:
        _edit(s, path, fn)
    for kind in ("http", "sql", "tls"):     # each check ends within seconds
        for field, n in (("count", 2), ("intervalSeconds", 1), ("timeoutSeconds", 2)):
            _edit(s, f"verification.{kind}.[].{field}", _at_most(n))
    return s


STEERED = specs(steered_schema())


@pytest.fixture
def bed(api_client, namespace, operator):
    """The namespace's objects the specs mostly point at, and the running operator."""
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    deploy_revisions(apps, namespace, "web", ["registry.local/web:1", "registry.local/web:2"])
    apps.create_namespaced_deployment(namespace, deployment("monitor", "registry.local/monitor:1", 1))
    core.create_namespaced_service(namespace, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80}]}})

    def secret(name, data, **meta):
        core.create_namespaced_secret(namespace, {"metadata": {"name": name, **meta}, "stringData": data})

    secret("oauth", {"client_id": "one", "client_secret": "s1"}, labels={"rewind.dev/track": "true"})
    wait_for("the operator's first copy of oauth", lambda: _copies(core, namespace) >= 1)
    core.patch_namespaced_secret("oauth", namespace, {"stringData": {"client_secret": "s2"}})
    wait_for("the operator's second copy of oauth", lambda: _copies(core, namespace) >= 2)
    secret("oauth-old", {"client_id": "one", "client_secret": "s0"})
    secret("db", {"DATABASE_URL": DSN})
    secret("hooks", {"url": HOOK_URL})
    return operator


def _copies(core, namespace) -> int:
    return len(core.list_namespaced_secret(namespace, label_selector="rewind.dev/history-of=oauth").items)


def _state(api_client, namespace) -> tuple:
    """What a rollback could change in the namespace: workloads' and Services' specs and
    annotations, and Secrets' data (not the operator's history copies, which it writes on its
    own when a Secret changes)."""
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    return (
        sorted((d.metadata.name, str(d.spec), str(d.metadata.annotations))
               for d in apps.list_namespaced_deployment(namespace).items),
        sorted((s.metadata.name, str(s.spec.selector)) for s in core.list_namespaced_service(namespace).items),
        sorted((s.metadata.name, str(s.data)) for s in core.list_namespaced_secret(namespace).items
               if "rewind.dev/history-of" not in (s.metadata.labels or {})),
    )


class Run:
    """Applies one spec and checks what became of it."""

    names = itertools.count(1)
    wait = 240      # seconds a Rollback may take to settle, and to go once deleted

    def __init__(self, cluster, api_client, namespace, operator):
        self.cluster, self.api_client, self.namespace, self.operator = cluster, api_client, namespace, operator
        self.api = client.CustomObjectsApi(api_client)

    def get(self, name):
        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def __call__(self, spec: dict) -> None:
        name = f"fz-{next(self.names)}"
        note(f"Rollback {self.namespace}/{name}")
        log_start = len(self.operator.output())
        before = _state(self.api_client, self.namespace)
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollback", "metadata": {"name": name},
                "spec": spec}
        try:
            self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        except client.ApiException as e:
            assert e.status in (400, 422), (e.status, e.body)
            note(f"refused: {e.body[:2000]}")
            print(f"{name}: refused ({e.status})")
            assert self.get(name) is None
            assert _state(self.api_client, self.namespace) == before
            return
        try:
            rb = wait_for(f"Rollback {name} settled", lambda: (lambda rb: rb if rb.get(
                "status", {}).get("phase") in SETTLED else None)(self.get(name)), timeout=self.wait)
            self.check_settled(rb)
        finally:
            self.delete(name)
        assert self.operator.proc.poll() is None, "the operator exited"
        self.check_log(self.operator.output()[log_start:])
        self.check_writes(name, rb)

    def check_settled(self, rb: dict) -> None:
        status = rb["status"]
        note(f"phase {status['phase']}, conditions {status.get('conditions')}")
        for c in status.get("conditions", []):
            assert is_camel_case(c["reason"]), c
        if status["phase"] == "Failed":
            ready = next(c for c in status["conditions"] if c["type"] == "Ready")
            assert ready["status"] == "False" and ready["message"].strip(), ready

    def delete(self, name: str) -> None:
        try:
            self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except client.ApiException as e:
            if e.status != 404:
                raise
        wait_for(f"Rollback {name} deleted", lambda: self.get(name) is None, timeout=self.wait)

    def check_log(self, log: str) -> None:
        """No traceback, nothing logged as an error, and no unexpected exception retried (the
        handlers' "error N of M" warning, whose traceback goes to the debug log as "where:"): a
        refusal or a failed step is the Rollback's condition, not the operator's error."""
        assert "Traceback" not in log, log[-5000:]
        errors = [line for line in log.splitlines()
                  if re.match(r"\S+ \S+ (ERROR|CRITICAL) ", line)
                  or re.search(r" rewind\.handlers: rollback \S+: error \d+ of \d+", line)]
        assert not errors, errors[:20]

    def operator_writes(self, name: str, subresource: str | None) -> list[dict] | None:
        """The operator's writes (rewind's and kopf's, by its ServiceAccount) to the Rollback."""
        events = audit_writes(self.cluster, self.namespace, PLURAL, name, user_agent_prefix="",
                              subresource=subresource)
        if events is None:
            return None
        return [e for e in events if e.get("user", {}).get("username", "").startswith(
            OPERATOR_USER)]

    def check_writes(self, name: str, rb: dict) -> None:
        status = self.operator_writes(name, "status")
        main = self.operator_writes(name, None)
        if status is None:
            return          # an external cluster: no audit log to read
        s = rb["status"]
        work = len(s.get("plan", [])) + len(s.get("verification", [])) + len(s.get("notifications", []))
        note(f"status writes {len(status)}, object writes {len(main)}, plan+checks+notes {work}")
        ready = next((c for c in s.get("conditions", []) if c["type"] == "Ready"), {})
        print(f"{name}: {s['phase']} {ready.get('reason')}; {len(status)} status writes, "
              f"{len(main)} object writes, {work} steps/checks/notifications")
        assert len(status) <= 30 + 8 * work, [e["requestURI"] for e in status]
        assert len(main) <= 30 + 4 * work, [e["requestURI"] for e in main]


@pytest.fixture
def run(cluster, api_client, namespace, bed):
    return Run(cluster, api_client, namespace, bed)


@RUN
@given(spec=STEERED)
def test_every_accepted_spec_runs_or_fails_clearly(run, spec):
    run(spec)


@RUN
@given(case=mutated(STEERED))
def test_every_mutated_spec_is_refused_or_fails_clearly(run, case):
    what, spec = case
    note(f"mutation: {what}")
    run(spec)


def test_a_spec_the_server_stores_is_one_the_operator_reads(run):
    spec = {"severity": "High", "reason": "r", "dryRun": True, "application": [{"name": "web"}],
            "verification": {"http": [{"name": "a", "url": "http://127.0.0.1:1/\xa0"}]}}
    run.wait = 30       # a dry run settles in about a second
    run(spec)
