"""Smoke tests proving the job runner is real: database Job pods run as local processes against the
real PostgreSQL, write real files "on a PVC", and the real Job controller completes or fails their
Jobs from the pod status the runner reports. kwok still runs every other pod."""

from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest
from kubernetes import client

from helpers import wait_for
from rewind_testbed.postgres import find_bindir

pytestmark = [pytest.mark.cluster, pytest.mark.postgres, pytest.mark.test_bed_only]

LABELS = {"rewind.dev/component": "database-job"}
SECRET = "db-credentials"
DATABASE_URL = {"name": "DATABASE_URL",
                "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "DATABASE_URL"}}}
CLAIM = "db-backups"
BACKUPS = {"name": "backups", "persistentVolumeClaim": {"claimName": CLAIM}}
BACKUPS_MOUNT = {"name": "backups", "mountPath": "/backups"}


@pytest.fixture
def token() -> str:
    """A second secret value, easy to search for."""
    return "tok-" + secrets.token_hex(16)


@pytest.fixture
def db_secret(api_client, namespace, postgres, database, token) -> str:
    dsn = postgres.dsn(database)
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
        "metadata": {"name": SECRET}, "stringData": {"DATABASE_URL": dsn, "API_TOKEN": token}})
    return dsn


@pytest.fixture
def backups(job_runner, namespace):
    """The PVC `db-backups` (pods need a bound claim to be scheduled); its local directory."""
    return job_runner.create_pvc(namespace, CLAIM)


def database_job(name: str, command: list[str], env=(), mounts=(), volumes=(),
                 container: dict | None = None, **pod_spec) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": LABELS},
            "spec": {"restartPolicy": "Never", "volumes": list(volumes), **pod_spec,
                     "containers": [{"name": "pg", "image": "postgres:16", "command": command,
                                     "env": list(env), "volumeMounts": list(mounts),
                                     **(container or {})}]}}},
    }


def _condition(job, type_: str) -> bool:
    return any(c.type == type_ and c.status == "True" for c in (job.status.conditions or []))


def run_job(api_client, namespace: str, job: dict, outcome: str = "Complete", timeout: float = 60):
    """Creates the Job, waits for its Complete or Failed condition; returns (job, its pod)."""
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    name = job["metadata"]["name"]
    batch.create_namespaced_job(namespace, job)

    def finished():
        j = batch.read_namespaced_job(name, namespace)
        return j if _condition(j, "Complete") or _condition(j, "Failed") else None

    done = wait_for(f"Job {name} finished", finished, timeout=timeout)
    assert _condition(done, outcome), done.status.conditions
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={name}").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return done, pods[0]


def terminated(pod):
    state = pod.status.container_statuses[0].state
    assert state.terminated is not None, state
    return state.terminated


def test_psql_job_creates_and_fills_a_table(api_client, namespace, postgres, database, db_secret,
                                            job_runner):
    job, pod = run_job(api_client, namespace, database_job("seed", [
        "psql", "--dbname=$(DATABASE_URL)", "--no-psqlrc", "-v", "ON_ERROR_STOP=1",
        "-c", "CREATE TABLE widgets (id int PRIMARY KEY, name text)",
        "-c", "INSERT INTO widgets VALUES (1, 'one'), (2, 'two'), (3, 'three')",
    ], env=[DATABASE_URL]))

    assert job.status.succeeded == 1 and job.status.completion_time is not None
    assert pod.status.phase == "Succeeded"
    assert (terminated(pod).exit_code, terminated(pod).reason) == (0, "Completed")
    with postgres.connect(database) as conn:
        assert conn.execute("SELECT id, name FROM widgets ORDER BY id").fetchall() == [
            (1, "one"), (2, "two"), (3, "three")]
    assert "INSERT 0 3" in job_runner.log_path(namespace, pod.metadata.name).read_text()


def test_pg_dump_job_writes_the_dump_to_the_pvc(api_client, namespace, postgres, database, db_secret,
                                                backups):
    with postgres.connect(database) as conn:
        conn.execute("CREATE TABLE widgets (id int PRIMARY KEY)")
        conn.execute("INSERT INTO widgets SELECT generate_series(1, 50)")
    # The image's path to pg_dump: the runner maps it to the local PostgreSQL's.
    run_job(api_client, namespace, database_job("dump", [
        "/usr/lib/postgresql/16/bin/pg_dump", "-Fc", "--dbname=$(DATABASE_URL)",
        "-f", "/backups/out.dump",
    ], env=[DATABASE_URL], mounts=[BACKUPS_MOUNT], volumes=[BACKUPS]))

    dump = backups / "out.dump"
    assert dump.read_bytes()[:5] == b"PGDMP"
    listing = subprocess.run([str(find_bindir() / "pg_restore"), "--list", str(dump)],
                             check=True, capture_output=True, text=True).stdout
    assert "TABLE public widgets" in listing
    assert "TABLE DATA public widgets" in listing


def test_failing_command_fails_the_job(api_client, namespace, job_runner):
    job, pod = run_job(api_client, namespace, database_job(
        "fails", ["sh", "-c", "echo failing on purpose; exit 3"],
        container={"terminationMessagePolicy": "FallbackToLogsOnError"}), outcome="Failed")

    assert not _condition(job, "Complete")
    assert job.status.failed == 1
    assert pod.status.phase == "Failed"
    assert (terminated(pod).exit_code, terminated(pod).reason) == (3, "Error")
    # No termination-message file was written, so the kubelet's fallback: the container's output.
    assert terminated(pod).message == "failing on purpose\n"


def test_termination_message_reaches_the_pod_status(api_client, namespace, job_runner):
    _, pod = run_job(api_client, namespace, database_job(
        "message", ["sh", "-c", "printf 'dumped %s rows' 42 > /dev/termination-log"]))

    assert terminated(pod).message == "dumped 42 rows"
    assert not os.path.exists("/dev/termination-log")  # the pod's own file, not the host's


def test_missing_secret_key_fails_the_pod_without_running_it(api_client, namespace, db_secret,
                                                            backups):
    missing = {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "NOPE"}}}
    job, pod = run_job(api_client, namespace, database_job(
        "nokey", ["sh", "-c", "touch /backups/ran"], env=[missing], mounts=[BACKUPS_MOUNT],
        volumes=[BACKUPS]), outcome="Failed")

    assert pod.status.phase == "Failed"
    term = terminated(pod)
    assert (term.exit_code, term.reason) == (1, "CreateContainerConfigError")
    assert term.message == f"couldn't find key NOPE in Secret {namespace}/{SECRET}"
    assert not (backups / "ran").exists()


def test_active_deadline_stops_the_pod(api_client, namespace, job_runner):
    job, pod = run_job(api_client, namespace, database_job(
        "slow", ["sh", "-c", "sleep 60"], activeDeadlineSeconds=2), outcome="Failed", timeout=30)

    assert pod.status.phase == "Failed"
    assert pod.status.reason == "DeadlineExceeded"
    assert (terminated(pod).exit_code, terminated(pod).reason) == (137, "DeadlineExceeded")


def test_deleting_a_running_pod_kills_its_process(api_client, namespace, backups):
    core = client.CoreV1Api(api_client)
    client.BatchV1Api(api_client).create_namespaced_job(namespace, database_job(
        # `$$$$`: the kubelet turns `$$` into `$`, so the shell sees `$$`, its own pid.
        "sleeper", ["sh", "-c", "echo $$$$ > /backups/pid; exec sleep 300"],
        mounts=[BACKUPS_MOUNT], volumes=[BACKUPS]))
    pid_file = backups / "pid"
    pid = int(wait_for("the process's pid", lambda: pid_file.exists() and pid_file.read_text().strip()))
    pod = wait_for("pod Running", lambda: next(
        (p for p in core.list_namespaced_pod(namespace, label_selector="job-name=sleeper").items
         if p.status.phase == "Running"), None))
    os.kill(pid, 0)  # it runs

    core.delete_namespaced_pod(pod.metadata.name, namespace)

    def dead():
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True
    wait_for(f"process {pid} killed", dead, timeout=30)


def test_init_container_config_map_script_and_pod_fields(api_client, namespace, job_runner):
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, {
        "metadata": {"name": "scripts"},
        "data": {"GREETING": "hello",
                 "report.sh": '#!/bin/sh\necho "$GREETING from $1 in $POD_NAMESPACE"\ncat seed\n'}})
    work = {"name": "work", "mountPath": "/work"}
    job = database_job(
        "steps", ["/scripts/report.sh"], volumes=[
            {"name": "work", "emptyDir": {}},
            {"name": "scripts", "configMap": {"name": "scripts", "defaultMode": 0o755}}],
        mounts=[work, {"name": "scripts", "mountPath": "/scripts"}],
        env=[{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
             {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        container={"args": ["$(POD_NAME)"], "workingDir": "/work",
                   "envFrom": [{"configMapRef": {"name": "scripts"}}]},
        initContainers=[{"name": "seed", "image": "postgres:16", "volumeMounts": [work],
                         "command": ["sh", "-c", "echo seeded by the init container > /work/seed"]}])
    _, pod = run_job(api_client, namespace, job)

    init = pod.status.init_container_statuses[0]
    assert (init.name, init.state.terminated.exit_code) == ("seed", 0)
    assert job_runner.log_path(namespace, pod.metadata.name).read_text().splitlines()[-2:] == [
        f"hello from {pod.metadata.name} in {namespace}", "seeded by the init container"]


def test_kwok_still_runs_other_pods(api_client, namespace, job_runner):
    core = client.CoreV1Api(api_client)
    for name, labels in [("plain", {}), ("other-component", {"rewind.dev/component": "web"})]:
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "registry.local/app:1"}]}})
    for name in ("plain", "other-component"):
        pod = wait_for(f"{name} Ready", lambda: (lambda p: p if p.status.phase == "Running" and any(
            c.type == "Ready" and c.status == "True" for c in p.status.conditions or []) else None)(
            core.read_namespaced_pod(name, namespace)))
        assert pod.spec.node_name.startswith("kwok-node-")
        assert not job_runner.log_path(namespace, name).exists()


def test_secret_values_stay_out_of_logs_and_status(api_client, namespace, postgres, db_secret, token,
                                                   job_runner):
    script = ('test -n "$CRED_API_TOKEN" && test "$TOKEN" = "$CRED_API_TOKEN" '
              '&& test "$(cat /creds/API_TOKEN)" = "$TOKEN" && stat -c "mode %a" /creds/API_TOKEN '
              '&& psql --no-psqlrc -tA -c "SELECT 40 + 2" "$CRED_DATABASE_URL"')
    _, pod = run_job(api_client, namespace, database_job(
        "secretive", ["sh", "-c", script],
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "API_TOKEN"}}}],
        mounts=[{"name": "creds", "mountPath": "/creds", "readOnly": True}],
        volumes=[{"name": "creds", "secret": {"secretName": SECRET}}],
        container={"envFrom": [{"prefix": "CRED_", "secretRef": {"name": SECRET}}]}))

    # The values reached the process (its checks passed, it connected), and only the process.
    pod_log = job_runner.log_path(namespace, pod.metadata.name).read_text()
    assert "mode 400" in pod_log and "42" in pod_log
    pod_json = json.dumps(client.ApiClient().sanitize_for_serialization(pod))
    runner_log = job_runner.log_file.read_text()
    assert "TOKEN from Secret db-credentials[API_TOKEN]" in runner_log  # key names are logged
    for text in (pod_log, pod_json, runner_log):
        assert token not in text
        assert postgres.password not in text
    # The Secret's files went with the pod, as the kubelet tears down a finished pod's volumes.
    pod_dir = job_runner.root_dir / "pods" / pod.metadata.uid
    wait_for("pod directory removed", lambda: not pod_dir.exists())
