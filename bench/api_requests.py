"""Benchmark (not a test): how many requests the operator sends the API server for a rollback,
against the minimum the work needs, and how long the rollback takes against the same work done
by hand, side by side on the local control plane.

    .venv/bin/python bench/api_requests.py [--rounds 5] [--booking-rounds 3] [--replicas 3]

The API server's audit log counts the requests: the benchmark starts the control plane with its own
audit policy (bench/audit-policy-requests.yaml: every request, reads included, of two users, at
Metadata level: verb, user, user agent, URI, object, answer code). The two users are the
operator's ServiceAccount (the operator runs as `python -m rewind.cli run`, a separate process,
with the shipped ClusterRole bound in its namespaces, as in the tests) and a cluster-admin
ServiceAccount "oncall" that runs every timed kubectl command (what the person types). Nothing else
is logged: controllers, kwok, the job runner and the benchmark's own polling run as the admin user.

Two scenarios:

1. One Deployment rollback (`--rounds` times). Two identical Deployments with three real
   revisions, both settled (see benchlib.settle); then, in alternating order, each from a settled
   state: `kubectl apply` of a Rollback (toRevision: previous) + `kubectl wait --for=condition=Ready`,
   and `kubectl rollout undo` + `kubectl rollout status`. The operator's requests are counted
   from the apply until it has been quiet for 2 s (watches aside), split at Ready.

2. The booking example (`--booking-rounds` times; 0 skips it): examples/booking set up as in
   tests/operator/test_booking_end_to_end.py (release 2.3.0, its database and last night's dump,
   then 2.4.0 and its bad migration; PostgreSQL, the job runner, Alertmanager, Slack/webhook/SMTP
   receivers and the app's HTTP stand-in, all local), twice per round: once rolled back by
   applying examples/booking/rollback.yaml (timed until phase Succeeded, and until every
   notification is Sent and the report written), once by hand, the same operations as a script of
   commands with no human pauses (kubectl, pg_restore, pg_dump, psql, curl-like HTTP calls, SMTP),
   in alternating order.

The minimum each scenario needs is stated in MINIMUM below (and in bench/README.md), with why.
Per-round numbers and their spread go to stdout and bench/results/requests-<date>[-TAG].json.
(Not named requests.py: this folder comes first on sys.path, and the Kubernetes client imports
the `requests` package.)
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import logging
import os
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import yaml

from benchlib import (
    ONCALL_USER, OPERATOR_USER, REPO, AuditLog, Bed, Request, by_kind, fmt_spread, image_of,
    make_revisions, settle, source_revision, spread, tally, timed,
)

logging.getLogger("mail.log").setLevel(logging.ERROR)   # aiosmtpd warns of its own deprecated API on every AUTH

HERE = Path(__file__).resolve().parent
EXAMPLE = REPO / "examples" / "booking"
DEP_NS = "bench-dep"
BOOKING = "booking-oauth-outage"
APP = "appointmentbooking"

# What the work needs at least, with why. Writes are the goal (at most 2x); reads are reported.
MINIMUM = {
    "deployment": {
        "writes": {
            ("patch", "rollbacks/status"): 2,    # the plan and the step's intent, before the patch;
                                                 # the outcome (Succeeded, Ready) after the rollout
            ("patch", "deployments"): 1,         # the rollback itself (the template, guarded)
            ("create", "configmaps"): 1,         # the incident report
            ("create", "events"): 1,             # one Event with the outcome
        },
        "reads": {
            ("get", "deployments"): 1,           # the current template and revision
            ("list", "replicasets"): 1,          # the history
            ("watch", "deployments"): 1,         # to wake when the rollout completes
        },
        "why": "A crash-safe ledger needs the intent saved before the one side effect and the "
               "outcome after it (2 status writes: the plan and the step's intent share one); the "
               "Deployment patch; the report ConfigMap; one Event carrying the outcome. The "
               "Rollback itself arrives on the operator's standing watch (no read); the "
               "Deployment is read once, its ReplicaSets listed once, and one watch wakes the "
               "operator when the rollout completes. kopf's finalizer and progress annotations, "
               "further status writes and Events are not needed for the work.",
    },
    "booking": {
        "writes": {
            ("patch", "rollbacks/status"): 16,   # plan + first intent, then one per step (its
                                                 # outcome carries the next step's intent); 15 steps
            ("patch", "services"): 2,            # maintenance page on, and back
            ("patch", "deployments/scale"): 2,   # synthetics to 0, and back
            ("create", "jobs"): 3,               # check, backup, restore (ttlSecondsAfterFinished
                                                 # could remove them without a delete)
            ("patch", "deployments"): 1,         # the application rollback
            ("create", "configmaps"): 1,         # the report
            ("create", "events"): 1,             # the outcome
        },
        "reads": {
            ("get", "secrets"): 5,               # booking-db, ops-slack, incident-webhook,
                                                 # smtp-credentials, smtp-ca (sms: Critical only)
            ("get", "services"): 1,              # the selector to put back
            ("get", "deployments/scale"): 1,     # the replicas to put back
            ("get", "deployments"): 1,
            ("list", "replicasets"): 1,
            ("watch", "jobs"): 1,                # one watch wakes on each Job's end
            ("list", "pods"): 3,                 # each Job's termination message
            ("watch", "deployments"): 1,         # the rollout
        },
        "why": "15 steps, each recorded once (its outcome and the next step's intent in one "
               "write), plus the plan: 16 status writes; the Notifications' outbox rides on them. "
               "Each hook writes its object once on the way in and once on the way out; three "
               "Jobs; one Deployment patch; the report; one Event. Reads: each referenced object "
               "once, one watch per kind waited on, the Jobs' pods for their termination messages.",
    },
}


def total(d: dict) -> int:
    return sum(d.values())


# --- counting ----------------------------------------------------------------------------------


def summarize(reqs: list[Request], split_at: float | None = None) -> dict:
    """Counts by kind, by (kind, verb, resource), by client; and before/after `split_at`."""
    out = {"total": len(reqs), "by_kind": dict(by_kind(reqs)),
           "by_verb_resource": {f"{k}|{v}|{r}": n for (k, v, r), n in sorted(tally(reqs).items())},
           "by_client": {f"{c}|{k}": n for (c, k), n in sorted(Counter((r.client, r.kind) for r in reqs).items())},
           "failed": {f"{r.code}|{r.verb}|{r.resource}": 1 for r in reqs if r.code >= 400}}
    fails = Counter(f"{r.code} {r.verb} {r.resource}" for r in reqs if r.code >= 400)
    out["failed"] = dict(fails)
    if split_at is not None:
        before = [r for r in reqs if r.at < split_at]
        out["before_split"] = {f"{k}|{v}|{r}": n for (k, v, r), n in sorted(tally(before).items())}
    return out


def table(title: str, runs: list[dict], minimum: dict | None, split_label: str | None = None) -> str:
    """One line per (kind, verb, resource): the median count per rollback (min-max when it varied)."""
    keys = sorted({k for run in runs for k in run["by_verb_resource"]},
                  key=lambda k: ({"write": 0, "review": 1, "read": 2}.get(k.split("|")[0], 3), k))

    def cell(values: list[int]) -> str:
        s = spread([float(v) for v in values])
        med = f"{s['median']:g}"
        return med if s["min"] == s["max"] else f"{med} [{s['min']:g}-{s['max']:g}]"

    lines = [title, f"  {'kind':<7} {'verb':<7} {'resource':<28} {'per rollback':>14}"
             + (f" {split_label:>16}" if split_label else "") + (f" {'minimum':>8}" if minimum else "")]
    for k in keys:
        kind, verb, res = k.split("|")
        values = [run["by_verb_resource"].get(k, 0) for run in runs]
        line = f"  {kind:<7} {verb:<7} {res:<28} {cell(values):>14}"
        if split_label:
            line += f" {cell([run.get('before_split', {}).get(k, 0) for run in runs]):>16}"
        if minimum:
            m = minimum["writes" if kind == "write" else "reads"].get((verb, res)) if kind in ("write", "read") else None
            line += f" {m if m is not None else '-':>8}"
        lines.append(line)
    for kind in ("read", "write", "review"):
        values = [run["by_kind"].get(kind, 0) for run in runs]
        line = f"  {'all ' + kind + 's':<44} {cell(values):>14}"
        if split_label:
            line += f" {'':>16}"
        if minimum and kind in ("read", "write"):
            m = total(minimum[kind + "s"])
            line += f" {m:>8}   ({spread([float(v) for v in values])['median'] / m:.1f}x the minimum)"
        lines.append(line)
    clients = sorted({k for run in runs for k in run["by_client"]})
    lines.append("  by client: " + "; ".join(
        f"{c.replace('|', ' ')}s {cell([run['by_client'].get(c, 0) for run in runs])}" for c in clients))
    fails = sorted({k for run in runs for k in run["failed"]})
    if fails:
        lines.append("  error answers: " + "; ".join(
            f"{f} x{cell([run['failed'].get(f, 0) for run in runs])}" for f in fails))
    return "\n".join(lines)


# --- scenario 1: one Deployment rollback --------------------------------------------------------


def deployment_rounds(bed: Bed, audit: AuditLog, rounds: int, replicas: int) -> dict:
    times: dict[str, list[float]] = {"kubectl": [], "rewind": []}
    operator_runs, oncall_rewind, oncall_kubectl = [], [], []
    for r in range(rounds):
        a, b = f"kubectl-{r}", f"rewind-{r}"
        make_revisions(bed, DEP_NS, a, replicas)
        make_revisions(bed, DEP_NS, b, replicas)

        def by_kubectl():
            settle(bed, DEP_NS, [a, b])
            t0 = time.time()
            times["kubectl"].append(round(timed(lambda: (
                bed.kubectl("rollout", "undo", f"deployment/{a}", "-n", DEP_NS, as_oncall=True),
                bed.kubectl("rollout", "status", f"deployment/{a}", "-n", DEP_NS, "--timeout=120s",
                            as_oncall=True))), 3))
            oncall_kubectl.append(summarize(audit.between(ONCALL_USER, t0, time.time())))

        def by_rewind():
            settle(bed, DEP_NS, [a, b])
            t0 = time.time()
            times["rewind"].append(round(timed(lambda: (
                bed.kubectl("apply", "-f", "-", as_oncall=True, input=yaml.safe_dump({
                    "apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback",
                    "metadata": {"name": b, "namespace": DEP_NS},
                    "spec": {"severity": "High", "reason": "benchmark",
                             "application": [{"name": b, "toRevision": "previous"}]}})),
                bed.kubectl("wait", "--for=condition=Ready", f"rollback/{b}", "-n", DEP_NS,
                            "--timeout=120s", as_oncall=True))), 3))
            t_ready = time.time()
            oncall_rewind.append(summarize(audit.between(ONCALL_USER, t0, t_ready)))
            audit.quiet(OPERATOR_USER, t0)
            operator_runs.append(summarize(audit.between(OPERATOR_USER, t0), split_at=t_ready))

        for fn in ((by_kubectl, by_rewind) if r % 2 == 0 else (by_rewind, by_kubectl)):
            fn()
        settle(bed, DEP_NS, [a, b])
        for name in (a, b):
            assert image_of(bed, DEP_NS, name) == "registry.local/app:2", name
        print(f"deployment round {r + 1}: kubectl {times['kubectl'][-1]:.2f}s, rewind {times['rewind'][-1]:.2f}s; "
              f"operator: {operator_runs[-1]['by_kind']}", flush=True)
    ratios = [rw / kc for rw, kc in zip(times["rewind"], times["kubectl"])]
    return {"times": times, "time_stats": {k: spread(v) for k, v in times.items()},
            "ratio_of_medians": round(spread(times["rewind"])["median"] / spread(times["kubectl"])["median"], 3),
            "per_round_ratios": spread(ratios),
            "operator": operator_runs, "oncall_rewind": oncall_rewind, "oncall_kubectl": oncall_kubectl}


# --- scenario 2: the booking example --------------------------------------------------------------


class BookingBed:
    """PostgreSQL, the job runner, Alertmanager, the receivers and the SMTP CA, shared by all rounds."""

    def __init__(self, bed: Bed, run_dir: Path):
        from rewind_testbed.alertmanager import Alertmanager
        from rewind_testbed.certs import issue
        from rewind_testbed.jobrunner import JobRunner
        from rewind_testbed.postgres import PostgresServer, find_bindir
        from rewind_testbed.receivers import SmtpReceiver, WebhookReceiver, server_tls_context

        self.bed, self.apps = bed, []
        self.pg = PostgresServer.start(run_dir / "postgres")
        self.bindir = find_bindir()
        self.runner = JobRunner(str(bed.cp.kubeconfig), run_dir / "jobs", self.bindir).start()
        self.am = Alertmanager.start(run_dir / "alertmanager")
        self.ca = issue("Bench SMTP CA", ca=True, days=30)
        leaf = issue("localhost", self.ca, hosts=["localhost"])
        self.smtp_password = "bench-smtp-password"
        self.slack, self.incident, self.sms = WebhookReceiver(slack=True), WebhookReceiver(), WebhookReceiver()
        self.smtp = SmtpReceiver(tls_context=server_tls_context(leaf.cert_pem + self.ca.cert_pem, leaf.key_pem),
                                 credentials=("rewind", self.smtp_password))

    def tool(self, name: str) -> str:
        p = self.bindir / name
        return str(p) if p.exists() else name

    def secret(self, ns: str, name: str, data: dict[str, str | bytes]) -> None:
        self.bed.kubectl("apply", "-f", "-", input=yaml.safe_dump({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
            "data": {k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()
                     for k, v in data.items()}}))

    def apply_example(self, ns: str, file: str) -> None:
        docs = [d for d in yaml.safe_load_all((EXAMPLE / file).read_text()) if d]
        for d in docs:
            d["metadata"]["namespace"] = ns
        self.bed.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def prepare(self, ns: str, database: str):
        """The incident, as in the end-to-end test: 2.3.0 with its database and nightly dump,
        then 2.4.0 and its migration. Returns the app's HTTP stand-in."""
        from rewind_testbed.booking import BookingApp

        self.secret(ns, "google-oauth", {"client-secret": "bench-google-secret"})
        self.apply_example(ns, "app-v2.3.0.yaml")
        self.apply_example(ns, "platform.yaml")
        self.bed.kubectl("rollout", "status", f"deployment/{APP}", "-n", ns, "--timeout=120s")
        self.pg.create_database(database)
        with self.pg.connect(database) as conn:
            conn.execute((EXAMPLE / "schema.sql").read_text())
            conn.commit()
        self.secret(ns, "booking-db", {"DATABASE_URL": self.pg.dsn(database)})
        backups = self.runner.create_pvc(ns, "db-backups") / "nightly"
        backups.mkdir(parents=True, exist_ok=True)
        subprocess.run([self.tool("pg_dump"), "-Fc", f"--dbname={self.pg.dsn(database)}",
                        "-f", str(backups / f"{APP}.dump")], check=True, capture_output=True)
        self.apply_example(ns, "app-v2.4.0-bad.yaml")
        self.bed.kubectl("rollout", "status", f"deployment/{APP}", "-n", ns, "--timeout=120s")
        with self.pg.connect(database) as conn:
            conn.execute((EXAMPLE / "bad-migration.sql").read_text())
            conn.commit()
        for name, data in {"ops-slack": {"url": self.slack.url(f"/services/{ns}")},
                           "incident-webhook": {"url": self.incident.url(f"/incidents/{ns}")},
                           "sms-gateway": {"url": self.sms.url(f"/sms/{ns}")},
                           "smtp-credentials": {"username": "rewind", "password": self.smtp_password},
                           "smtp-ca": {"ca.crt": self.ca.cert_pem}}.items():
            self.secret(ns, name, data)
        app = BookingApp(str(self.bed.cp.kubeconfig), ns)
        self.apps.append(app)
        settle(self.bed, ns, [APP, "booking-synthetics", "maintenance-page"])
        return app

    def stop(self) -> None:
        for x in [*self.apps, self.slack, self.incident, self.sms, self.smtp, self.am]:
            try:
                x.stop()
            except Exception:  # noqa: BLE001 - best effort at the end
                pass
        self.runner.stop()
        self.pg.stop()


def by_rewind(bb: BookingBed, audit: AuditLog, ns: str, app) -> dict:
    from kubernetes import client, config
    from rewind_testbed.booking import localize

    manifest = localize(yaml.safe_load((EXAMPLE / "rollback.yaml").read_text()), namespace=ns,
                        app_url=app.url, alertmanager_url=bb.am.url, smtp_port=bb.smtp.port,
                        smtp_ca_secret="smtp-ca")
    for n in manifest["spec"]["notifications"]:
        if "email" in n:
            n["email"]["smtp"]["host"] = "localhost"   # the name on the benchmark's certificate
    api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(bb.bed.cp.kubeconfig)))
    t0 = time.time()
    m0 = time.monotonic()
    bb.bed.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), as_oncall=True)
    t_apply = time.monotonic() - m0
    succeeded = done = None
    while time.monotonic() - m0 < 300:
        rb = api.get_namespaced_custom_object("rewind.dev", "v1alpha1", ns, "rollbacks", BOOKING)
        st = rb.get("status") or {}
        if st.get("phase") in ("Failed", "Interrupted"):
            raise RuntimeError(f"the booking rollback in {ns} ended {st['phase']}: "
                               f"{[c for c in st.get('conditions', []) if c['type'] == 'Ready']}")
        if st.get("phase") == "Succeeded" and succeeded is None:
            succeeded, t_succeeded = time.monotonic() - m0, time.time()
        if succeeded is not None and st.get("report") and all(
                n.get("state") == "Sent" for n in st.get("notifications") or []):
            done = time.monotonic() - m0
            break
        time.sleep(0.05)
    if done is None:
        raise RuntimeError(f"the booking rollback in {ns} did not finish in 300 s")
    audit.quiet(OPERATOR_USER, t0)
    image = image_of(bb.bed, ns, APP)
    assert image.endswith(":2.3.0"), image
    return {"apply_s": round(t_apply, 3), "succeeded_s": round(succeeded, 3), "done_s": round(done, 3),
            "steps": [(s["name"], s.get("startedAt"), s.get("finishedAt")) for s in st["steps"]],
            "operator": summarize(audit.between(OPERATOR_USER, t0), split_at=t_succeeded),
            "oncall": summarize(audit.between(ONCALL_USER, t0, t0 + t_apply + 1))}


def by_hand(bb: BookingBed, audit: AuditLog, ns: str, app, database: str) -> dict:
    """The same operations as the Rollback, typed as a script: no pauses but the spec's own (three
    health checks a second apart). What a careful person does, in the seed's order."""
    import httpx

    pg = bb.pg
    backups = bb.runner.pvc_dir(ns, "db-backups")
    dump = backups / "nightly" / f"{APP}.dump"
    staging, pre = f"{database}_staging", f"{database}_pre"
    steps: list[tuple[str, float]] = []
    http = httpx.Client(timeout=5)
    stamp = dt.datetime.now(dt.timezone.utc)

    def sh(*argv: str) -> str:
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout

    def kubectl(*args: str) -> str:
        return bb.bed.kubectl(*args, "-n", ns, as_oncall=True).stdout

    def psql(db: str, *sql: str) -> str:
        return sh(bb.tool("psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", f"--dbname={pg.dsn(db)}",
                  *[a for s in sql for a in ("-c", s)])

    def notify(event: str) -> None:
        text = f"[High] Rollback {ns}/{BOOKING}: {event}. OAuth integration failure affecting >50% of users."
        http.post(bb.slack.url(f"/services/{ns}"), json={"text": text}).raise_for_status()
        http.post(bb.incident.url(f"/incidents/{ns}"), json={"event": event, "text": text}).raise_for_status()
        msg = EmailMessage()
        msg["Subject"], msg["From"] = f"[High] Rollback {ns}/{BOOKING}: {event}", "rewind@instylehairboutique.co.za"
        msg["To"] = "stakeholders@instylehairboutique.co.za"
        msg.set_content(text)
        ctx = ssl.create_default_context(cadata=bb.ca.cert_pem.decode())
        with smtplib.SMTP("localhost", bb.smtp.port, timeout=5) as s:
            s.starttls(context=ctx)
            s.login("rewind", bb.smtp_password)
            s.send_message(msg)

    def step(name: str):
        steps.append((name, time.monotonic()))

    t0 = time.time()
    m0 = time.monotonic()
    step("notify/started")
    notify("Started")
    step("maintenance/enter")
    http.post(f"{app.url}/api/maintenance/disable-bookings").raise_for_status()
    selector = json.loads(kubectl("get", "service", "booking-public", "-o", "jsonpath={.spec.selector}"))
    kubectl("patch", "service", "booking-public", "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/selector", "value": {"app.kubernetes.io/name": "maintenance-page"}}]))
    step("monitoring/suspend")
    replicas = int(kubectl("get", "deployment", "booking-synthetics", "-o", "jsonpath={.spec.replicas}"))
    kubectl("scale", "deployment", "booking-synthetics", "--replicas=0")
    silence = http.post(f"{bb.am.url}/api/v2/silences", json={
        "matchers": [{"name": "namespace", "value": ns, "isRegex": False, "isEqual": True}],
        "startsAt": stamp.isoformat(), "endsAt": (stamp + dt.timedelta(hours=1)).isoformat(),
        "createdBy": "oncall", "comment": f"rollback {ns}/{BOOKING} (by hand)"}).json()["silenceID"]
    step("database/check")
    sh(bb.tool("pg_restore"), "--list", str(dump))
    sh("sha256sum", str(dump))
    step("database/backup")
    pre_dump = backups / "pre-rollback" / f"{APP}-{int(t0)}.dump"
    pre_dump.parent.mkdir(parents=True, exist_ok=True)
    sh(bb.tool("pg_dump"), "--format=custom", f"--dbname={pg.dsn(database)}", f"--file={pre_dump}")
    sh(bb.tool("pg_restore"), "--list", str(pre_dump))
    sh("sha256sum", str(pre_dump))
    step("database/restore")
    psql("postgres", f'CREATE DATABASE "{staging}"')
    sh(bb.tool("pg_restore"), "--single-transaction", "--exit-on-error", "--no-owner",
       f"--dbname={pg.dsn(staging)}", str(dump))
    step("database/verify")
    counts = psql(staging, "SELECT (SELECT count(*) FROM appointments), (SELECT count(*) FROM users), "
                           "(SELECT count(*) FROM calendar_connections)")
    assert all(int(c) > 0 for c in counts.strip().split("|")), counts
    step("database/action")
    psql(staging, "UPDATE calendar_connections SET access_token = NULL, refresh_token = NULL, "
                  "token_expires_at = NULL WHERE provider = 'google'")
    step("database/swap")
    psql("postgres", f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false',
         f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'",
         f'ALTER DATABASE "{database}" RENAME TO "{pre}"', f'ALTER DATABASE "{staging}" RENAME TO "{database}"',
         f'ALTER DATABASE "{pre}" ALLOW_CONNECTIONS true', f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    step("deployment")
    kubectl("rollout", "undo", f"deployment/{APP}")
    kubectl("rollout", "status", f"deployment/{APP}", "--timeout=120s")
    step("verify/http")
    for i in range(3):
        if i:
            time.sleep(1)
        r = http.get(f"{app.url}/api/health")
        assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    assert "connected" in http.get(f"{app.url}/api/oauth/google/status").text
    step("verify/sql")
    assert psql(database, "SELECT count(*) FROM appointments").strip() == "400"
    assert psql(database, "SELECT count(*) FROM calendar_connections WHERE provider = 'google' "
                          "AND access_token IS NOT NULL").strip() == "0"
    step("maintenance/exit")
    kubectl("patch", "service", "booking-public", "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/selector", "value": selector}]))
    http.post(f"{app.url}/api/maintenance/enable-bookings").raise_for_status()
    step("monitoring/resume")
    kubectl("scale", "deployment", "booking-synthetics", f"--replicas={replicas}")
    http.delete(f"{bb.am.url}/api/v2/silence/{silence}").raise_for_status()
    step("notify/succeeded")
    notify("Succeeded")
    step("end")
    total_s = time.monotonic() - m0
    http.close()
    per_step = {name: round(steps[i + 1][1] - at, 3) for i, (name, at) in enumerate(steps[:-1])}
    return {"done_s": round(total_s, 3), "steps": per_step,
            "oncall": summarize(audit.between(ONCALL_USER, t0, time.time()))}


def booking_rounds(bed: Bed, bb: BookingBed, audit: AuditLog, rounds: int, prepared: list) -> dict:
    rewind_runs, hand_runs = [], []
    for r in range(rounds):
        (rw_ns, rw_db, rw_app), (hd_ns, hd_db, hd_app) = prepared[r]
        settle(bed, rw_ns, [APP, "booking-synthetics", "maintenance-page"])
        settle(bed, hd_ns, [APP, "booking-synthetics", "maintenance-page"])

        def rewind():
            settle(bed, rw_ns, [APP])
            rewind_runs.append(by_rewind(bb, audit, rw_ns, rw_app))

        def hand():
            settle(bed, hd_ns, [APP])
            hand_runs.append(by_hand(bb, audit, hd_ns, hd_app, hd_db))

        for fn in ((rewind, hand) if r % 2 == 0 else (hand, rewind)):
            fn()
        print(f"booking round {r + 1}: Rewind apply -> Succeeded {rewind_runs[-1]['succeeded_s']:.2f}s, "
              f"-> all sent {rewind_runs[-1]['done_s']:.2f}s; by hand {hand_runs[-1]['done_s']:.2f}s; "
              f"operator: {rewind_runs[-1]['operator']['by_kind']}", flush=True)
    return {"rewind": rewind_runs, "hand": hand_runs,
            "time_stats": {"rewind_succeeded": spread([x["succeeded_s"] for x in rewind_runs]),
                           "rewind_done": spread([x["done_s"] for x in rewind_runs]),
                           "hand": spread([x["done_s"] for x in hand_runs])}}


# --- main ----------------------------------------------------------------------------------------


def run(args) -> int:
    t_begin = time.time()
    run_dir = Path(tempfile.mkdtemp(prefix="rewind-bench-requests-"))
    run_dir.chmod(0o755)   # PostgreSQL runs as its own user and must reach its data directory
    print(f"work directory: {run_dir}", flush=True)
    bed = Bed.start(run_dir, audit_all=True)
    audit = AuditLog(bed.cp.audit_log)
    bb = None
    results: dict = {"date": str(dt.date.today()), "source": source_revision(),
                     "rounds": args.rounds, "booking_rounds": args.booking_rounds, "replicas": args.replicas,
                     "minimum": {k: {"writes": {f"{v}|{r}": n for (v, r), n in m["writes"].items()},
                                     "reads": {f"{v}|{r}": n for (v, r), n in m["reads"].items()},
                                     "why": m["why"]} for k, m in MINIMUM.items()}}
    try:
        bed.namespace(DEP_NS)
        prepared = []
        if args.booking_rounds:
            bb = BookingBed(bed, run_dir)
            for r in range(args.booking_rounds):
                pair = []
                for side, watched in (("rw", True), ("hand", False)):
                    ns = bed.namespace(f"booking-{side}-{r}", operator=watched)
                    db = f"booking_{side}_{r}"
                    pair.append((ns, db, bb.prepare(ns, db)))
                prepared.append(pair)
                print(f"booking round {r + 1}: prepared", flush=True)
        bed.start_operator()
        bed.wait_operator_watching(audit)
        t_start = time.time()
        results["deployment"] = dep = deployment_rounds(bed, audit, args.rounds, args.replicas)
        if args.booking_rounds:
            results["booking"] = booking_rounds(bed, bb, audit, args.booking_rounds, prepared)
        startup = [r for r in audit.between(OPERATOR_USER, 0, t_start)]
        results["operator_startup"] = summarize(startup)

        print()
        print(table(f"One Deployment rollback, {args.rounds} rounds: the operator's requests from the apply "
                    "until it is quiet (2 s)", dep["operator"], MINIMUM["deployment"], "before Ready"))
        print(f"  minimum: {MINIMUM['deployment']['why']}")
        print(table("  the person's requests, kubectl apply + kubectl wait:", dep["oncall_rewind"], None))
        print(table("  the person's requests by hand, kubectl rollout undo + rollout status:",
                    dep["oncall_kubectl"], None))
        ts = dep["time_stats"]
        print(f"  time, Rewind apply -> Ready:         {fmt_spread(ts['rewind'])}")
        print(f"  time, kubectl undo + rollout status: {fmt_spread(ts['kubectl'])}")
        print(f"  ratio of medians {dep['ratio_of_medians']:.2f}x; per round {fmt_spread(dep['per_round_ratios'], 'x')}")
        if args.booking_rounds:
            bk = results["booking"]
            print()
            print(table(f"The booking example, {args.booking_rounds} rounds: the operator's requests from the "
                        "apply until it is quiet (2 s)", [x["operator"] for x in bk["rewind"]],
                        MINIMUM["booking"], "before Succeeded"))
            print(f"  minimum: {MINIMUM['booking']['why']}")
            print(table("  the person's requests by hand (kubectl):", [x["oncall"] for x in bk["hand"]], None))
            ts = bk["time_stats"]
            print(f"  time, Rewind apply -> Succeeded:              {fmt_spread(ts['rewind_succeeded'])}")
            print(f"  time, Rewind apply -> notifications sent:     {fmt_spread(ts['rewind_done'])}")
            print(f"  time, the same operations by hand:            {fmt_spread(ts['hand'])}")
            print(f"  ratio of medians: Succeeded {ts['rewind_succeeded']['median'] / ts['hand']['median']:.2f}x, "
                  f"all sent {ts['rewind_done']['median'] / ts['hand']['median']:.2f}x")
            hand_steps = {k: spread([x["steps"][k] for x in bk["hand"]])["median"] for k in bk["hand"][0]["steps"]}
            print("  by hand, per step (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in hand_steps.items()))
        print(f"\noperator startup (before the first rollback): {results['operator_startup']['by_kind']}")
        results["loadavg_at_end"] = os.getloadavg()
        results["wall_s"] = round(time.time() - t_begin, 1)
        out = Path(args.results_dir) / f"requests-{dt.date.today()}{'-' + args.tag if args.tag else ''}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"results: {out}; audit log: {bed.cp.audit_log}")
        return 0
    finally:
        if bb:
            bb.stop()
        bed.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="Deployment rollbacks (default 5)")
    parser.add_argument("--booking-rounds", type=int, default=3, help="booking rollbacks, 0 to skip (default 3)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--tag", default="", help="appended to the results file's name")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
