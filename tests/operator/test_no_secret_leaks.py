"""The leak scan (tests/leakscan.py): a whole rollback (database, OAuth Secrets, a certificate,
the Deployment, a webhook notification) with unique canary values in every Secret it touches,
run three ways: it succeeds, it fails (verification), and the operator is SIGKILLed mid-way and
resumes. Afterwards no canary appears anywhere but in Secrets: not in any version of the
Rollback, an Event, a Job, a pod or a ConfigMap seen while it ran, not in any other object of the
namespace at the end, not in Secret annotations, not in any request body of the API server's
audit log, not in the operator's log, the Job runner's logs, what the webhook got, the
PostgreSQL server's log (every statement), or this test's own output. The scan's own test plants
canaries where it must find them, and in a Secret, where the audit log must not."""

from __future__ import annotations

import base64
import json
import secrets as pysecrets
import signal

import httpx
import pytest
from kubernetes import client

from rewind_testbed.certs import issue, pki
from rewind_testbed.receivers import WebhookReceiver
from dbhelpers import CLAIM, db_secret, make_dump
from helpers import deploy_revisions, kubectl_apply, wait_for, wait_phase
from leakscan import LeakScan, Tail, assert_no_leaks, file_sources, leaks, webhook_sources

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]
HOST = "www.instylehairboutique.co.za"
KINDS = "rollbacks,events,jobs,pods,configmaps,deployments,replicasets,persistentvolumeclaims,serviceaccounts"


CRASH_POINT = "SecretsRestore:after-write"       # one of two Secrets written, the outcome not saved


@pytest.mark.parametrize("run", ["succeeds", "fails", "crashes-and-resumes"])
def test_no_secret_value_leaves_a_secret(cluster, api_client, postgres, booking_db, job_runner, namespace,
                                         idle_operator, monkeypatch, capfd, run):
    ns, operator = namespace, idle_operator
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    canaries = {f"oauth-{i}": f"canary-{pysecrets.token_hex(12)}" for i in range(4)}
    canaries["webhook-token"] = f"canary-{pysecrets.token_hex(12)}"
    make_dump(postgres, booking_db, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    db_secret(api_client, ns, postgres.dsn(booking_db))
    canaries["db-password"] = postgres.password
    runner_log = Tail(job_runner.root_dir / "jobrunner.log")

    def secret(name, data, type_="Opaque", track=False):
        core.create_namespaced_secret(ns, {"metadata": {"name": name, "labels": {"rewind.dev/track": "true"} if track else {}},
                                           "type": type_, "data": {k: base64.b64encode(v.encode()).decode()
                                                                   for k, v in data.items()}})

    if run == "crashes-and-resumes":
        monkeypatch.setenv("REWIND_CRASH_AT", CRASH_POINT)
    operator.start()
    monkeypatch.delenv("REWIND_CRASH_AT", raising=False)
    secret("google-oauth", {"client-secret": canaries["oauth-0"]}, track=True)
    wait_for("history", lambda: core.list_namespaced_secret(ns, label_selector="rewind.dev/history-of=google-oauth").items)
    core.patch_namespaced_secret("google-oauth", ns, {"data": {"client-secret": base64.b64encode(
        canaries["oauth-1"].encode()).decode()}})
    secret("microsoft-oauth", {"client-secret": canaries["oauth-2"]})
    secret("microsoft-oauth-old", {"client-secret": canaries["oauth-3"]})
    root, inter = pki()
    cur, old = issue(HOST, inter, hosts=[HOST]), issue(HOST, inter, hosts=[HOST])
    for name, leaf in (("booking-tls", cur), ("booking-tls-old", old)):
        secret(name, {"tls.crt": (leaf.cert_pem + inter.cert_pem).decode(), "tls.key": leaf.key_pem.decode(),
                      "ca.crt": root.cert_pem.decode()}, type_="kubernetes.io/tls")
        body = leaf.key_pem.decode().splitlines()[1]        # a line of the private key itself
        canaries[f"key-{name}"] = body
    deploy_revisions(apps, ns, "web", ["registry.local/web:1", "registry.local/web:2"])
    wait_for("google revision 2", lambda: len(core.list_namespaced_secret(
        ns, label_selector="rewind.dev/history-of=google-oauth").items) == 2)
    with LeakScan(cluster, api_client, ns, postgres) as scan, WebhookReceiver() as hook:
        secret("ops-webhook", {"url": hook.url(f"/hooks/{canaries['webhook-token']}")})
        tables = ["users", "no_such_table"] if run == "fails" else ["users"]
        kubectl_apply(cluster, ns, {
            "apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback", "metadata": {"name": "everything"},
            "spec": {"severity": "Critical", "reason": "security incident",
                     "database": {"connection": {"secretRef": {"name": "booking-db", "key": "DATABASE_URL"}},
                                  "restoreFrom": {"persistentVolumeClaim": {"claimName": CLAIM,
                                                                            "path": "nightly/backup.dump"}},
                                  "verify": {"tables": tables}},
                     "secrets": [{"name": "google-oauth", "toRevision": "previous"},
                                 {"name": "microsoft-oauth", "fromSecret": "microsoft-oauth-old"}],
                     "certificates": [{"secretName": "booking-tls", "fromSecret": "booking-tls-old",
                                       "hosts": [HOST], "trust": {"caFromSecret": True}}],
                     "application": [{"name": "web"}],
                     "notifications": [{"name": "ops", "webhook": {
                         "urlSecretRef": {"name": "ops-webhook", "key": "url"}}}]}})
        if run == "crashes-and-resumes":
            code = operator.proc.wait(timeout=180)
            assert code == -signal.SIGKILL and f"crash point {CRASH_POINT} reached: SIGKILL" in operator.output(), \
                f"the operator exited with {code}, not at {CRASH_POINT}"
            operator.start()
        rb = wait_phase(api_client, ns, "everything", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
        wait_for("the end notified", lambda: len(hook.requests) >= 2, timeout=60)
    if run == "fails":
        assert rb["status"]["phase"] == "Failed", str(rb["status"])
    else:
        assert rb["status"]["phase"] == "Succeeded", str(rb["status"])
        # The two OAuth Secrets and the TLS Secret hold their earlier data, byte for byte.
        data = {s.metadata.name: s.data for s in core.list_namespaced_secret(ns).items}
        assert base64.b64decode(data["google-oauth"]["client-secret"]).decode() == canaries["oauth-0"]
        assert data["microsoft-oauth"] == data["microsoft-oauth-old"]
        assert data["booking-tls"] == data["booking-tls-old"]

    objects = cluster.kubectl("get", KINDS, "-n", ns, "-o", "json").stdout
    assert len(objects) > 1000 and "everything" in objects
    assert {kind for kind, _ in scan.versions} >= {"rollbacks", "events", "jobs", "pods"}
    # The scan can see a canary where it is allowed to be: in the Secrets themselves.
    in_secrets = cluster.kubectl("get", "secrets", "-n", ns, "-o", "json").stdout
    seen = {f.split(" in ")[0] for f in leaks(canaries, [("Secrets", in_secrets)])[0]}
    assert {"oauth-0", "oauth-3"} <= seen, seen
    out, err = capfd.readouterr()
    assert_no_leaks(canaries, scan.sources(), [
        ("objects at the end", objects),
        ("Secret annotations", json.dumps([s.metadata.annotations for s in core.list_namespaced_secret(ns).items])),
        ("operator log", operator.output()),
        ("job runner log", runner_log.text()),
        ("test output", out + err),
    ], file_sources("pod log", (job_runner.root_dir / "logs").glob(f"{ns}_*.log")),
        webhook_sources("webhook", hook))


def test_the_scan_finds_what_is_planted(cluster, api_client, rollback_crd, namespace, postgres):
    """The scan fails where it should: canaries planted in an Event message (one overwritten
    afterwards, so only the watch and the audit log saw it), a SQL statement and a webhook body are
    each found where they were put; one in a Secret is not in the audit log at all."""
    core = client.CoreV1Api(api_client)
    canaries = {name: f"canary-{pysecrets.token_hex(12)}" for name in
                ("event", "overwritten", "statement", "webhook", "secret")}
    with LeakScan(cluster, api_client, namespace, postgres) as scan, WebhookReceiver() as hook:
        core.create_namespaced_event(namespace, {
            "metadata": {"name": "planted"}, "type": "Normal", "reason": "Planted",
            "involvedObject": {"kind": "ConfigMap", "name": "planted", "namespace": namespace, "apiVersion": "v1"},
            "message": f"a leak: {canaries['event']}"})
        core.patch_namespaced_event("planted", namespace, {"message": f"another: {canaries['overwritten']}"})
        core.patch_namespaced_event("planted", namespace, {"message": "nothing to see"})
        core.create_namespaced_secret(namespace, {"metadata": {"name": "planted"},
                                                  "stringData": {"v": canaries["secret"]}})
        with postgres.connect() as conn:
            conn.execute(f"SELECT '{canaries['statement']}'")
        httpx.post(hook.url(), json={"text": canaries["webhook"]})
        wait_for("the watch saw the last message", lambda: any(
            obj.get("message") == "nothing to see" for kind, obj in list(scan.versions) if kind == "events"))

    found, count = leaks(canaries, scan.sources(), webhook_sources("webhook", hook))
    assert count > 3

    def where(label):
        return [f for f in found if f.startswith(f"{label} in ")]
    assert any(f.startswith("event in events planted") and f.endswith("field .message") for f in where("event")), found
    assert any("audit log line" in f and "requestObject.message" in f for f in where("event")), found
    assert any(f.startswith("overwritten in events planted") for f in where("overwritten")), found
    assert any("audit log line" in f for f in where("overwritten")), found
    assert any("PostgreSQL server log" in f for f in where("statement")), found
    assert any("webhook request 0 body" in f for f in where("webhook")), found
    assert where("secret") == [], found
