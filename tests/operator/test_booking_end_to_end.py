"""End to end, on the booking example: release 2.4.0 and its migration broke OAuth; the on-call
engineer applies `examples/booking/rollback.yaml` (its in-cluster addresses pointed at the local
stand-ins). The rollback runs in the maintenance window with monitoring quiet, restores the
database and the Deployment, verifies over HTTP and SQL, tells people, and writes the report.
Every external effect is asserted on the server that received it."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client

from rewind_testbed.certs import issue
from dbhelpers import pg_bin
from helpers import audit_writes, condition, kubectl_apply, rolled_out, wait_for, wait_phase
from leakscan import LeakScan, Tail, assert_no_leaks, file_sources, smtp_sources, webhook_sources
from rewind_testbed.receivers import SmtpReceiver, WebhookReceiver, server_tls_context
from rewind import incident as incident_report
from rewind_testbed.booking import BookingApp, localize

# Its workloads are examples/booking's, whose images (registry.example.com/instyle/...) no registry serves.
pytestmark = [pytest.mark.cluster, pytest.mark.postgres, pytest.mark.made_up_images]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "booking"
NAME = "booking-oauth-outage"


def _docs(file: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((EXAMPLE / file).read_text()) if d]
    for d in docs:
        d["metadata"].pop("namespace", None)
    return docs


def _secret(core, namespace: str, name: str, data: dict[str, str | bytes]) -> None:
    core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "data": {
        k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode() for k, v in data.items()}})


def _revision(apps, namespace: str, name: str, revision: str):
    d = rolled_out(apps, namespace, name)
    return d if d and d.metadata.annotations.get("deployment.kubernetes.io/revision") == revision else None


def _scalar(postgres, dbname: str, query: str):
    with postgres.connect(dbname) as conn:
        return conn.execute(query).fetchone()[0]


def test_the_booking_rollback_end_to_end(cluster, api_client, namespace, postgres, database, job_runner,
                                         alertmanager, operator, request):
    ns = namespace
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)

    # Release 2.3.0, its platform, its database with last night's backup.
    _secret(core, ns, "google-oauth", {"client-secret": "g-secret-canary-5d1e"})
    for doc in _docs("app-v2.3.0.yaml") + _docs("platform.yaml"):
        kubectl_apply(cluster, ns, doc)
    wait_for("2.3.0 rolled out", lambda: _revision(apps, ns, "appointmentbooking", "1"), timeout=120)
    with postgres.connect(database) as conn:
        conn.execute((EXAMPLE / "schema.sql").read_text())
        conn.commit()
    _secret(core, ns, "booking-db", {"DATABASE_URL": postgres.dsn(database)})
    backups = job_runner.create_pvc(ns, "db-backups") / "nightly"
    backups.mkdir(parents=True, exist_ok=True)
    subprocess.run([pg_bin("pg_dump"), "-Fc", f"--dbname={postgres.dsn(database)}",
                    "-f", str(backups / "appointmentbooking.dump")], check=True, capture_output=True)

    # Release 2.4.0 breaks it.
    for doc in _docs("app-v2.4.0-bad.yaml"):
        kubectl_apply(cluster, ns, doc)
    wait_for("2.4.0 rolled out", lambda: _revision(apps, ns, "appointmentbooking", "2"), timeout=120)
    with postgres.connect(database) as conn:
        conn.execute((EXAMPLE / "bad-migration.sql").read_text())
        conn.commit()

    # The stand-ins: the app's HTTP side, Slack, the incident webhook, the SMS gateway, SMTP.
    app = BookingApp(cluster.kubeconfig, ns)
    assert httpx.get(f"{app.url}/api/health").json()["status"] == "degraded"     # the incident
    app.calls.clear()
    ca = issue("Test SMTP CA", ca=True, days=30)
    leaf = issue("localhost", ca, hosts=["localhost"])
    with WebhookReceiver(slack=True) as slack, WebhookReceiver() as incident, WebhookReceiver() as sms, \
            SmtpReceiver(tls_context=server_tls_context(leaf.cert_pem + ca.cert_pem, leaf.key_pem),
                         credentials=("rewind", "smtp-pass-canary-77aa")) as smtp:
        _secret(core, ns, "ops-slack", {"url": slack.url("/services/T000/B000/slack-canary-91f0")})
        _secret(core, ns, "incident-webhook", {"url": incident.url("/incidents/hook-canary-3c2b")})
        _secret(core, ns, "sms-gateway", {"url": sms.url("/sms/sms-canary-0d4e")})
        _secret(core, ns, "smtp-credentials", {"username": "rewind", "password": "smtp-pass-canary-77aa"})
        _secret(core, ns, "smtp-ca", {"ca.crt": ca.cert_pem})
        manifest = localize(yaml.safe_load((EXAMPLE / "rollback.yaml").read_text()), namespace=ns,
                            app_url=app.url, alertmanager_url=alertmanager.url, smtp_port=smtp.port,
                            smtp_ca_secret="smtp-ca")
        for n in manifest["spec"]["notifications"]:
            if "email" in n:
                n["email"]["smtp"]["host"] = "localhost"   # the name on the test certificate
        scan, runner_log = LeakScan(cluster, api_client, ns, postgres), Tail(job_runner.root_dir / "jobrunner.log")
        request.addfinalizer(scan.stop)
        kubectl_apply(cluster, ns, manifest)
        rb = wait_phase(api_client, ns, NAME, {"Succeeded", "Failed", "Interrupted"}, timeout=300)
        st = rb["status"]
        assert st["phase"] == "Succeeded", (st, operator.output()[-4000:])
        rb = wait_for("the notifications sent", lambda: (lambda r: r if all(
            n["state"] == "Sent" for n in r["status"]["notifications"]) and r["status"].get("report") else None)(
            client.CustomObjectsApi(api_client).get_namespaced_custom_object("rewind.dev", "v1alpha1", ns,
                                                                             "rollbacks", NAME)), timeout=60)
        st, uid = rb["status"], rb["metadata"]["uid"]

        # The ledger: hooks around everything, the seed's order inside.
        assert [s["name"] for s in st["steps"]] == [
            "maintenance/enter", "monitoring/suspend", "database/check", "database/backup", "database/restore",
            "database/verify", "database/action/revoke-google-tokens", "database/swap",
            "deployment/appointmentbooking", "verify/http/health", "verify/http/google-oauth",
            "verify/sql/appointments-present", "verify/sql/no-google-tokens-left",
            "maintenance/exit", "monitoring/resume"]
        assert all(s["state"] == "Succeeded" for s in st["steps"]), st["steps"]
        for type_ in ("Ready", "Verified", "DatabaseRestored", "ApplicationRestored", "HooksUndone", "Notified"):
            assert condition(rb, type_)["status"] == "True", condition(rb, type_)

        # The app: 2.3.0 again, and healthy; the database: the backup's rows, Google tokens cleared.
        image = apps.read_namespaced_deployment("appointmentbooking", ns).spec.template.spec.containers[0].image
        assert image.endswith(":2.3.0")
        assert _scalar(postgres, database, "SELECT count(*) FROM appointments") == 400
        assert _scalar(postgres, database, "SELECT count(*) FROM calendar_connections "
                                           "WHERE provider = 'google' AND access_token IS NOT NULL") == 0
        assert _scalar(postgres, st["database"]["preRollbackDatabase"], "SELECT count(*) FROM appointments") == 412
        checks = {v["name"]: v for v in st["verification"]}
        assert {n for n in checks if n.startswith("verify/")} == {
            "verify/http/health", "verify/http/google-oauth", "verify/sql/appointments-present",
            "verify/sql/no-google-tokens-left"}
        assert all(v["outcome"] == "Passed" for v in checks.values())
        assert checks["verify/http/health"]["detail"].startswith("3 of 3 measurement(s), 0 failed")

        # The maintenance window, on the app: bookings off first, checks inside, bookings on last.
        posts = [p for m, p in app.calls if m == "POST"]
        assert posts == ["/api/maintenance/disable-bookings", "/api/maintenance/enable-bookings"]
        first_check = app.calls.index(("GET", "/api/health"))
        assert app.calls.index(("POST", "/api/maintenance/disable-bookings")) < first_check
        assert app.calls[-1] == ("POST", "/api/maintenance/enable-bookings")
        assert app.bookings_enabled
        # ... and on the public Service: switched to the maintenance page, then back.
        assert core.read_namespaced_service("booking-public", ns).spec.selector == {
            "app.kubernetes.io/name": "appointmentbooking"}
        patches = audit_writes(cluster, ns, "services", "booking-public")
        if patches is not None:
            assert len(patches) == 2
        # Monitoring: the synthetics back at 2 replicas, the silence created and expired.
        assert apps.read_namespaced_deployment("booking-synthetics", ns).spec.replicas == 2
        silences = [s for s in httpx.get(f"{alertmanager.url}/api/v2/silences").json() if uid in s["comment"]]
        assert [s["status"]["state"] for s in silences] == ["expired"]
        assert silences[0]["matchers"][0] == {"name": "namespace", "value": ns, "isRegex": False,
                                                   "isEqual": True}

        # People: Slack and the incident webhook heard of the start and the end; the SMS gateway
        # (Critical only) nothing; the stakeholders got two e-mails over STARTTLS with AUTH.
        assert [r.payload["text"].split(": ")[1].split(".")[0] for r in slack.delivered] == ["Started", "Succeeded"]
        assert [r.payload["event"] for r in incident.delivered] == ["Started", "Succeeded"]
        keys = {(n["channel"], n["event"]): n["key"] for n in st["notifications"]}
        assert [r.key for r in incident.delivered] == [keys[("incident-webhook", "Started")],
                                                       keys[("incident-webhook", "Succeeded")]]
        assert all(r.payload["rollback"]["uid"] == uid for r in incident.delivered)
        assert sms.requests == []
        assert [m.message["Subject"] for m in smtp.unique] == [
            f"[High] Rollback {ns}/{NAME}: Started", f"[High] Rollback {ns}/{NAME}: Succeeded"]
        assert smtp.unique[0].message["To"] == "stakeholders@instylehairboutique.co.za"
        assert "OAuth integration failure" in smtp.unique[1].message.get_content()

        # The report: in its ConfigMap, exactly what the status says; and what the CLI prints.
        def settled_report():
            fresh = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
                "rewind.dev", "v1alpha1", ns, "rollbacks", NAME)
            text = client.CoreV1Api(api_client).read_namespaced_config_map(
                fresh["status"]["report"]["configMapRef"], ns).data["report.md"]
            return text if text == incident_report.render(fresh) else None
        text = wait_for("the report of the settled status", settled_report, timeout=30)
        out = subprocess.run([sys.executable, "-m", "rewind.cli", "report", NAME, "-n", ns,
                              "--kubeconfig", str(cluster.kubeconfig)], capture_output=True, text=True, check=True)
        assert out.stdout == text
        assert f"**Duration:** {st['duration']} (target 15m0s; met)" in text
        for line in ("- [x] Maintenance mode entered", "- [x] Monitoring suspended",
                     "- [x] Application rollback executed: deployment/appointmentbooking (revision 2 -> revision 1's template)",
                     f"- [x] Database rollback: {database} restored from",
                     "- [x] Stakeholders notified: 6 of 6 notification(s) sent",
                     "- [x] Verification completed"):
            assert line in text, line
        for s in st["steps"]:
            assert f"| {s['name']} | Succeeded |" in text

        # Secrets stayed secret: nowhere the leak scan looks (tests/leakscan.py), over the whole run.
        scan.stop()
        canaries = {"slack-url": "slack-canary-91f0", "incident-url": "hook-canary-3c2b", "sms-url": "sms-canary-0d4e",
                    "smtp-password": "smtp-pass-canary-77aa", "google-secret": "g-secret-canary-5d1e",
                    "db-password": postgres.password}
        assert_no_leaks(canaries, scan.sources(), [
            ("operator log", operator.output()), ("job runner log", runner_log.text()), ("report", text),
        ], file_sources("pod log", (job_runner.root_dir / "logs").glob(f"{ns}_*.log")),
            webhook_sources("slack", slack), webhook_sources("incident webhook", incident),
            webhook_sources("sms gateway", sms), smtp_sources("smtp", smtp))
    app.stop()
