"""The crash matrix (issue 10, item 7): the operator SIGKILLs itself at a named crash point
(REWIND_CRASH_AT, see rewind/crashpoints.py), at every boundary of every step kind, during a
notification and before the finalizer is removed; it is started again without the variable and
the rollback must end as if nothing had happened.

Each case is a real rollback on the test bed. The process must die by SIGKILL (returncode -9) and
say which point it reached, so a point that is never reached fails the case instead of passing
it. What the operator did is then counted where it landed, not read from its own status: the API
server's audit log (one PATCH of the Deployment, one write per Secret, one successful create per
Job name), the database (one swap: one pre-rollback copy, the ledger says swapped, the live name
holds the restored rows) and the webhook receiver (one delivery per idempotency key). Every case
also checks what the ledger in status said at the moment of the kill, so the point is where its
name says it is.

No crash point of this matrix leaves an outcome that cannot be derived from what is observable
(the restore ledger, the staging database's comment, the Deployment's restored-by marker and
template hash, the Secrets' data hashes, the outbox), so every rollback here ends Succeeded
(Ready=True), and the deleted one goes once its cleanup is done, which it does not repeat. The
Interrupted outcome for a step whose outcome cannot be known (a restore Job gone before its
outcome was recorded) is test_database_crashes.py's.

Steps that only measure (HttpCheck, SqlCheck, TlsCheck) record nothing before a measurement, so
they have an after-outcome point only.
"""

from __future__ import annotations

import base64
import os
import secrets as pysecrets

import pytest
from kubernetes import client

import httpservers
from dbhelpers import (
    CLAIM, add_rows, allows_connections, checksums, database_names, db_rollback, db_secret, ledger,
    make_dump,
)
from tlsservers import ReloadingTlsServer
from helpers import (
    audit_writes, condition, deploy_revisions, deployment, deployment_dict, died_at, events_for,
    get_rollback, kubectl_apply, restart, rollback, rolled_out, start_armed, template_of, wait_for,
    wait_phase,
)
from rewind.adapters import tls
from rewind_testbed.certs import issue, pki
from rewind_testbed.receivers import WebhookReceiver
from rewind.api.policy import EgressRule
from rewind_testbed.install import LOOPBACK_EGRESS

LOOPBACK = [EgressRule.model_validate(rule) for rule in LOOPBACK_EGRESS]

pytestmark = pytest.mark.cluster

TERMINAL = {"Succeeded", "Failed", "Interrupted"}
RB = "crash"                                  # every case's Rollback
HOST = "www.instylehairboutique.co.za"


# --- the points, by the rollback that reaches them ----------------------------------------------

WORKLOAD_POINTS = [
    "WorkloadRevision:after-intent",          # Running saved, the PATCH not sent
    "WorkloadRevision:after-write",           # the PATCH done, its outcome not saved
    "WorkloadRevision:after-outcome",
]

DATABASE_POINTS = [
    "DatabaseCheck:after-intent", "DatabaseCheck:after-job-created", "DatabaseCheck:after-outcome",
    "DatabaseBackup:after-intent", "DatabaseBackup:after-job-created", "DatabaseBackup:after-outcome",
    "DatabaseRestore:after-intent", "DatabaseRestore:after-job-created", "DatabaseRestore:after-outcome",
    "DatabaseVerify:after-intent", "DatabaseVerify:after-outcome",
    "DatabaseAction:after-intent", "DatabaseAction:after-outcome",
    "DatabaseSwap:after-intent",
    "DatabaseSwap:before-rename",             # connections blocked, nothing renamed yet
    "DatabaseSwap:after-rename",              # renames committed in PostgreSQL, not in status
    "DatabaseSwap:after-outcome",
]

SECRET_POINTS = [
    "SecretsRestore:after-intent",
    "SecretsRestore:after-write",             # the first of three Secrets written
    "SecretsRestore:after-write@2",           # two of three written
    "SecretsRestore:after-outcome",
    "ConsumersRestart:after-intent", "ConsumersRestart:after-outcome",
    "TlsVerify:after-intent", "TlsVerify:after-outcome",
]

HOOK_POINTS = [
    "MaintenanceEnter:after-intent", "MaintenanceEnter:after-outcome",
    "MonitoringSuspend:after-intent", "MonitoringSuspend:after-outcome",
    "HttpCheck:after-outcome", "SqlCheck:after-outcome", "TlsCheck:after-outcome",
    "MaintenanceExit:after-intent", "MaintenanceExit:after-outcome",
    "MonitoringResume:after-intent", "MonitoringResume:after-outcome",
]

NOTIFICATION_POINTS = [
    "Notification:before-send",               # the Started entry saved in the outbox, not sent
    "Notification:after-send",                # Started received, its outcome not saved
    "Notification:after-send@2",              # the same for Succeeded
]


@pytest.fixture(autouse=True)
def audit_log(cluster):
    """The local test bed's API server writes an audit log; without it the counts below would
    prove nothing (an external cluster has none we can read: those counts are skipped there)."""
    if os.environ.get("REWIND_TEST_EXISTING_CLUSTER") != "1":
        assert cluster.audit_log and cluster.audit_log.exists(), "the test bed's audit log is missing"


# --- crashing and restarting ------------------------------------------------------------------

def records(rb: dict, kind: str) -> list[dict]:
    st = rb.get("status") or {}
    return [r for p, r in zip(st.get("plan") or [], st.get("steps") or []) if p["kind"] == kind]


def assert_boundary(rb: dict, point: str) -> dict:
    """What the ledger said when the process died: the step of the point's kind is Succeeded at
    `after-outcome` and Running (intent saved, outcome not) at every other boundary."""
    kind, _, boundary = point.partition(":")
    recs = records(rb, kind)
    assert len(recs) == 1, f"one {kind} step expected in the plan: {rb.get('status')}"
    want = "Succeeded" if boundary.startswith("after-outcome") else "Running"
    assert recs[0]["state"] == want, f"at {point} the ledger says {recs[0]}"
    assert rb["status"]["phase"] == "Running"
    return recs[0]


def assert_ready(rb: dict, op) -> None:
    st = rb["status"]
    ready = condition(rb, "Ready") or {}
    assert st["phase"] == "Succeeded", (f"{st['phase']}: {ready.get('reason')}: {ready.get('message')}",
                                        st["steps"], op.output()[-3000:])
    assert condition(rb, "Ready")["status"] == "True"
    assert all(s["state"] in ("Succeeded", "Skipped") for s in st["steps"]), st["steps"]
    assert op.starts == 2 and op.proc.poll() is None, "the restarted operator must still run"


def verbs(writes: list[dict] | None, name: str | None = None) -> list[str] | None:
    """The verbs of audited `writes` (of `name` only, when given); None without an audit log."""
    if writes is None:
        return None
    return [w["verb"] for w in writes if name is None or w["objectRef"].get("name") == name]


def created(writes: list[dict] | None, name: str) -> int | None:
    """How many times the operator created `name` (answered 201), of its audited `writes`. A create
    answered 409 AlreadyExists is the restarted operator adopting what exists: allowed, not
    counted; any other answer fails here."""
    if writes is None:
        return None
    codes = [w["responseStatus"]["code"] for w in writes
             if w["verb"] == "create" and w["objectRef"].get("name") == name]
    assert set(codes) <= {201, 409}, (name, codes)
    return codes.count(201)


def _secret(api_client, namespace: str, name: str, data: dict[str, str], **meta) -> None:
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
        "metadata": {"name": name, **meta},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def _gone(read) -> bool:
    try:
        read()
        return False
    except client.ApiException as e:
        return e.status == 404


# --- workloads --------------------------------------------------------------------------------

IMAGES = ["registry.local/booking:1.0", "registry.local/booking:1.1-bad"]


@pytest.mark.parametrize("point", WORKLOAD_POINTS)
def test_workload_revision(point, cluster, api_client, namespace, idle_operator):
    op = start_armed(idle_operator, point)
    apps = client.AppsV1Api(api_client)
    rs = deploy_revisions(apps, namespace, "web", IMAGES)
    kubectl_apply(cluster, namespace, rollback(RB, [{"name": "web"}]))
    died_at(op, point)

    assert_boundary(get_rollback(api_client, namespace, RB), point)
    written = deployment_dict(apps, namespace, "web")["spec"]["template"] == template_of(rs[1])
    assert written == (point != "WorkloadRevision:after-intent"), "the write happened where the point says"

    restart(op)
    rb = wait_phase(api_client, namespace, RB, TERMINAL, timeout=120)
    assert_ready(rb, op)
    assert verbs(audit_writes(cluster, namespace, "deployments", "web")) == ["patch"]
    d = deployment_dict(apps, namespace, "web")
    assert d["spec"]["template"] == template_of(rs[1])
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert rolled_out(apps, namespace, "web")
    step = records(rb, "WorkloadRevision")[0]
    assert step["attempts"] == 1 and step["restoredRevision"] == 3


# --- the database -----------------------------------------------------------------------------

ACTION = {"name": "revoke-google", "action": "ClearOAuthTokens", "columns": ["access_token"],
          "where": [{"column": "provider", "equals": "google"}]}




def _job_names(uid: str) -> dict[str, str]:
    return {what: f"rewind-{uid.replace('-', '')[:8]}-{what}" for what in ("check", "backup", "restore")}


def _job_exists(api_client, ns: str, name: str) -> bool:
    return not _gone(lambda: client.BatchV1Api(api_client).read_namespaced_job(name, ns))


def _tokens(postgres, dbname: str) -> tuple[int, int]:
    with postgres.connect(dbname) as conn:
        return conn.execute("SELECT count(*), count(access_token) FROM calendar_connections").fetchone()


@pytest.mark.postgres
@pytest.mark.parametrize("point", DATABASE_POINTS)
def test_database(point, cluster, api_client, postgres, booking_db, job_runner, restricted, idle_operator):
    ns, live = restricted, booking_db
    op = start_armed(idle_operator, point)
    make_dump(postgres, live, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    at_backup = checksums(postgres, live)
    add_rows(postgres, live, 1000, 7)                   # written after the backup point
    before = checksums(postgres, live)
    db_secret(api_client, ns, postgres.dsn(live))
    kubectl_apply(cluster, ns, db_rollback(RB, afterRestore=[ACTION]))
    died_at(op, point)

    mid = get_rollback(api_client, ns, RB)
    uid = mid["metadata"]["uid"]
    u8 = uid.replace("-", "")[:8]
    jobs = _job_names(uid)
    assert_boundary(mid, point)
    kind, _, boundary = point.partition(":")
    if boundary == "after-job-created":
        what = kind.removeprefix("Database").lower()
        assert _job_exists(api_client, ns, jobs[what])
        if kind == "DatabaseRestore":
            assert ledger(postgres, uid, "restore") == "claimed"      # the fence's next move not made
    if point == "DatabaseSwap:before-rename":
        assert ledger(postgres, uid, "swap") == "swapping"
        assert live in database_names(postgres) and not allows_connections(postgres, live)
        assert not [n for n in database_names(postgres) if f"_pre_{u8}" in n]
    if point == "DatabaseSwap:after-rename":
        assert ledger(postgres, uid, "swap") == "swapped"

    restart(op)
    rb = wait_phase(api_client, ns, RB, TERMINAL, timeout=180)
    assert_ready(rb, op)
    # One swap: the live name holds the backup's rows (tokens revoked), one pre-rollback copy
    # holds what was live, the ledger says so, and both accept connections.
    pre = rb["status"]["database"]["preRollbackDatabase"]
    names = database_names(postgres)
    assert [n for n in names if u8 in n] == [pre], names
    live_now = checksums(postgres, live)
    assert {t: live_now[t] for t in ("users", "appointments")} == {t: at_backup[t] for t in ("users", "appointments")}
    assert _tokens(postgres, live) == (50, 0)
    assert checksums(postgres, pre) == before
    assert allows_connections(postgres, live) and allows_connections(postgres, pre)
    assert ledger(postgres, uid, "restore") == "restored"
    assert ledger(postgres, uid, "swap") == "swapped"
    # One Job per step: each name created once (a 409 after it is an adoption), its pod run once.
    job_writes = audit_writes(cluster, ns, "jobs")
    for what, name in jobs.items():
        assert created(job_writes, name) == 1, (what, job_writes)
        runs = sorted((job_runner.root_dir / "logs").glob(f"{ns}_{name}-*"))
        assert len(runs) == 1, (what, runs)
    assert [r["name"] for r in rb["status"]["steps"]] == [
        "database/check", "database/backup", "database/restore", "database/verify",
        "database/action/revoke-google", "database/swap"]
    # Jobs are deleted once their outcome is recorded.
    left = lambda: sorted(j.metadata.name for j in client.BatchV1Api(api_client).list_namespaced_job(ns).items  # noqa: E731
                          if j.metadata.deletion_timestamp is None)
    wait_for("the database Jobs deleted", lambda: not left(), timeout=5)


# --- Secrets, their consumers and a served certificate ---------------------------------------

def _tls_data(leaf, inter, root) -> dict[str, str]:
    return {"tls.crt": base64.b64encode(leaf.cert_pem + inter.cert_pem).decode(),
            "tls.key": base64.b64encode(leaf.key_pem).decode(),
            "ca.crt": base64.b64encode(root.cert_pem).decode()}


def _history(core, ns: str, name: str) -> list[int]:
    return sorted(int(c.metadata.labels["rewind.dev/revision"]) for c in core.list_namespaced_secret(
        ns, label_selector=f"rewind.dev/history-of={name}").items)


def _data(core, ns: str, name: str) -> dict:
    return core.read_namespaced_secret(name, ns).data


@pytest.mark.parametrize("point", SECRET_POINTS)
def test_secrets(point, cluster, api_client, namespace, idle_operator, tmp_path):
    ns = namespace
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    op = start_armed(idle_operator, point)        # it records the tracked Secrets' history
    track = {"labels": {"rewind.dev/track": "true"}}
    google_old = {"client-id": "booking-web", "client-secret": f"old-{pysecrets.token_hex(8)}"}
    _secret(api_client, ns, "google-oauth", google_old, **track)
    wait_for("google-oauth revision 1", lambda: _history(core, ns, "google-oauth") == [1], timeout=60)
    core.patch_namespaced_secret("google-oauth", ns, {"data": {
        "client-secret": base64.b64encode(f"new-{pysecrets.token_hex(8)}".encode()).decode()}})
    _secret(api_client, ns, "microsoft-oauth", {"client-id": "booking-ms", "client-secret": "new"})
    _secret(api_client, ns, "microsoft-oauth-2026-11-20", {"client-id": "booking-ms", "client-secret": "old"})
    root, inter = pki()
    good, bad = issue(HOST, inter, hosts=[HOST]), issue("staging.example.org", inter, hosts=["staging.example.org"])
    core.create_namespaced_secret(ns, {"metadata": {"name": "booking-tls", **track}, "type": "kubernetes.io/tls",
                                       "data": _tls_data(good, inter, root)})
    wait_for("booking-tls revision 1", lambda: _history(core, ns, "booking-tls") == [1], timeout=60)
    core.patch_namespaced_secret("booking-tls", ns, {"data": _tls_data(bad, inter, root)})
    # A consumer of the OAuth Secret, restarted after the restore.
    api = deployment("api", "registry.local/api:1")
    api["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "GOOGLE_CLIENT_SECRET", "valueFrom": {
        "secretKeyRef": {"name": "google-oauth", "key": "client-secret"}}}]
    apps.create_namespaced_deployment(ns, api)
    wait_for("api rolled out", lambda: rolled_out(apps, ns, "api"))
    wait_for("the history of both changes", lambda: _history(core, ns, "google-oauth") == [1, 2]
             and _history(core, ns, "booking-tls") == [1, 2], timeout=60)
    want = {"google-oauth": _data(core, ns, "google-oauth.rewind.1"),
            "microsoft-oauth": _data(core, ns, "microsoft-oauth-2026-11-20"),
            "booking-tls": _data(core, ns, "booking-tls.rewind.1")}
    server = ReloadingTlsServer(core, ns, "booking-tls", tmp_path)
    try:
        kubectl_apply(cluster, ns, {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback", "metadata": {"name": RB},
                                    "spec": {"severity": "High", "reason": "OAuth credential rotation broke sign-in",
                                             "restartConsumers": True,
                                             "secrets": [{"name": "google-oauth", "toRevision": "previous"},
                                                         {"name": "microsoft-oauth",
                                                          "fromSecret": "microsoft-oauth-2026-11-20"}],
                                             "certificates": [{"secretName": "booking-tls", "toRevision": "previous", "trust": {"caFromSecret": True},
                                                               "hosts": [HOST], "verify": {
                                                                   "host": "127.0.0.1", "port": server.port,
                                                                   "serverName": HOST, "timeoutSeconds": 30}}]}})
        died_at(op, point)
        mid = get_rollback(api_client, ns, RB)
        assert_boundary(mid, point)
        if point.startswith("SecretsRestore:after-write"):
            n = int(point.partition("@")[2] or 1)
            assert [_data(core, ns, s) == want[s] for s in want] == [True] * n + [False] * (3 - n)

        restart(op)
        rb = wait_phase(api_client, ns, RB, TERMINAL, timeout=120)
        assert_ready(rb, op)
        assert [r["name"] for r in rb["status"]["steps"]] == [
            "secrets", "restart-consumers", "certificate/booking-tls/served"]
        # One write per Secret (a JSON patch guarded by resourceVersion); the data byte for byte.
        secret_writes = audit_writes(cluster, ns, "secrets")
        for name, data in want.items():
            assert verbs(secret_writes, name) == ["patch"], (name, verbs(secret_writes, name))
            assert _data(core, ns, name) == data, name
        # The consumer restarted once, and rolled out.
        assert verbs(audit_writes(cluster, ns, "deployments", "api")) == ["patch"]
        assert rolled_out(apps, ns, "api")
        # The server serves the restored certificate, and the step saw it.
        assert tls.fingerprint(tls.served("127.0.0.1", server.port, HOST, rules=LOOPBACK)) == tls.fingerprint(good.cert)
        served = next(v for v in rb["status"]["verification"] if v["kind"] == "TLS")
        assert served["outcome"] == "Passed" and tls.fingerprint(good.cert)[:16] in served["detail"]
    finally:
        server.close()


# --- maintenance, monitoring and checks ------------------------------------------------------

@pytest.fixture(scope="module")
def health():
    server, url = httpservers.start()
    yield url
    server.shutdown()


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    """An HTTPS server with a certificate for www.booking.test; yields (port, fingerprint)."""
    d = tmp_path_factory.mktemp("https")
    ca = issue("Test CA", ca=True, days=30)
    leaf = issue("www.booking.test", ca, hosts=["www.booking.test"], days=60)
    (d / "tls.crt").write_bytes(leaf.cert_pem + ca.cert_pem)
    (d / "tls.key").write_bytes(leaf.key_pem)
    server, url = httpservers.start(str(d / "tls.crt"), str(d / "tls.key"))
    yield int(url.rsplit(":", 1)[1]), tls.fingerprint(leaf.cert)
    server.shutdown()


@pytest.fixture
def hooks_server():
    with WebhookReceiver() as r:
        yield r


def _hooks_bed(api_client, namespace):
    """web (2 revisions) behind Service web, and an alert checker with 2 replicas."""
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, deployment("alert-checker", "registry.local/checker:1"))
    core.create_namespaced_service(namespace, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80}]}})
    rs = deploy_revisions(apps, namespace, "web", ["registry.local/web:1", "registry.local/web:2"])
    wait_for("alert-checker", lambda: rolled_out(apps, namespace, "alert-checker"))
    return rs


def _hooks(hooks_server, alertmanager) -> dict:
    return {
        "maintenance": {"http": {"enter": {"url": hooks_server.url("/maintenance/enter")},
                                 "exit": {"urlSecretRef": {"name": "maintenance-exit", "key": "url"}}},
                        "service": {"name": "web", "selector": {"app": "maintenance-page"}}},
        "monitoring": {"scaleDown": [{"name": "alert-checker"}],
                       "alertmanager": {"url": alertmanager.url, "matchers": [{"name": "team", "value": "booking"}]}},
    }


def _silences(alertmanager, namespace):
    import httpx
    return [s for s in httpx.get(f"{alertmanager.url}/api/v2/silences").json()
            if any(m["value"] == namespace for m in s["matchers"])]


def _assert_hooks_undone(cluster, api_client, namespace, hooks_server, alertmanager):
    """Entered once and left once: each hook call received once under one key, the Service
    switched and switched back, the checker scaled down and back, one silence, expired."""
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    calls = hooks_server.requests
    assert [r.path for r in calls] == ["/maintenance/enter", "/maintenance/exit"], calls
    assert len({r.key for r in calls}) == 2 and all(r.key for r in calls)
    assert core.read_namespaced_service("web", namespace).spec.selector == {"app": "web"}
    assert verbs(audit_writes(cluster, namespace, "services", "web")) == ["patch", "patch"]
    assert apps.read_namespaced_deployment("alert-checker", namespace).spec.replicas == 2
    assert verbs(audit_writes(cluster, namespace, "deployments", "alert-checker", subresource="scale")) == [
        "patch", "patch"]
    assert [s["status"]["state"] for s in _silences(alertmanager, namespace)] == ["expired"]


@pytest.mark.postgres
@pytest.mark.parametrize("point", HOOK_POINTS)
def test_hooks_and_checks(point, cluster, api_client, namespace, idle_operator, postgres, alertmanager,
                          hooks_server, health, https_server):
    ns = namespace
    op = start_armed(idle_operator, point)
    rs = _hooks_bed(api_client, ns)
    _secret(api_client, ns, "maintenance-exit", {"url": hooks_server.url("/maintenance/exit")})
    _secret(api_client, ns, "checks-db", {"url": postgres.dsn("postgres")})
    tls_port, fingerprint = https_server
    kubectl_apply(cluster, ns, rollback(RB, [{"name": "web"}], **_hooks(hooks_server, alertmanager), verification={
        "http": [{"name": "health", "url": f"{health}/api/health"}],
        "sql": [{"name": "alive", "connection": {"secretRef": {"name": "checks-db", "key": "url"}},
                 "query": "SELECT 1", "equals": "1"}],
        "tls": [{"name": "served", "host": "127.0.0.1", "port": tls_port, "serverName": "www.booking.test",
                 "fingerprintSha256": fingerprint}]}))
    died_at(op, point)
    assert_boundary(get_rollback(api_client, ns, RB), point)

    restart(op)
    rb = wait_phase(api_client, ns, RB, TERMINAL, timeout=120)
    assert_ready(rb, op)
    assert [r["name"] for r in rb["status"]["steps"]] == [
        "maintenance/enter", "monitoring/suspend", "deployment/web", "verify/http/health", "verify/sql/alive",
        "verify/tls/served", "maintenance/exit", "monitoring/resume"]
    assert {v["name"]: v["outcome"] for v in rb["status"]["verification"]} == {
        "verify/http/health": "Passed", "verify/sql/alive": "Passed", "verify/tls/served": "Passed"}
    assert condition(rb, "HooksUndone")["status"] == "True"
    _assert_hooks_undone(cluster, api_client, ns, hooks_server, alertmanager)
    assert verbs(audit_writes(cluster, ns, "deployments", "web")) == ["patch"]
    assert deployment_dict(client.AppsV1Api(api_client), ns, "web")["spec"]["template"] == template_of(rs[1])


# --- notifications ----------------------------------------------------------------------------

@pytest.mark.parametrize("point", NOTIFICATION_POINTS)
def test_notification(point, cluster, api_client, namespace, idle_operator):
    ns = namespace
    with WebhookReceiver() as ops:
        op = start_armed(idle_operator, point)
        deploy_revisions(client.AppsV1Api(api_client), ns, "web", IMAGES)
        _secret(api_client, ns, "ops-webhook", {"url": ops.url("/events")})
        kubectl_apply(cluster, ns, rollback(RB, [{"name": "web"}], notifications=[
            {"name": "ops", "webhook": {"urlSecretRef": {"name": "ops-webhook", "key": "url"}}}]))
        died_at(op, point)
        killed = "Succeeded" if point.endswith("@2") else "Started"
        mid = get_rollback(api_client, ns, RB)
        entry = next(n for n in mid["status"]["notifications"] if n["event"] == killed)
        # Claimed before the send: the attempt counted and the entry leased, in a saved write.
        assert entry["state"] == "Pending" and entry["attempts"] == 1 and entry["nextAttemptAt"], entry
        received = [r for r in ops.requests if r.payload["event"] == killed]
        assert len(received) == (0 if point == "Notification:before-send" else 1), received

        restart(op)
        rb = wait_for("the rollback done and told", lambda: (lambda r: r if r.get("status", {}).get("phase") in TERMINAL
                      and r["status"].get("notifications")
                      and all(n["state"] != "Pending" for n in r["status"]["notifications"]) else None)(
            get_rollback(api_client, ns, RB)), timeout=120)
        assert_ready(rb, op)
        sent = {n["event"]: n for n in rb["status"]["notifications"]}
        assert set(sent) == {"Started", "Succeeded"} and all(n["state"] == "Sent" for n in sent.values()), sent
        # The claim cut off by the kill is counted; the entry went out again once its lease ran out.
        assert {e: n["attempts"] for e, n in sent.items()} == {
            "Started": 2 if killed == "Started" else 1, "Succeeded": 2 if killed == "Succeeded" else 1}
        # One delivery per idempotency key: every request of an event carries its entry's key, and
        # a receiver that drops repeats acted on each event once. Only the send cut off by the kill
        # went out twice.
        for event, n in sent.items():
            got = [r for r in ops.requests if r.payload["event"] == event]
            assert {r.key for r in got} == {n["key"]}, (event, got)
            assert len(got) == (2 if event == killed and point != "Notification:before-send" else 1), (event, got)
        assert sorted(r.payload["event"] for r in ops.delivered) == ["Started", "Succeeded"]
        assert verbs(audit_writes(cluster, ns, "deployments", "web")) == ["patch"]


# --- deletion ---------------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["Delete:before-finalizer-removed"])
def test_delete_of_a_running_rollback(point, cluster, api_client, namespace, idle_operator, alertmanager,
                                      hooks_server, health):
    ns = namespace
    crd = client.CustomObjectsApi(api_client)
    op = start_armed(idle_operator, point)
    _hooks_bed(api_client, ns)
    _secret(api_client, ns, "maintenance-exit", {"url": hooks_server.url("/maintenance/exit")})
    kubectl_apply(cluster, ns, rollback(RB, [{"name": "web"}], **_hooks(hooks_server, alertmanager), verification={
        "http": [{"name": "health", "url": f"{health}/api/health", "count": 60, "intervalSeconds": 1}]}))
    wait_for("the checks running", lambda: any(
        s["name"] == "verify/http/health" and s["state"] == "Running"
        for s in get_rollback(api_client, ns, RB).get("status", {}).get("steps", [])), timeout=90)
    crd.delete_namespaced_custom_object("rewind.dev", "v1alpha1", ns, "rollbacks", RB)
    died_at(op, point)

    # Killed with the cleanup done and recorded, the finalizer still holding the Rollback.
    mid = get_rollback(api_client, ns, RB)
    assert mid["metadata"].get("deletionTimestamp") and "rewind.dev/finalizer" in mid["metadata"]["finalizers"]
    # The check it was running is Interrupted (its target unchanged by it), the rest not run.
    assert mid["status"]["phase"] == "Interrupted" and condition(mid, "Ready")["reason"] == "Deleted", mid["status"]
    check = next(r for r in mid["status"]["steps"] if r["name"] == "verify/http/health")
    assert check["state"] == "Interrupted" and check["reason"] == "Deleted", check
    assert [r.path for r in hooks_server.requests] == ["/maintenance/enter", "/maintenance/exit"]

    restart(op)
    wait_for("the Rollback gone", lambda: _gone(lambda: get_rollback(api_client, ns, RB)), timeout=60)
    assert op.proc.poll() is None
    _assert_hooks_undone(cluster, api_client, ns, hooks_server, alertmanager)
    reasons = [e.reason for e in events_for(api_client, ns, RB)]
    assert reasons.count("Deleted") == 1, reasons
