"""Rewind's end-to-end demo on the local control plane (`make demo`).

It brings up the cluster (building it the first time) and a PostgreSQL server, installs the
CRDs and admission policies, deploys the booking app's good release with its database and last
night's backup, then the bad release (and its bad migration), sets the platform team's policy,
starts the operator; the on-call engineer (alice, with her own client certificate) applies the
Rollback, it waits for the DevOps Lead's approval, bob gives it with `kubectl rewind approve`, and
the demo shows its progress live, and ends with `kubectl get rollbacks`, the Rollback's
conditions and what the database holds. `--keep` leaves everything running for a look around.

Database Jobs run for real: with no container runtime here, the test bed's Job runner stands in
for the kubelet and runs each Job pod's own command against the local PostgreSQL. The app's HTTP
side is a local stand-in that answers from the cluster's real state (healthy only with release
2.3.0); Alertmanager is the real one; Slack, the incident webhook, the SMS gateway and the SMTP
server are local receivers, and the demo shows what each one received.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rewind_testbed.alertmanager import Alertmanager
from rewind_testbed.booking import BookingApp, localize
from rewind_testbed.certs import issue
from rewind_testbed.cluster import ControlPlane, build_binaries
from rewind_testbed.install import install, wait_established
from rewind_testbed.pki import user_kubeconfig
from rewind_testbed.jobrunner import JobRunner
from rewind_testbed.postgres import PostgresServer, find_bindir
from rewind_testbed.receivers import SmtpReceiver, WebhookReceiver, server_tls_context

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NS = "booking"
NAME = "booking-oauth-outage"
DB = "appointmentbooking"
COUNTS = """SELECT (SELECT count(*) FROM appointments), (SELECT count(*) FROM users),
  (SELECT count(*) FROM calendar_connections WHERE access_token IS NOT NULL),
  (SELECT count(*) FROM appointments WHERE starts_at <> timestamptz '2026-11-30 09:00Z' + id * interval '30 min')"""


def db_summary(pg: PostgresServer, name: str) -> str:
    with pg.connect(name) as conn:
        a, u, t, moved = conn.execute(COUNTS).fetchone()
    return f"{a} appointments ({moved} with shifted times), {u} users, {t} calendar tokens"


def _get_json(url: str):
    import httpx
    return httpx.get(url, timeout=5).json()


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n\033[1m==> {text}\033[0m")


class Demo:
    def __init__(self, cp: ControlPlane, name: str = NAME):
        self.cp, self.name = cp, name

    def kubectl(self, *args: str, show: bool = True, input: str | None = None) -> str:
        if show:
            say(f"$ kubectl {' '.join(args)}")
        out = self.cp.kubectl(*args, check=False, input=input)
        if out.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        if show and out.stdout.strip():
            say(out.stdout.rstrip())
        return out.stdout

    def rollback(self) -> dict:
        return json.loads(self.kubectl("get", "rollback", self.name, "-n", NS, "-o", "json", show=False))


def watch(demo: Demo, timeout: float = 300) -> dict:
    """Prints each change of the Rollback's phase, step and step message as it happens."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        rb = demo.rollback()
        st = rb.get("status", {})
        steps = st.get("steps") or [{}]
        current = next((s for s in steps if s.get("state") not in ("Succeeded", "Skipped")), steps[-1])
        line = (st.get("phase", "Pending"), st.get("progress", "-"), current.get("name", "-"),
                current.get("state", "-"), current.get("message", ""))
        if line != last:
            say(f"  [{time.monotonic() - t0:5.1f}s] phase={line[0]:<9} step={line[1]} "
                f"{line[2]} {line[3]}: {line[4]}")
            last = line
        if st.get("phase") in ("Succeeded", "Failed", "Interrupted", "Planned"):
            return rb
        time.sleep(0.3)
    raise SystemExit("the rollback did not finish in time")


PEOPLE_ROLES = ("rewind-requester", "rewind-approver-devops-lead")


def as_user(cp: ControlPlane, kubeconfig: Path, *args: str, input: str | None = None) -> str:
    out = subprocess.run([str(cp.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
                         capture_output=True, text=True, input=input)
    if out.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    say(out.stdout.rstrip())
    return out.stdout


def wait_phase(demo: "Demo", phases: set[str], timeout: float = 120) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        rb = demo.rollback()
        if (rb.get("status") or {}).get("phase") in phases:
            return rb
        time.sleep(0.3)
    raise SystemExit(f"the rollback did not reach {phases} in time")


ARGO_NS = "argocd"


def gitops_setup(demo: "Demo") -> None:
    """Argo CD manages the booking Deployment, with automated sync and self-heal: its real
    Application CRD and object (Argo CD's controller does not run here, so nothing re-syncs; the
    tests show what a re-sync does with a stand-in controller)."""
    step("Argo CD manages the booking app (automated sync, self-heal): its Application, and the tracking id")
    demo.kubectl("apply", "--server-side", "-f", str(REPO / "testbed" / "crds" / "argocd-application.yaml"), show=False)
    wait_established(demo.cp.kubectl, "applications.argoproj.io")
    demo.kubectl("create", "namespace", ARGO_NS)
    app = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
           "metadata": {"name": "booking", "namespace": ARGO_NS},
           "spec": {"project": "default",
                    "source": {"repoURL": "https://git.example.com/instyle/booking.git", "path": "deploy",
                               "targetRevision": "main"},
                    "destination": {"server": "https://kubernetes.default.svc", "namespace": NS},
                    "syncPolicy": {"automated": {"prune": True, "selfHeal": True}}}}
    demo.kubectl("apply", "-f", "-", input=yaml.safe_dump(app))
    demo.kubectl("annotate", "deployment", "appointmentbooking", "-n", NS,
                 f"argocd.argoproj.io/tracking-id=booking:apps/Deployment:{NS}/appointmentbooking")
    # alice may suspend it herself (Rewind acts only within her rights).
    demo.kubectl("create", "role", "argocd-app-operator", "-n", ARGO_NS, "--verb=get,patch",
                 "--resource=applications.argoproj.io")
    demo.kubectl("create", "rolebinding", "alice-argocd", "-n", ARGO_NS, "--role=argocd-app-operator", "--user=alice")


def gitops_scene(demo: "Demo", rb: dict, alice: Path) -> None:
    step("Argo CD stays suspended until Git holds what was restored (never resumed silently)")
    demo.kubectl("get", "application", "booking", "-n", ARGO_NS, "-o",
                 "jsonpath={.spec.syncPolicy}{'\\n'}")
    for g in rb["status"].get("gitops") or []:
        say(f"status.gitops: {g['kind']} {g['namespace']}/{g['name']} suspended; previous: {g['previous']}")
        say(f"Git must hold: {g.get('mustChangeInGit')}")
    say(f"\n(Once Git holds the restored release:)\n$ kubectl rewind resume-sync {NAME} -n {NS}   # as alice")
    out = subprocess.run([sys.executable, "-m", "rewind.cli", "resume-sync", NAME, "-n", NS,
                          "--kubeconfig", str(alice)], capture_output=True, text=True)
    say((out.stdout + out.stderr).rstrip())
    demo.kubectl("get", "application", "booking", "-n", ARGO_NS, "-o",
                 "jsonpath={.spec.syncPolicy}{'\\n'}")


def state_of(demo: "Demo", pg: PostgresServer) -> dict:
    """What an undo must bring back exactly: the Deployment's pod template, the OAuth Secret's
    data (as a hash), and the database's rows (as checksums); never a value printed."""
    import hashlib

    dep = json.loads(demo.kubectl("get", "deployment", "appointmentbooking", "-n", NS, "-o", "json", show=False))
    secret = json.loads(demo.kubectl("get", "secret", "google-oauth", "-n", NS, "-o", "json", show=False))
    with pg.connect(DB) as conn:
        tables = {t: conn.execute(f"SELECT md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) "
                                  f"FROM {t} x").fetchone()[0]
                  for t in ("appointments", "users", "calendar_connections")}
    return {"template": dep["spec"]["template"],
            "secret": hashlib.sha256(json.dumps(secret["data"], sort_keys=True).encode()).hexdigest(),
            "tables": tables}


def undo_scene(demo: "Demo", cp: ControlPlane, pg: PostgresServer, alice: Path, bob: Path, before: dict) -> bool:
    step("It was the wrong call: alice undoes the whole rollback (kubectl rewind undo)")
    say(f"$ kubectl rewind undo {NAME} -n {NS}   # as alice")
    out = subprocess.run([sys.executable, "-m", "rewind.cli", "undo", NAME, "-n", NS, "--reason",
                          "the outage was elsewhere", "--kubeconfig", str(alice)], capture_output=True, text=True)
    say((out.stdout + out.stderr).rstrip())
    if out.returncode != 0:
        return False
    undo = f"{NAME}-undo"
    demo_undo = Demo(cp, undo)
    rb = wait_phase(demo_undo, {"AwaitingApproval", "Failed", "Succeeded"})
    if rb["status"]["phase"] == "AwaitingApproval":
        say(f"\n$ kubectl rewind approve {undo} -n {NS} --role devops-lead   # as bob")
        out = subprocess.run([sys.executable, "-m", "rewind.cli", "approve", undo, "-n", NS, "--role",
                              "devops-lead", "--kubeconfig", str(bob)], capture_output=True, text=True)
        say((out.stdout + out.stderr).rstrip())
    rb = watch(demo_undo)
    demo.kubectl("get", "rollbacks", "-n", NS)
    after = state_of(demo, pg)
    same = {k: after[k] == before[k] for k in before}
    say("\nAfter the undo, compared with before the first rollback: "
        + ", ".join(f"{k} {'identical' if v else 'DIFFERENT'}" for k, v in same.items()))
    return rb["status"]["phase"] == "Succeeded" and all(same.values())


def run(args) -> int:
    step("Building (first time only: about 11 minutes on 2 cores) and starting the local control plane")
    bin_dir = build_binaries()
    run_dir = Path(tempfile.mkdtemp(prefix="rewind-demo-"))
    run_dir.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    cp = ControlPlane.start(run_dir / "cluster", bin_dir)
    operator = pg = runner = am = app = None
    receivers: dict = {}
    demo = Demo(cp)
    try:
        pg = PostgresServer.start(run_dir / "postgres")
        runner = JobRunner(str(cp.kubeconfig), run_dir / "jobs", find_bindir()).start()
        say(f"API server {cp.server} up in {cp.started_in:.1f}s; logs in {cp.log_dir}")
        demo.kubectl("get", "nodes")

        step("Installing Rewind's CRDs and the admission policies that record who asks")
        say("$ kubectl apply -f crds/ -f manifests/admission.yaml")
        install(cp.kubectl, policy=None)
        rbac = [d for d in yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text())
                if d["kind"] == "ClusterRole" and d["metadata"]["name"] in PEOPLE_ROLES]
        demo.kubectl("apply", "-f", "-", show=False, input=yaml.safe_dump_all(rbac))
        say("$ kubectl apply -f manifests/rbac.yaml   # the people's roles: "
            + ", ".join(PEOPLE_ROLES))

        step("Deploying the booking app: release 2.3.0 (good)")
        demo.kubectl("apply", "-f", str(HERE / "namespace.yaml"))
        # A generated credential: never a value from the repository, never printed.
        demo.kubectl("create", "secret", "generic", "google-oauth", "-n", NS,
                     f"--from-literal=client-secret={secrets.token_urlsafe(24)}")
        demo.kubectl("apply", "-f", str(HERE / "app-v2.3.0.yaml"))
        demo.kubectl("rollout", "status", "deployment/appointmentbooking", "-n", NS, "--timeout=120s")
        pg.create_database(DB)
        with pg.connect(DB) as conn:
            conn.execute((HERE / "schema.sql").read_text())
            conn.commit()
        # The database's credentials go into a Secret, as the app reads them; never printed.
        demo.kubectl("create", "secret", "generic", "booking-db", "-n", NS,
                     f"--from-literal=DATABASE_URL={pg.dsn(DB)}", show=False)
        say("$ kubectl create secret generic booking-db -n booking --from-literal=DATABASE_URL=...")
        backups = runner.create_pvc(NS, "db-backups") / "nightly"
        backups.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(find_bindir() / "pg_dump"), "-Fc", f"--dbname={pg.dsn(DB)}",
                        "-f", str(backups / f"{DB}.dump")], check=True)
        say(f"Database {DB}: {db_summary(pg, DB)}; the nightly backup is on PVC db-backups "
            f"at nightly/{DB}.dump.")

        demo.kubectl("apply", "-f", str(HERE / "platform.yaml"))

        step("Who may roll back: the platform team's policy, and two people with their own certificates")
        say((HERE / "policy.yaml").read_text().rstrip())
        policy = yaml.safe_load((HERE / "policy.yaml").read_text())
        policy["spec"]["egress"] = [{"cidr": "127.0.0.0/8"}, {"cidr": "::1/128"}]
        demo.kubectl("apply", "-f", "-", show=False, input=yaml.safe_dump(policy))
        say("(applied with egress to loopback, where the demo's stand-ins listen)")
        users = run_dir / "users"
        alice = user_kubeconfig(cp.pki, cp.kubeconfig, "alice", ["oncall"], users)
        bob = user_kubeconfig(cp.pki, cp.kubeconfig, "bob", ["devops-leads"], users)
        # alice is on call: she may change the booking namespace herself (edit) and request
        # rollbacks; bob is the DevOps Lead: he may read it and approve for devops-lead.
        for binding, role, who in (("alice-edit", "edit", "alice"), ("alice-requester", "rewind-requester", "alice"),
                                   ("bob-view", "view", "bob"),
                                   ("bob-devops-lead", "rewind-approver-devops-lead", "bob")):
            demo.kubectl("create", "rolebinding", binding, f"--clusterrole={role}", f"--user={who}", "-n", NS)
        if args.gitops:
            gitops_setup(demo)

        step("Release 2.4.0 goes out and breaks OAuth sign-in")
        demo.kubectl("apply", "-f", str(HERE / "app-v2.4.0-bad.yaml"))
        demo.kubectl("rollout", "status", "deployment/appointmentbooking", "-n", NS, "--timeout=120s")
        demo.kubectl("rollout", "history", "deployment/appointmentbooking", "-n", NS)
        with pg.connect(DB) as conn:
            conn.execute((HERE / "bad-migration.sql").read_text())
            conn.commit()
        say(f"After the bad migration, {DB} holds {db_summary(pg, DB)}.")

        step("Stand-ins: the app's HTTP side, Alertmanager, Slack, webhooks, SMTP (all on loopback)")
        app = BookingApp(str(cp.kubeconfig), NS)
        say(f"GET {app.url}/api/health -> {json.dumps(_get_json(app.url + '/api/health'))}")
        am = Alertmanager.start(run_dir / "alertmanager")
        ca = issue("Demo SMTP CA", ca=True, days=30)
        leaf = issue("localhost", ca, hosts=["localhost"])
        smtp_password = secrets.token_urlsafe(16)
        receivers = {"slack": WebhookReceiver(slack=True), "incident": WebhookReceiver(), "sms": WebhookReceiver(),
                     "smtp": SmtpReceiver(tls_context=server_tls_context(leaf.cert_pem + ca.cert_pem, leaf.key_pem),
                                          credentials=("rewind", smtp_password))}
        token = secrets.token_urlsafe(12)   # the webhook URLs are secrets: never printed
        for name, data in {"ops-slack": {"url": receivers["slack"].url(f"/services/{token}")},
                           "incident-webhook": {"url": receivers["incident"].url(f"/incidents/{token}")},
                           "sms-gateway": {"url": receivers["sms"].url(f"/sms/{token}")},
                           "smtp-credentials": {"username": "rewind", "password": smtp_password},
                           "smtp-ca": {"ca.crt": ca.cert_pem.decode()}}.items():
            demo.kubectl("create", "secret", "generic", name, "-n", NS,
                         *[f"--from-literal={k}={v}" for k, v in data.items()], show=False)
        say("$ kubectl create secret generic ops-slack|incident-webhook|sms-gateway|smtp-credentials|smtp-ca ...")
        say(f"Alertmanager {am.url}; SMTP (STARTTLS, AUTH) on localhost:{receivers['smtp'].port}")

        step("Starting the Rewind operator (rewind run)")
        log = run_dir / "operator.log"
        operator = subprocess.Popen(
            [sys.executable, "-m", "rewind.cli", "run", "--namespace", NS,
             "--kubeconfig", str(cp.kubeconfig)],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        say(f"operator log: {log}")

        step("The on-call engineer applies the Rollback")
        say((HERE / "rollback.yaml").read_text().rstrip())
        manifest = localize(yaml.safe_load((HERE / "rollback.yaml").read_text()), namespace=NS,
                            app_url=app.url, alertmanager_url=am.url, smtp_port=receivers["smtp"].port,
                            smtp_ca_secret="smtp-ca")
        for n in manifest["spec"]["notifications"]:
            if "email" in n:
                n["email"]["smtp"]["host"] = "localhost"   # the name on the demo's certificate
        say("(applied with the in-cluster addresses pointed at the local stand-ins)")
        before_rollback = state_of(demo, pg)
        say("$ kubectl apply -f rollback.yaml   # as alice")
        as_user(cp, alice, "apply", "-f", "-", input=yaml.safe_dump(manifest))

        step("It waits for the DevOps Lead's approval (High severity), its deadline already running")
        rb = wait_phase(demo, {"AwaitingApproval", "Failed"})
        demo.kubectl("get", "rollbacks", "-n", NS, "-o", "wide")
        approved = next(c for c in rb["status"]["conditions"] if c["type"] == "Approved")
        say(f"Approved={approved['status']} ({approved['reason']}): {approved['message']}")
        say(f"Requested by {rb['spec']['requester']['username']} (stamped by the API server).")
        say(f"\n$ kubectl rewind approve {NAME} -n {NS} --role devops-lead   # as bob")
        out = subprocess.run([sys.executable, "-m", "rewind.cli", "approve", NAME, "-n", NS, "--role",
                              "devops-lead", "--comment", "diff checked", "--kubeconfig", str(bob)],
                             capture_output=True, text=True)
        say((out.stdout + out.stderr).rstrip())

        step("Progress, live")
        rb = watch(demo)

        step("Result")
        demo.kubectl("get", "rollbacks", "-n", NS)
        demo.kubectl("get", "rollbacks", "-n", NS, "-o", "wide")
        say("\nConditions:")
        for c in rb["status"]["conditions"]:
            say(f"  {c['type']:<20} {c['status']:<6} {c['reason']:<22} {c['message']}")
        say("\nSteps (status.steps):")
        for s in rb["status"]["steps"]:
            say(f"  {s['name']:<34} {s['state']:<10} {s.get('message', '')}")
        say("\nVerification (status.verification):")
        for v in rb["status"].get("verification", []):
            say(f"  {v['name']:<40} {v['outcome']:<7} {v.get('detail', '')}")
        database = rb["status"].get("database") or {}
        if database.get("preRollbackDatabase"):
            say(f"\nDatabase {DB} now holds {db_summary(pg, DB)}.")
            say(f"The previous {DB} is kept as {database['preRollbackDatabase']}: "
                f"{db_summary(pg, database['preRollbackDatabase'])}.")
            say(f"Pre-rollback dump: {database.get('preRollbackBackup')} "
                f"({database.get('preRollbackBackupBytes')} bytes).")
        workload = next((s for s in rb["status"]["plan"] if s["kind"] == "WorkloadRevision"), None)
        if workload:
            say("\nWhat changed in the Deployment (status.plan[].diff):")
            say(workload.get("diff") or "  (nothing)")
        demo.kubectl("get", "deployment", "appointmentbooking", "-n", NS, "-o",
                     "jsonpath={.spec.template.spec.containers[0].image}{'\\n'}")
        demo.kubectl("rollout", "history", "deployment/appointmentbooking", "-n", NS)
        demo.kubectl("get", "events", "-n", NS, "--field-selector", "involvedObject.kind=Rollback",
                     "--sort-by=.metadata.resourceVersion",
                     "-o", "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message")
        say("\nWhat the stand-ins received:")
        say(f"  app:          {', '.join(f'{m} {p}' for m, p in app.calls if m == 'POST')}; "
            f"{sum(1 for m, p in app.calls if m == 'GET')} check request(s)")
        silences = [x for x in _get_json(f"{am.url}/api/v2/silences") if rb["metadata"]["uid"] in x["comment"]]
        say(f"  Alertmanager: silence(s) {', '.join(x['id'][:8] + ' ' + x['status']['state'] for x in silences)}")
        for _ in range(60):   # the last notifications go out just after the phase is final
            if all(n["state"] != "Pending" for n in demo.rollback()["status"].get("notifications", [])):
                break
            time.sleep(0.5)
        for name in ("slack", "incident", "sms"):
            got = receivers[name].delivered
            say(f"  {name + ':':<13} {len(got)} message(s)" + "".join(
                f"\n                - {(r.payload.get('text') or r.payload.get('event', ''))[:110]}" for r in got))
        say(f"  {'e-mail:':<13} " + "; ".join(m.message["Subject"] for m in receivers["smtp"].unique))

        step("The incident report (kubectl rewind report)")
        report = subprocess.run([sys.executable, "-m", "rewind.cli", "report", NAME, "-n", NS,
                                 "--kubeconfig", str(cp.kubeconfig)], capture_output=True, text=True)
        say(report.stdout.rstrip() or report.stderr.rstrip())
        ok = rb["status"]["phase"] == "Succeeded"
        say(f"\nRollback {rb['status']['phase']} in {rb['status'].get('duration')} "
            f"(target for {rb['spec']['severity']}: 15m; within target: {rb['status'].get('withinTarget')}).")
        if args.gitops:
            gitops_scene(demo, rb, alice)
        if args.undo and ok:
            ok = undo_scene(demo, cp, pg, alice, bob, before_rollback)
        if args.keep:
            say(f"\nStill running. export KUBECONFIG={cp.kubeconfig}; export PATH={bin_dir}:$PATH")
            say("Press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0 if ok else 1
    finally:
        if operator:
            operator.terminate()
            operator.wait(timeout=15)
        for r in receivers.values():
            r.stop()
        if app:
            app.stop()
        if am:
            am.stop()
        if runner:
            runner.stop()
        if pg:
            pg.stop()
        cp.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    parser.add_argument("--gitops", action="store_true", help="Argo CD manages the app: the rollback "
                                                              "suspends its sync, resume-sync puts it back")
    parser.add_argument("--undo", action="store_true", help="then undo the whole rollback (kubectl rewind "
                                                            "undo), approved by the DevOps Lead, and compare")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
