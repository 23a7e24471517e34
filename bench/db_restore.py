"""Benchmark (not a test): a PostgreSQL restore through Rewind against a plain `pg_restore`, side by side.

    .venv/bin/python bench/db_restore.py [--size-mb 200] [--rounds 2] [--keep]

It brings up the local test bed (control plane, PostgreSQL, the Job runner that stands in for the
kubelet of database Job pods), builds a source database of at least --size-mb MB
(pg_database_size), dumps it with `pg_dump -Fc`, and then, --rounds times, in rotating order:

- pg_restore:     `createdb` + `pg_restore --single-transaction --exit-on-error --no-owner` of the
                  dump into a fresh database, as the hand-run plan's restore step does (without its
                  drop of the live database);
- rewind-full:    a Rollback with spec.database (check, pre-rollback backup, restore into staging,
                  verify, swap), timed from `kubectl apply` to phase Succeeded;
- rewind-waived:  the same with `preRollbackBackup: false` (waived), i.e. check, restore, verify, swap.

Each Rewind run gets a fresh namespace, a fresh PVC, a fresh operator process and a fresh live
database (a copy of the source plus a few rows written "after the backup point", so the swap
visibly changes something, and is checked afterwards). Everything is set up before the clock
starts and torn down after it stops. Medians and ratios are printed and written to
bench/results/db_restore-<date>.json.

Speed is measured here, as ratios against the alternative, run side by side; never as timed
assertions in tests.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes import client, config
from psycopg import sql

from rewind_testbed.cluster import ControlPlane, build_binaries
from rewind_testbed.install import PERMISSIVE, install
from rewind_testbed.jobrunner import JobRunner
from rewind_testbed.postgres import PostgresServer, find_bindir

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GROUP, VERSION, PLURAL = "rewind.dev", "v1alpha1", "rollbacks"

LIVE = "booking"                 # the live database's name; the dump must name it (check step)
SOURCE = "booking_source"        # the source, kept (renamed after the dump) as the live template
MANUAL = "booking_manual"        # the baseline's fresh database
TABLES = ["appointments", "users", "calendar_connections"]
CLAIM = "db-backups"
DUMP_PATH = "nightly/backup.dump"
SECRET = "booking-db"
ROLLBACK = "restore-db"
LATE_ROWS = 100                  # users written to live after the backup point
POLL = 0.2
TERMINAL = {"Succeeded", "Failed", "Interrupted"}
VARIANTS = ["pg_restore", "seed", "rewind-full", "rewind-waived"]
REWIND_VARIANTS = ["rewind-full", "rewind-waived"]


def say(text: str = "") -> None:
    print(text, flush=True)


def mb(n: int) -> float:
    return n / (1024 * 1024)


def pg_bin(name: str) -> str:
    return str(find_bindir() / name)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return out


def parse_ts(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- the data --------------------------------------------------------------------------------

# Rows per MB of pg_database_size, roughly (heap + indexes); the top-up loop corrects the rest.
USERS_PER_MB, APPOINTMENTS_PER_MB, CONNECTIONS_PER_MB = 1300, 3900, 1250


def db_size(pg: PostgresServer, name: str) -> int:
    with pg.connect() as conn:
        return conn.execute("SELECT pg_database_size(%s)", (name,)).fetchone()[0]


def generate(pg: PostgresServer, name: str, size_mb: int) -> dict:
    """The booking schema, filled server-side until pg_database_size >= size_mb MB."""
    t0 = time.monotonic()
    users = max(1000, USERS_PER_MB * size_mb)
    appointments = APPOINTMENTS_PER_MB * size_mb
    connections = CONNECTIONS_PER_MB * size_mb
    with pg.connect(name) as conn:
        conn.execute("""
            CREATE TABLE users (id int NOT NULL, email text NOT NULL, name text NOT NULL,
                                created_at timestamptz NOT NULL);
            CREATE TABLE appointments (id bigint NOT NULL, user_id int NOT NULL,
                                       starts_at timestamptz NOT NULL, ends_at timestamptz NOT NULL,
                                       status text NOT NULL, notes text);
            CREATE TABLE calendar_connections (id int NOT NULL, user_id int NOT NULL,
                                               provider text NOT NULL, access_token text NOT NULL,
                                               refresh_token text NOT NULL);""")
        conn.execute("""
            INSERT INTO users
            SELECT g, 'user' || g || '@example.com', md5(g::text),
                   timestamptz '2024-01-01' + g * interval '37 seconds'
            FROM generate_series(1, %s) g""", (users,))
        conn.execute("""
            INSERT INTO calendar_connections
            SELECT g, 1 + (g::bigint * 7919) %% %s, (ARRAY['google','outlook','icloud'])[1 + g %% 3],
                   md5('a' || g) || md5('b' || g), md5('r' || g)
            FROM generate_series(1, %s) g""", (users, connections))
        conn.commit()

        def add_appointments(first: int, count: int) -> None:
            conn.execute("""
                INSERT INTO appointments
                SELECT g, 1 + (g * 104729) %% %s,
                       timestamptz '2025-01-01' + g * interval '5 minutes',
                       timestamptz '2025-01-01' + g * interval '5 minutes' + interval '30 minutes',
                       (ARRAY['booked','confirmed','cancelled','done'])[1 + g %% 4],
                       md5('n' || g) || ' ' || md5('m' || g)
                FROM generate_series(%s::bigint, %s::bigint) g""", (users, first, first + count - 1))
            conn.commit()

        add_appointments(1, appointments)
        conn.execute("""
            ALTER TABLE users ADD PRIMARY KEY (id);
            ALTER TABLE appointments ADD PRIMARY KEY (id);
            ALTER TABLE calendar_connections ADD PRIMARY KEY (id);
            ALTER TABLE appointments ADD FOREIGN KEY (user_id) REFERENCES users;
            ALTER TABLE calendar_connections ADD FOREIGN KEY (user_id) REFERENCES users;
            CREATE INDEX appointments_user_starts ON appointments (user_id, starts_at);""")
        conn.commit()
        next_id = appointments + 1
        while db_size(pg, name) < size_mb * 1024 * 1024:
            chunk = max(10_000, APPOINTMENTS_PER_MB * max(1, size_mb // 10))
            add_appointments(next_id, chunk)
            next_id += chunk
            appointments += chunk
        conn.execute("ANALYZE")
        counts = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
                  for t in TABLES}
    return {"rows": counts, "generate_seconds": round(time.monotonic() - t0, 1)}


def drop_leftovers(pg: PostgresServer, keep: set[str]) -> list[str]:
    """Drops every booking* database except `keep` (the benchmark's own clean-up, never Rewind's)."""
    with pg.connect(autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'booking%' ORDER BY 1")]
        dropped = [n for n in names if n not in keep]
        for n in dropped:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(n)))
    return dropped


def _proc_cpu(pid: int, children: bool = True) -> float:
    """utime + stime (and the reaped children's, e.g. a postmaster's finished backends), seconds."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(bed: "Bed") -> dict[str, float]:
    """CPU seconds so far of what shares the two cores with the restore."""
    t = os.times()
    return {
        "postgres": _proc_cpu(bed.pg.proc.popen.pid),
        "control_plane": sum(_proc_cpu(p.popen.pid) for p in bed.cp.procs if p.popen),
        "operator": _proc_cpu(bed.operator.pid) if bed.operator else 0.0,
        "bench_process": t.user + t.system,           # the status poller and the job runner
        "client_processes": t.children_user + t.children_system,   # pg_restore, pg_dump, sh, kubectl
        "machine": _machine_busy(),
    }


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine (all cores), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """b - a; `b` taken half a second after the clock stopped, so that PostgreSQL has reaped the
    finished backends (their CPU time is counted only then). `other`: what the machine spent on
    anything else (another test run on the same cores shows up here)."""
    d = {k: round(b[k] - a[k], 2) for k in a if k != "machine"}
    d["other"] = round(max(0.0, (b["machine"] - a["machine"]) - sum(d.values())), 2)
    return d


def settle(pg: PostgresServer) -> None:
    """Before a clock starts: PostgreSQL's dirty buffers written and the kernel's dirty pages on
    disk (the set-up copies a whole database), so no run pays for the previous one's writes."""
    with pg.connect(autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()
    time.sleep(1.0)


def user_count(pg: PostgresServer, name: str) -> int:
    with pg.connect(name) as conn:
        return conn.execute("SELECT count(*) FROM users").fetchone()[0]


# --- the bed ---------------------------------------------------------------------------------


class Bed:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.cp: ControlPlane | None = None
        self.pg: PostgresServer | None = None
        self.runner: JobRunner | None = None
        self.api: client.ApiClient | None = None
        self.operator: subprocess.Popen | None = None

    def start(self) -> None:
        say("==> building (cached after the first time) and starting the local control plane")
        self.cp = ControlPlane.start(self.run_dir / "cluster", build_binaries())
        say(f"    control plane up in {self.cp.started_in:.1f}s; logs in {self.cp.log_dir}")
        self.pg = PostgresServer.start(self.run_dir / "postgres")
        say(f"    PostgreSQL on 127.0.0.1:{self.pg.port} ({find_bindir()})")
        self.api = config.new_client_from_config(config_file=str(self.cp.kubeconfig))
        self.runner = JobRunner(self.cp.kubeconfig, self.run_dir / "jobs", find_bindir()).start()
        say(f"    job runner up; pod logs in {self.runner.root_dir / 'logs'}")
        install(self.cp.kubectl, PERMISSIVE)   # CRDs, admission policies, a policy with no approvals

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        out = self.cp.kubectl(*args, check=False, input=input)
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out

    def namespace(self, name: str) -> None:
        core = client.CoreV1Api(self.api)
        core.create_namespace({"metadata": {"name": name, "labels": {
            "rewind.dev/bench": "true", "pod-security.kubernetes.io/enforce": "restricted"}}})
        deadline = time.monotonic() + 60
        while True:   # Pods (so Jobs) need the `default` ServiceAccount
            try:
                core.read_namespaced_service_account("default", name)
                return
            except client.ApiException as e:
                if e.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def start_operator(self, namespace: str, log: Path) -> None:
        """`rewind run` for this namespace; returns once its Rollback watch stream is open."""
        out = open(log, "wb")
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "rewind.cli", "run", "--namespace", namespace,
             "--kubeconfig", str(self.cp.kubeconfig)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        deadline = time.monotonic() + 60
        # Not --verbose (it logs the whole object on every retry, which is not what production
        # runs); kopf opens its watch streams right after its initial authentication.
        while "Initial authentication has finished" not in log.read_text(errors="replace"):
            if self.operator.poll() is not None:
                raise RuntimeError(f"the operator exited ({self.operator.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not start watching in 60s; see {log}")
            time.sleep(0.1)
        time.sleep(1.0)   # the watch stream's first request is on its way

    def operator_cpu_seconds(self) -> float | None:
        """User + system CPU time of the operator process so far."""
        try:
            fields = Path(f"/proc/{self.operator.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
        except (OSError, IndexError, ValueError, AttributeError):
            return None

    def stop_operator(self) -> None:
        if self.operator and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
        self.operator = None

    def rollback(self, namespace: str) -> dict:
        return client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, ROLLBACK)

    def stop(self) -> None:
        for what, fn in (("operator", self.stop_operator),
                         ("job runner", self.runner and self.runner.stop),
                         ("API client", self.api and self.api.close),
                         ("PostgreSQL", self.pg and self.pg.stop),
                         ("control plane", self.cp and self.cp.stop)):
            if fn:
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - stop the rest anyway
                    say(f"    stopping the {what} failed: {e}")


# --- the variants ----------------------------------------------------------------------------


def baseline(bed: Bed, dump: Path) -> dict:
    pg = bed.pg
    env = {**os.environ, "PGPASSWORD": pg.password}
    conn = ["--host", pg.host, "--port", str(pg.port), "--username", pg.superuser, "--no-password"]
    cpu0 = cpu_snapshot(bed)
    t0 = time.monotonic()
    run([pg_bin("createdb"), *conn, MANUAL], env=env)
    t1 = time.monotonic()
    run([pg_bin("pg_restore"), *conn, "--single-transaction", "--exit-on-error", "--no-owner",
         f"--dbname={MANUAL}", str(dump)], env=env)
    t2 = time.monotonic()
    time.sleep(0.5)
    return {"seconds": round(t2 - t0, 2), "createdb_seconds": round(t1 - t0, 2),
            "pg_restore_seconds": round(t2 - t1, 2), "cpu_seconds": cpu_delta(cpu0, cpu_snapshot(bed))}


def seed(bed: Bed, dump: Path) -> dict:
    """The seed's own procedure by hand, one after the other: `pg_dump live > file.sql` (plain SQL,
    uncompressed, as production-rollback-plan.md writes it), then createdb + pg_restore."""
    pg = bed.pg
    env = {**os.environ, "PGPASSWORD": pg.password}
    conn = ["--host", pg.host, "--port", str(pg.port), "--username", pg.superuser, "--no-password"]
    with pg.connect(autocommit=True) as c:        # the live database, outside the clock
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(LIVE), sql.Identifier(SOURCE)))
    out = bed.run_dir / "seed-pre-rollback.sql"
    settle(pg)
    cpu0 = cpu_snapshot(bed)
    t0 = time.monotonic()
    with out.open("wb") as f:
        subprocess.run([pg_bin("pg_dump"), *conn, LIVE], env=env, stdout=f, check=True)
    t1 = time.monotonic()
    run([pg_bin("createdb"), *conn, MANUAL], env=env)
    run([pg_bin("pg_restore"), *conn, "--single-transaction", "--exit-on-error", "--no-owner",
         f"--dbname={MANUAL}", str(dump)], env=env)
    t2 = time.monotonic()
    size = out.stat().st_size
    out.unlink()
    time.sleep(0.5)
    return {"seconds": round(t2 - t0, 2), "pg_dump_seconds": round(t1 - t0, 2),
            "pg_dump_bytes": size, "restore_seconds": round(t2 - t1, 2),
            "cpu_seconds": cpu_delta(cpu0, cpu_snapshot(bed))}


def rollback_manifest(waive: bool, compression: str = "Fast") -> dict:
    database = {"connection": {"secretRef": {"name": SECRET, "key": "DATABASE_URL"}},
                "restoreFrom": {"persistentVolumeClaim": {"claimName": CLAIM, "path": DUMP_PATH}},
                "verify": {"tables": TABLES}, "image": "postgres:16", "backupCompression": compression}
    if waive:
        database |= {"preRollbackBackup": False, "waiveBackupReason": "benchmark"}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollback", "metadata": {"name": ROLLBACK},
            "spec": {"severity": "High", "reason": "benchmark: restore the nightly backup",
                     "database": database}}


_RUNNER_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ pod ([^/\s]+)/(\S+): (.*)$")


def job_pod_times(runner_log: Path, namespace: str) -> dict[str, dict]:
    """From the job runner's log (millisecond timestamps): per Job step, when its pod was picked up,
    when its container started and when it exited."""
    out: dict[str, dict] = {}
    for line in runner_log.read_text(errors="replace").splitlines():
        m = _RUNNER_LINE.match(line)
        if not m or m.group(2) != namespace:
            continue
        at = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        step = re.sub(r"^rewind-[0-9a-f]{8}-(\w+)-.*$", r"\1", m.group(3))
        rec = out.setdefault(step, {})
        msg = m.group(4)
        if msg.startswith("running it on"):
            rec["picked_up"] = at
        elif msg.startswith("container pg (image"):
            rec["container_started"] = at
        elif msg.startswith("container pg: exit code"):
            rec["container_exited"] = at
    return out


def rewind(bed: Bed, dump: Path, label: str, waive: bool, compression: str = "Fast") -> dict:
    pg = bed.pg
    ns = f"bench-{label}-{secrets.token_hex(3)}"
    # --- set-up, outside the clock ---
    bed.namespace(ns)
    pvc = bed.runner.create_pvc(ns, CLAIM, size="10Gi")
    (pvc / DUMP_PATH).parent.mkdir(parents=True, exist_ok=True)
    os.link(dump, pvc / DUMP_PATH)                # the same file (and page cache) as the baseline
    with pg.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(LIVE), sql.Identifier(SOURCE)))
    with pg.connect(LIVE) as conn:                # written after the backup point
        conn.execute("INSERT INTO users SELECT g, 'late' || g || '@example.com', 'late', now() "
                     "FROM generate_series(1000000000, 1000000000 + %s - 1) g", (LATE_ROWS,))
        conn.commit()
    client.CoreV1Api(bed.api).create_namespaced_secret(ns, {
        "metadata": {"name": SECRET},
        "data": {"DATABASE_URL": base64.b64encode(pg.dsn(LIVE).encode()).decode()}})
    op_log = bed.run_dir / f"operator-{ns}.log"
    bed.start_operator(ns, op_log)
    manifest = yaml.safe_dump(rollback_manifest(waive, compression))
    settle(pg)
    cpu0 = bed.operator_cpu_seconds()
    cpu_all0 = cpu_snapshot(bed)

    # --- the clock ---
    seen: dict[str, dict[str, float]] = {}
    t0 = time.monotonic()
    wall0 = time.time()
    bed.kubectl("apply", "-n", ns, "-f", "-", input=manifest)
    applied = time.monotonic() - t0
    first_status = None
    while True:
        rb = bed.rollback(ns)
        now = time.monotonic() - t0
        st = rb.get("status") or {}
        if st and first_status is None:
            first_status = now
        for s in st.get("steps") or []:
            seen.setdefault(s["name"], {}).setdefault(s["state"], round(now, 2))
        if st.get("phase") in TERMINAL:
            break
        if now > 3600:
            raise RuntimeError(f"{ns}: the Rollback is not done after an hour; see {op_log}")
        time.sleep(POLL)
    elapsed = time.monotonic() - t0

    # --- after the clock ---
    cpu1 = bed.operator_cpu_seconds()
    time.sleep(0.5)
    cpu_all = cpu_delta(cpu_all0, cpu_snapshot(bed))
    bed.stop_operator()
    if st["phase"] != "Succeeded":
        raise RuntimeError(f"{ns}: the Rollback ended {st['phase']}: "
                           f"{json.dumps(st.get('conditions'), indent=1)[-3000:]}\n"
                           f"operator log {op_log}:\n{op_log.read_text(errors='replace')[-3000:]}")
    steps = {}
    for s in st["steps"]:
        a, b = parse_ts(s.get("startedAt")), parse_ts(s.get("finishedAt"))
        obs = seen.get(s["name"], {})
        steps[s["name"]] = {
            "ledger_seconds": (b - a).total_seconds() if a and b else None,
            "observed_running_at": obs.get("Running"), "observed_succeeded_at": obs.get("Succeeded"),
        }
    # Observed durations (0.2 s polling): from the previous step's end (or the first status write)
    # to this step's end; a step that starts and ends between two polls is still counted.
    prev = first_status
    for name, rec in steps.items():
        end = rec["observed_succeeded_at"]
        rec["observed_seconds"] = round(end - prev, 2) if end is not None and prev is not None else None
        prev = end if end is not None else prev
    pods = job_pod_times(bed.runner.log_file, ns)
    for step, rec in pods.items():
        name = f"database/{step}"
        if name in steps and "container_started" in rec and "container_exited" in rec:
            steps[name]["container_seconds"] = round(rec["container_exited"] - rec["container_started"], 2)
            steps[name]["pod_picked_up_after_apply"] = round(rec["picked_up"] - wall0, 2) if "picked_up" in rec else None
            done = steps[name]["observed_succeeded_at"]
            # Job latency: the process exited, until the poll saw the step Succeeded (the Job
            # controller marking the Job Complete, the operator's next look at it, the status write).
            steps[name]["exit_to_step_done_seconds"] = (round(done - (rec["container_exited"] - wall0), 2)
                                                        if done is not None else None)
    # The swap really happened: live holds the dump's users, the kept database the late rows too.
    d = st.get("database") or {}
    live_users, pre_users = user_count(pg, LIVE), user_count(pg, d["preRollbackDatabase"])
    result = {
        "seconds": round(elapsed, 2), "namespace": ns, "kubectl_apply_seconds": round(applied, 2),
        "first_status_at": round(first_status, 2) if first_status is not None else None,
        "last_step_to_succeeded_seconds": (round(max(0.0, elapsed - prev), 2) if prev is not None else None),
        "status_duration": st.get("duration"), "steps": steps,
        "cpu_seconds": cpu_all,
        "operator_cpu_seconds": round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None,
        "live_users_after": live_users, "pre_rollback_users_after": pre_users,
        "pre_rollback_backup_bytes": d.get("preRollbackBackupBytes"),
    }
    # --- clean-up of this run ---
    shutil.rmtree(pvc / "rewind", ignore_errors=True)   # the pre-rollback dump
    (pvc / DUMP_PATH).unlink(missing_ok=True)
    client.CoreV1Api(bed.api).delete_namespace(ns)
    return result


# --- the report ------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def summarize(runs: dict[str, list[dict]]) -> dict:
    med = {v: median([r["seconds"] for r in runs[v]]) for v in VARIANTS}
    base = med["pg_restore"]
    ratios = {v: round(med[v] / base, 2) for v in VARIANTS[1:] if base}
    to_seed = {v: round(med[v] / med["seed"], 2) for v in REWIND_VARIANTS if med["seed"]}
    # The spread of the ratios, per round (each round ran every variant once, back to back).
    per_round = {v: sorted(round(a["seconds"] / b["seconds"], 2) for a, b in zip(runs[v], runs["pg_restore"]))
                 for v in REWIND_VARIANTS}
    per_round_seed = {v: sorted(round(a["seconds"] / b["seconds"], 2) for a, b in zip(runs[v], runs["seed"]))
                      for v in REWIND_VARIANTS}
    spread = {}
    for v in VARIANTS:
        secs = sorted(r["seconds"] for r in runs[v])
        if secs:
            q = statistics.quantiles(secs, n=4) if len(secs) > 1 else [secs[0]] * 3
            spread[v] = {"min": secs[0], "q1": round(q[0], 2), "q3": round(q[2], 2), "max": secs[-1]}
    step_medians = {}
    for v in REWIND_VARIANTS:
        names = list(runs[v][0]["steps"]) if runs[v] else []
        step_medians[v] = {n: {k: median([r["steps"][n].get(k) for r in runs[v]])
                               for k in ("ledger_seconds", "observed_seconds", "container_seconds",
                                         "exit_to_step_done_seconds")}
                           for n in names}
    extra = {v: {k: median([r.get(k) for r in runs[v]])
                 for k in ("first_status_at", "last_step_to_succeeded_seconds", "operator_cpu_seconds")}
             for v in REWIND_VARIANTS}
    cpu = {v: {k: median([r["cpu_seconds"][k] for r in runs[v]]) for k in runs[v][0]["cpu_seconds"]}
           for v in VARIANTS if runs[v]}
    busy = [f"{v} round {r['round']}" for v in VARIANTS for r in runs[v]
            if r["cpu_seconds"]["other"] > 0.25 * r["seconds"]]
    return {"median_seconds": med, "ratio_to_pg_restore": ratios, "ratio_to_seed": to_seed,
            "spread_seconds": spread, "per_round_ratio_to_pg_restore": per_round,
            "per_round_ratio_to_seed": per_round_seed, "median_cpu_seconds": cpu,
            "busy_runs": busy, "step_median_seconds": step_medians,
            "rewind_median_other": extra,
            "median_pg_restore_only_seconds": median([r["pg_restore_seconds"] for r in runs["pg_restore"]])}


def print_report(meta: dict, summary: dict) -> None:
    say("\n==> result")
    say(f"source database {meta['database_mb']:.0f} MB (pg_database_size), dump {meta['dump_mb']:.0f} MB "
        f"(pg_dump -Fc), rows {meta['rows']}; {meta['rounds']} round(s), medians:")
    say(f"\n  {'variant':<38} {'median s':>9} {'IQR':>13} {'x pg_restore':>13} {'x seed':>8}")
    labels = {"pg_restore": "pg_restore (createdb + pg_restore)",
              "seed": "seed: pg_dump > sql, then pg_restore",
              "rewind-full": "Rewind, with pre-rollback backup",
              "rewind-waived": "Rewind, backup waived"}
    for v in VARIANTS:
        ratio, to_seed, sp = summary["ratio_to_pg_restore"].get(v), summary["ratio_to_seed"].get(v), \
            summary["spread_seconds"][v]
        say(f"  {labels[v]:<38} {summary['median_seconds'][v]:>9.2f} {sp['q1']:>6.2f}-{sp['q3']:<6.2f} "
            f"{(f'{ratio:.2f}x' if ratio else '1.00x'):>13} {(f'{to_seed:.2f}x' if to_seed else '-'):>8}")
    for v in REWIND_VARIANTS:
        say(f"  per round, {v} / pg_restore: {summary['per_round_ratio_to_pg_restore'][v]}; "
            f"/ seed: {summary['per_round_ratio_to_seed'][v]}")
    for v in REWIND_VARIANTS:
        say(f"\n  {labels[v]}: per step, median seconds "
            "(ledger: status.steps, 1 s resolution; observed: 0.2 s polls; in container: the Job's "
            "process; exit -> done: from the process's exit to the step seen Succeeded)")
        say(f"    {'step':<18} {'ledger':>7} {'observed':>9} {'in container':>13} {'exit -> done':>13}")
        for name, m in summary["step_median_seconds"][v].items():
            cells = [f"{m[k]:.2f}" if m[k] is not None else "-"
                     for k in ("ledger_seconds", "observed_seconds", "container_seconds",
                               "exit_to_step_done_seconds")]
            say(f"    {name:<18} {cells[0]:>7} {cells[1]:>9} {cells[2]:>13} {cells[3]:>13}")
        o = summary["rewind_median_other"][v]
        say(f"    apply -> first status write {o['first_status_at']}s; last step -> phase seen "
            f"Succeeded {o['last_step_to_succeeded_seconds']}s; operator CPU {o['operator_cpu_seconds']}s")
    say(f"\n  plain pg_restore alone (without createdb): {summary['median_pg_restore_only_seconds']}s")
    say("\n  CPU seconds spent during the timed window (median), by whom:")
    kinds = list(next(iter(summary["median_cpu_seconds"].values())))
    say(f"    {'variant':<34} " + " ".join(f"{k:>16}" for k in kinds))
    for v, c in summary["median_cpu_seconds"].items():
        say(f"    {labels[v]:<34} " + " ".join(f"{c[k]:>16.2f}" for k in kinds))
    if summary["busy_runs"]:
        say(f"\n  WARNING: the machine was busy with something else during {', '.join(summary['busy_runs'])} "
            "('other' CPU above a quarter of a core): those numbers are not clean; run again on a quiet machine.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=300, help="source database size, pg_database_size (default 200)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all four variants (default 2; 5 for the figures in bench/README.md)")
    parser.add_argument("--compress", type=int, default=0,
                        help="pg_dump --compress level of the backup (default 0: the dump is about as "
                             "large as the data, so a 200 MB database gives a dump of 200 MB or more)")
    parser.add_argument("--backup-compression", default="Fast", choices=["Fast", "None", "Default"],
                        help="the Rollback's spec.database.backupCompression (default Fast, the operator's default)")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results", help="where the JSON goes")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs) afterwards")
    args = parser.parse_args()

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)   # so that the clean-up below runs
    signal.signal(signal.SIGTERM, on_term)

    started = dt.datetime.now(dt.timezone.utc)
    run_dir = Path(tempfile.mkdtemp(prefix="rewind-bench-"))
    os.chmod(run_dir, 0o755)   # PostgreSQL runs as its own user below it
    bed = Bed(run_dir)
    ok = False
    try:
        bed.start()
        pg = bed.pg
        say(f"\n==> generating the source database ({args.size_mb} MB or more)")
        pg.create_database(LIVE)
        gen = generate(pg, LIVE, args.size_mb)
        size = db_size(pg, LIVE)
        dump = run_dir / "dumps" / DUMP_PATH
        dump.parent.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        run([pg_bin("pg_dump"), "-Fc", f"--compress={args.compress}", f"--dbname={pg.dsn(LIVE)}",
             "-f", str(dump)])
        dump_seconds = time.monotonic() - t
        with pg.connect(autocommit=True) as conn:   # the live copies are made from it, per run
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(LIVE), sql.Identifier(SOURCE)))
        meta = {"database_bytes": size, "database_mb": round(mb(size), 1),
                "dump_bytes": dump.stat().st_size, "dump_mb": round(mb(dump.stat().st_size), 1),
                "rows": gen["rows"], "generate_seconds": gen["generate_seconds"],
                "pg_dump_seconds": round(dump_seconds, 1), "rounds": args.rounds,
                "size_mb_requested": args.size_mb, "dump_compress": args.compress,
                "backup_compression": args.backup_compression}
        say(f"    {meta['database_mb']} MB in {gen['generate_seconds']}s, rows {gen['rows']}; "
            f"dump {meta['dump_mb']} MB in {dump_seconds:.1f}s")

        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for v in order:
                drop_leftovers(pg, keep={SOURCE})
                say(f"\n==> round {r + 1}/{args.rounds}: {v}")
                if v == "pg_restore":
                    settle(pg)
                    res = baseline(bed, dump)
                    say(f"    {res['seconds']:.2f}s (createdb {res['createdb_seconds']:.2f}s, "
                        f"pg_restore {res['pg_restore_seconds']:.2f}s)")
                elif v == "seed":
                    res = seed(bed, dump)
                    say(f"    {res['seconds']:.2f}s (pg_dump {res['pg_dump_seconds']:.2f}s, "
                        f"createdb + pg_restore {res['restore_seconds']:.2f}s)")
                else:
                    res = rewind(bed, dump, f"r{r + 1}-{v.split('-')[1]}", waive=(v == "rewind-waived"),
                                 compression=args.backup_compression)
                    expected = gen["rows"]["users"]
                    if res["live_users_after"] != expected or res["pre_rollback_users_after"] != expected + LATE_ROWS:
                        raise RuntimeError(f"the swap did not restore the dump: {res}")
                    say(f"    {res['seconds']:.2f}s apply -> Succeeded (status.duration {res['status_duration']}); "
                        + ", ".join(f"{n.split('/')[1]} {s['observed_seconds']}s" for n, s in res["steps"].items()))
                res["round"], res["order"] = r + 1, order.index(v)
                runs[v].append(res)
        drop_leftovers(pg, keep={SOURCE})

        summary = summarize(runs)
        print_report(meta, summary)
        bins = bed.cp.bin_dir.name
        pg_version = run([pg_bin("postgres"), "--version"]).stdout.strip()
        doc = {"benchmark": "db_restore", "started_at": started.isoformat(timespec="seconds"),
               "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "postgres": pg_version,
                           "control_plane": bins},
               "notes": "pg_restore = createdb + pg_restore --single-transaction --exit-on-error "
                        "--no-owner into a fresh database; seed = pg_dump of the live database to a "
                        "plain SQL file (as production-rollback-plan.md), then the same; Rewind = kubectl apply of the Rollback to "
                        "phase Succeeded (check, [backup,] restore into staging, verify, swap). "
                        "Job pods run as local processes (the test bed's job runner), PostgreSQL "
                        "with fsync=off.",
               "data": meta, "summary": summary, "runs": runs}
        args.results_dir.mkdir(parents=True, exist_ok=True)
        suffix = "" if args.backup_compression == "Fast" else f"-{args.backup_compression.lower()}"
        out = args.results_dir / f"db_restore-{started:%Y-%m-%d}{suffix}.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        say(f"\nresults: {out}")
        ok = True
        return 0
    finally:
        say("\n==> cleaning up")
        bed.stop()
        if args.keep or not ok:
            say(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
