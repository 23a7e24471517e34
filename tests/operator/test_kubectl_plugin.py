"""`kubectl rewind get | describe | watch | plan | abort` against the real control plane: each run
as the installed program would be (`python -m rewind.cli ...` with the caller's kubeconfig), its
output and its exit code asserted, and what it must not change checked in the API server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from kubernetes import client

import httpservers
from helpers import (
    audit_writes, condition, deploy_revisions, get_rollback, kubectl_apply, rollback, wait_for,
)

pytestmark = pytest.mark.cluster

IMAGES = ["registry.local/booking:1.0", "registry.local/booking:1.1", "registry.local/booking:1.2-bad"]
OK, FAILED, USAGE, NOT_FOUND, TIMEOUT = 0, 1, 2, 3, 4


def rewind(cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`kubectl rewind ARGS` with the test cluster's (admin) kubeconfig, stdout not a TTY."""
    return subprocess.run([sys.executable, "-m", "rewind.cli", *args, "--kubeconfig", str(cluster.kubeconfig)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start(cluster, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rewind.cli", *args, "--kubeconfig", str(cluster.kubeconfig)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout}s:\n{out}\n{err}")
    return proc.returncode, out, err


@pytest.fixture
def apps(api_client):
    return client.AppsV1Api(api_client)


@pytest.fixture(scope="module")
def health():
    server, url = httpservers.start()
    yield url
    server.shutdown()


def test_get_and_describe(cluster, api_client, apps, namespace, operator):
    deploy_revisions(apps, namespace, "web", IMAGES[:2])
    kubectl_apply(cluster, namespace, rollback("undo", [{"name": "web"}]))
    wait_for("the report", lambda: (get_rollback(api_client, namespace, "undo").get("status", {})
                                    .get("report") or {}).get("configMapRef"), timeout=90)

    got = rewind(cluster, "get", "-n", namespace)
    assert got.returncode == OK, got.stderr
    table = got.stdout.splitlines()
    assert table[0].split() == ["NAME", "SEVERITY", "PHASE", "STEP", "VERIFIED", "DURATION", "AGE"]
    assert table[1].split()[:5] == ["undo", "High", "Succeeded", "1/1", "True"]
    assert len(table) == 2

    wide = rewind(cluster, "get", "undo", "-n", namespace, "-o", "wide")
    assert wide.returncode == OK, wide.stderr
    header, row = wide.stdout.splitlines()
    assert header.split() == ["NAME", "SEVERITY", "PHASE", "STEP", "VERIFIED", "DURATION", "AGE",
                              "CURRENT", "READY-REASON", "DEADLINE", "REASON"]
    assert row.split()[:5] == ["undo", "High", "Succeeded", "1/1", "True"]
    assert row.split()[7:9] == ["<none>", "Succeeded"] and row.endswith("bad release")

    every = rewind(cluster, "get", "-A")
    assert every.returncode == OK
    assert every.stdout.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any(line.split()[:4] == [namespace, "undo", "High", "Succeeded"] for line in every.stdout.splitlines())

    as_json = rewind(cluster, "get", "undo", "-n", namespace, "-o", "json")
    assert as_json.returncode == OK
    obj = json.loads(as_json.stdout)
    assert obj["kind"] == "Rollback" and obj["metadata"]["name"] == "undo"
    assert obj["status"]["phase"] == "Succeeded" and "managedFields" not in obj["metadata"]
    listed = yaml.safe_load(rewind(cluster, "get", "-n", namespace, "-o", "yaml").stdout)
    assert listed["kind"] == "List" and [i["metadata"]["name"] for i in listed["items"]] == ["undo"]
    assert rewind(cluster, "get", "-n", namespace, "-o", "name").stdout == "rollback.rewind.dev/undo\n"
    none = rewind(cluster, "get", "-n", namespace, "-l", "no=such")
    assert (none.returncode, none.stdout, none.stderr) == (OK, "", f"No resources found in {namespace} namespace.\n")

    described = rewind(cluster, "describe", "undo", "-n", namespace)
    assert described.returncode == OK, described.stderr
    text = described.stdout
    lines = [line.strip() for line in text.splitlines()]
    assert "Name:          undo" in text.splitlines()[0]
    assert "Phase:         Succeeded" in text and "Progress:      1/1" in text
    assert "1/1  deployment/web  Succeeded" in lines
    assert "WorkloadRevision of Deployment web: revision 2 -> revision 1's template (now revision 3)" in lines
    assert any(line.startswith("started ") and "took" in line for line in lines)
    assert any(line.split()[:3] == ["Ready", "True", "Succeeded"] for line in lines)
    assert any(line.split()[:3] == ["ApplicationRestored", "True", "RolledBack"] for line in lines)
    assert f"ConfigMap undo-report (kubectl rewind report undo -n {namespace})" in lines
    assert "Now:" in lines and any(line.startswith("Nothing: it ended Succeeded at") for line in lines)
    assert "Next:" not in lines          # nothing to do after a success
    assert "Events:" in lines and any(line.split()[:2] == ["Normal", "Succeeded"] for line in lines)

    # A finished rollback: watch says how it ended at once; abort refuses.
    watched = rewind(cluster, "watch", "undo", "-n", namespace, "--timeout", "30s")
    assert watched.returncode == OK, watched.stderr
    assert "[1/1] deployment/web: Succeeded" in watched.stdout
    assert watched.stdout.splitlines()[-1].startswith(f"rollback {namespace}/undo Succeeded (Succeeded) in ")
    aborted = rewind(cluster, "abort", "undo", "-n", namespace)
    assert aborted.returncode == FAILED
    assert aborted.stderr.strip() == (f"error: rollback {namespace}/undo already ended (Succeeded); "
                                      "there is nothing to abort")
    assert "rewind.dev/abort" not in (get_rollback(api_client, namespace, "undo")["metadata"].get("annotations") or {})

    # Missing: kubectl's NotFound message, exit 3 from every command.
    for command in (["get", "nope"], ["describe", "nope"], ["watch", "nope"], ["abort", "nope"]):
        missing = rewind(cluster, *command, "-n", namespace)
        assert missing.returncode == NOT_FOUND, (command, missing.stderr)
        assert missing.stderr.strip() == 'Error from server (NotFound): rollbacks.rewind.dev "nope" not found'
        assert missing.stdout == ""
    both = rewind(cluster, "get", "undo", "nope", "-n", namespace)
    assert both.returncode == NOT_FOUND and both.stdout.splitlines()[1].split()[0] == "undo"
    # Usage errors: exit 2.
    assert rewind(cluster, "get", "undo", "-A").returncode == USAGE
    assert rewind(cluster, "watch", "undo", "--timeout", "soon").returncode == USAGE


def test_describe_says_what_to_do_after_a_refusal(cluster, api_client, apps, namespace, idle_operator):
    """watch of a refused rollback exits 1 (and --timeout 4 while nobody works on it); describe
    then names the reason, the message, and what to do next."""
    kubectl_apply(cluster, namespace, rollback("refused", [{"name": "nope"}]))
    early = rewind(cluster, "watch", "refused", "-n", namespace, "--timeout", "2s")
    assert early.returncode == TIMEOUT, early.stderr
    assert early.stdout == f"rollback {namespace}/refused: waiting for the operator (no status yet)\n"
    assert "timed out after 2s" in early.stderr
    held = rewind(cluster, "describe", "refused", "-n", namespace)
    assert "Waiting for the operator to pick it up" in held.stdout

    watch = start(cluster, "watch", "refused", "-n", namespace)
    idle_operator.start()
    code, out, err = finish(watch)
    assert code == FAILED, (out, err)
    assert out.splitlines()[-1].startswith(f"rollback {namespace}/refused Failed (TargetNotFound)")
    assert f"Deployment {namespace}/nope does not exist" in out.splitlines()[-1]

    described = rewind(cluster, "describe", "refused", "-n", namespace)
    assert described.returncode == OK
    lines = [line.strip() for line in described.stdout.splitlines()]
    nxt = lines[lines.index("Next:") + 1:]
    assert nxt[0].startswith("- It stalled (TargetNotFound): Preflight refused the rollback; nothing was changed")
    assert "- Fix the spec (or create the missing object), then create a new Rollback." in nxt
    assert "- Preflight refused it, so nothing was changed." in nxt
    assert any(line.split()[:3] == ["Stalled", "True", "TargetNotFound"] for line in lines)


def test_watch_follows_a_rollback_until_it_succeeds(cluster, api_client, apps, namespace, idle_operator, health):
    deploy_revisions(apps, namespace, "web", IMAGES)
    kubectl_apply(cluster, namespace, rollback("undo", [{"name": "web"}], verification={
        "http": [{"name": "health", "url": f"{health}/api/health", "count": 2, "intervalSeconds": 1}]}))
    watch = start(cluster, "watch", "undo", "-n", namespace, "--timeout", "2m")
    wait_for("the watch to start", lambda: rewind(cluster, "get", "undo", "-n", namespace).returncode == OK)
    idle_operator.start()
    code, out, err = finish(watch)
    assert code == OK, (out, err, idle_operator.output()[-3000:])
    lines = out.splitlines()
    assert lines[0] == f"rollback {namespace}/undo: waiting for the operator (no status yet)"
    assert lines[1].startswith(f"rollback {namespace}/undo: Running (High, deadline ")
    assert "[1/2] deployment/web: Running - " in out
    assert "[1/2] deployment/web: Succeeded - " in out
    assert "[2/2] verify/http/health: Running - 1 of 2 measurement(s), 0 failed" in out
    assert "[2/2] verify/http/health: Succeeded - 2 of 2 measurement(s), 0 failed" in out
    assert lines.index(next(x for x in lines if x.startswith("[1/2] deployment/web: Succeeded"))) < \
        lines.index(next(x for x in lines if x.startswith("[2/2] verify/http/health: Succeeded")))
    assert lines[-1].startswith(f"rollback {namespace}/undo Succeeded (Succeeded) in ")
    assert all(a != b for a, b in zip(lines, lines[1:]))     # one line per change, never repeated
    assert err == ""


def _rollback_file(tmp_path, namespace, name, target, **spec):
    path = tmp_path / f"{name}.yaml"
    doc = rollback(name, [{"kind": "Deployment", "name": target, "toRevision": "previous"}], **spec)
    doc["metadata"]["namespace"] = namespace
    path.write_text(yaml.safe_dump(doc))
    return path


def test_plan_changes_nothing(cluster, api_client, apps, namespace, rollback_crd, health, tmp_path):
    deploy_revisions(apps, namespace, "web", IMAGES)
    before = apps.read_namespaced_deployment("web", namespace)
    path = _rollback_file(tmp_path, namespace, "planned", "web",
                          verification={"http": [{"name": "health", "url": f"{health}/api/health"}]})

    planned = rewind(cluster, "plan", "-f", str(path))
    assert planned.returncode == OK, (planned.stdout, planned.stderr)
    out = planned.stdout
    lines = out.splitlines()
    assert lines[0] == (f"Rollback {namespace}/planned: accepted by the API server (server-side dry run: "
                        "schema and CEL rules; nothing was created).")
    assert "  workload       ok, 1 step(s)" in lines and "  verification   ok, 1 step(s)" in lines
    assert "  database       nothing to do" in lines
    assert "Plan of 2 step(s), in order (High: to finish within 15m of its start):" in lines
    assert "  1. deployment/web  WorkloadRevision  Deployment web" in lines
    assert any(x.startswith("       from revision 3 to revision 2's template (template ") for x in lines)
    assert f"       -  - image: {IMAGES[2]}" in lines and f"       +  - image: {IMAGES[1]}" in lines
    assert f"  2. verify/http/health  HttpCheck  HTTP {health}/api/health" in lines
    assert lines[-1] == f"It would run: `kubectl apply -f {path}` starts it."

    as_json = rewind(cluster, "plan", "-f", str(path), "-o", "json")
    assert as_json.returncode == OK
    data = json.loads(as_json.stdout)
    assert data["wouldRun"] is True and [s["name"] for s in data["plan"]] == ["deployment/web", "verify/http/health"]
    assert data["plan"][0]["toRevision"] == 2 and data["plan"][0]["currentRevision"] == 3

    # Nothing changed: no Rollback, the Deployment as it was; the API server saw dry runs only.
    assert client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "rewind.dev", "v1alpha1", namespace, "rollbacks")["items"] == []
    # (Its resourceVersion may move: the deployment controller still updates its status after the
    # last rollout. Its spec and generation are what a write by plan would change.)
    after = apps.read_namespaced_deployment("web", namespace)
    assert after.metadata.generation == before.metadata.generation
    assert after.spec.template.to_dict() == before.spec.template.to_dict()
    writes = audit_writes(cluster, namespace, "rollbacks", user_agent_prefix="kubectl-rewind/")
    assert len(writes) == 2 and all("dryRun=All" in w["requestURI"] for w in writes), writes
    assert audit_writes(cluster, namespace, "deployments", user_agent_prefix="kubectl-rewind/") == []


def test_plan_refusals(cluster, api_client, apps, namespace, rollback_crd, tmp_path):
    deploy_revisions(apps, namespace, "web", IMAGES[:2])
    missing = rewind(cluster, "plan", "-f", str(_rollback_file(tmp_path, namespace, "missing", "nope")))
    assert missing.returncode == FAILED, missing.stderr
    lines = missing.stdout.splitlines()
    assert f"  workload       REFUSED (TargetNotFound): Deployment {namespace}/nope does not exist" in lines
    assert lines[-2:] == ["Refused: applying it now would end Failed before changing anything:",
                          f"  - workload (TargetNotFound): Deployment {namespace}/nope does not exist"]

    # The CRD's CEL rule refuses it at the API server: nothing else is tried.
    bad = _rollback_file(tmp_path, namespace, "bad", "web")
    doc = yaml.safe_load(bad.read_text())
    doc["spec"]["application"][0]["toRevision"] = 0
    bad.write_text(yaml.safe_dump(doc))
    refused = rewind(cluster, "plan", "-f", str(bad))
    assert refused.returncode == FAILED
    assert refused.stdout.splitlines()[0] == f"Rollback {namespace}/bad: the API server refused it (server-side dry run):"
    assert "Error from server (Invalid)" in refused.stdout
    assert "toRevision must be 'previous' or a revision number of 1 or more" in refused.stdout

    other = rewind(cluster, "plan", "-f", str(_rollback_file(tmp_path, namespace, "x", "web")), "-n", "default")
    assert other.returncode == USAGE and "does not match the namespace" in other.stderr
    (tmp_path / "empty.yaml").write_text("kind: ConfigMap\n")
    assert rewind(cluster, "plan", "-f", str(tmp_path / "empty.yaml")).returncode == USAGE
    assert client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "rewind.dev", "v1alpha1", namespace, "rollbacks")["items"] == []


def _service(core, namespace):
    core.create_namespaced_service(namespace, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80}]}})


MAINTENANCE = {"service": {"name": "web", "selector": {"app": "maintenance-page"}}}


def _assert_aborted(cluster, api_client, core, namespace, name, who, aborted):
    rb = get_rollback(api_client, namespace, name)
    assert rb["metadata"]["annotations"]["rewind.dev/abort"] == who
    assert aborted.stdout.splitlines()[0] == f"rollback.rewind.dev/{name} abort requested (by {who})"
    st = rb["status"]
    assert (st["phase"], condition(rb, "Ready")["reason"]) == ("Failed", "Aborted"), (aborted.stdout, aborted.stderr, st)
    assert aborted.returncode == OK, (aborted.stdout, aborted.stderr)
    assert aborted.stdout.splitlines()[-1].startswith(f"rollback {namespace}/{name} Failed (Aborted)")
    assert aborted.stderr == ""
    steps = {s["name"]: s for s in st["steps"]}
    assert steps["maintenance/exit"]["state"] == "Succeeded"
    assert core.read_namespaced_service("web", namespace).spec.selector == {"app": "web"}
    assert condition(rb, "HooksUndone")["status"] == "True"
    # Once ended, a second abort is refused.
    again = rewind(cluster, "abort", name, "-n", namespace)
    assert again.returncode == FAILED and "already ended (Failed)" in again.stderr
    return steps


def test_abort_stops_a_rollout_that_waits(cluster, api_client, apps, namespace, operator):
    """Revision 1 can never roll out (its pods fit no node); the rollback back to it waits for the
    rollout, in maintenance, until `kubectl rewind abort`."""
    core = client.CoreV1Api(api_client)
    labels = {"app": "web"}
    template = {"metadata": {"labels": labels}, "spec": {"nodeSelector": {"rewind.dev/test": "nowhere"},
                                                         "containers": [{"name": "app", "image": IMAGES[0]}]}}
    apps.create_namespaced_deployment(namespace, {"metadata": {"name": "web"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": labels}, "template": template}})
    apps.patch_namespaced_deployment("web", namespace, {"spec": {"template": {"spec": {
        "nodeSelector": None, "containers": [{"name": "app", "image": IMAGES[1]}]}}}})
    wait_for("revision 2 rolled out", lambda: (lambda d: d.status.available_replicas == 1 and d.status.replicas == 1
                                               and d.metadata.annotations.get("deployment.kubernetes.io/revision") == "2")(
        apps.read_namespaced_deployment("web", namespace)))
    _service(core, namespace)
    kubectl_apply(cluster, namespace, rollback("stuck", [{"name": "web"}], maintenance=MAINTENANCE))
    wait_for("the rollout wait", lambda: any(s["name"] == "deployment/web" and s["state"] == "Waiting" for s in
                                             get_rollback(api_client, namespace, "stuck").get("status", {}).get("steps") or []))
    assert core.read_namespaced_service("web", namespace).spec.selector == {"app": "maintenance-page"}
    held = rewind(cluster, "describe", "stuck", "-n", namespace)
    now = [x.strip() for x in held.stdout.splitlines()]
    assert any(x.startswith("Step 2/3 deployment/web is Waiting: ") for x in now), held.stdout
    assert any(x.startswith("It waits at most until ") for x in now)

    who = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout.strip()
    aborted = rewind(cluster, "abort", "stuck", "-n", namespace, "--timeout", "60s")
    steps = _assert_aborted(cluster, api_client, core, namespace, "stuck", who, aborted)
    assert steps["deployment/web"]["state"] == "Failed" and steps["deployment/web"]["reason"] == "Aborted"
    assert f"[2/3] deployment/web: Failed - Aborted by {who} while waiting" in aborted.stdout


def test_abort_during_a_long_verification(cluster, api_client, apps, namespace, operator, health):
    core = client.CoreV1Api(api_client)
    deploy_revisions(apps, namespace, "web", IMAGES[:2])
    _service(core, namespace)
    kubectl_apply(cluster, namespace, rollback(
        "long", [{"name": "web"}], maintenance=MAINTENANCE,
        verification={"http": [{"name": "health", "url": f"{health}/api/health", "count": 20,
                                "intervalSeconds": 3}]}))

    def verifying():
        steps = get_rollback(api_client, namespace, "long").get("status", {}).get("steps") or []
        return any(s["name"] == "verify/http/health" and s.get("attempts", 0) >= 1 for s in steps)
    wait_for("the verification to be under way", verifying, timeout=90)
    assert core.read_namespaced_service("web", namespace).spec.selector == {"app": "maintenance-page"}

    who = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout.strip()
    # The checks alone take a minute: an abort that works ends it long before 20 s.
    aborted = rewind(cluster, "abort", "long", "-n", namespace, "--timeout", "20s")
    steps = _assert_aborted(cluster, api_client, core, namespace, "long", who, aborted)
    assert steps["verify/http/health"]["attempts"] < 20          # it did not wait the checks out
