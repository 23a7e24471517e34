"""Helpers shared by the operator tests: waiting, workloads with real revision history, Rollbacks
applied the way a person applies them (kubectl apply), and the API server's audit log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from kubernetes import client

GROUP, VERSION, PLURAL = "rewind.dev", "v1alpha1", "rollbacks"


REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "rollbacks.rewind.dev.yaml"
RBAC = REPO / "manifests" / "rbac.yaml"
OPERATOR_NS = "rewind-test-system"
OPERATOR_SA = "rewind-operator"


def install_crds(cluster) -> Path:
    """The committed CRDs and admission policies, installed the way a user installs them, and the
    test bed's ClusterRollbackPolicy (the `rollback_crd` fixture)."""
    from rewind_testbed.install import PERMISSIVE, install

    install(cluster.kubectl, PERMISSIVE)
    return CRD


def install_operator_role(cluster) -> str:
    """The shipped ClusterRoles and the operator's ServiceAccount (the `operator_role` fixture)."""
    docs = list(yaml.safe_load_all(RBAC.read_text()))
    roles = [d for d in docs if d["kind"] == "ClusterRole"]
    discovery = next(d for d in docs if d["kind"] == "ClusterRoleBinding"
                     and d["metadata"]["name"] == "rewind-operator-discovery")
    discovery["subjects"] = [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]
    cluster.kubectl("create", "namespace", OPERATOR_NS, check=False)
    cluster.kubectl("create", "serviceaccount", OPERATOR_SA, "-n", OPERATOR_NS, check=False)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([*roles, discovery]))
    return "rewind-operator"


def wait_for(what, check, timeout=90.0, interval=0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def deployment(name: str, image: str, replicas: int = 2, **spec) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "app", "image": image}]}},
                 **spec},
    }


def rolled_out(apps, namespace: str, name: str):
    d = apps.read_namespaced_deployment(name, namespace)
    s = d.status
    ok = ((s.observed_generation or 0) >= d.metadata.generation
          and (s.updated_replicas or 0) == d.spec.replicas
          and (s.available_replicas or 0) == d.spec.replicas
          and (s.replicas or 0) == d.spec.replicas)
    return d if ok else None


def set_image(apps, namespace: str, name: str, image: str) -> None:
    apps.patch_namespaced_deployment(name, namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "app", "image": image}]}}}})


def deploy_revisions(apps, namespace: str, name: str, images: list[str], **spec) -> dict:
    """Creates a Deployment and rolls it through `images`, one real revision each; returns the
    ReplicaSets by revision number."""
    apps.create_namespaced_deployment(namespace, deployment(name, images[0], **spec))
    wait_for(f"{name} revision 1", lambda: rolled_out(apps, namespace, name))
    for i, image in enumerate(images[1:], start=2):
        set_image(apps, namespace, name, image)
        wait_for(f"{name} revision {i}", lambda: (lambda d: d and d.metadata.annotations.get(
            "deployment.kubernetes.io/revision") == str(i) and d)(rolled_out(apps, namespace, name)))
    return replica_sets(apps, namespace, name)


def replica_sets(apps, namespace: str, name: str) -> dict[int, dict]:
    rs = apps.list_namespaced_replica_set(namespace, label_selector=f"app={name}").items
    return {int(r.metadata.annotations["deployment.kubernetes.io/revision"]):
            client.ApiClient().sanitize_for_serialization(r) for r in rs}


def template_of(rs: dict) -> dict:
    t = json.loads(json.dumps(rs["spec"]["template"]))
    t["metadata"]["labels"].pop("pod-template-hash", None)
    return t


def deployment_dict(apps, namespace: str, name: str) -> dict:
    return client.ApiClient().sanitize_for_serialization(apps.read_namespaced_deployment(name, namespace))


def rollback(name: str, application: list[dict], severity: str = "High",
             reason: str = "bad release", **spec) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollback",
            "metadata": {"name": name},
            "spec": {"severity": severity, "reason": reason, "application": application, **spec}}


def kubectl_apply(cluster, namespace: str, obj: dict, check: bool = True):
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj), check=check)


def get_rollback(api_client, namespace: str, name: str) -> dict:
    return client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name)


def condition(rb: dict, type_: str) -> dict | None:
    for c in rb.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return None


def wait_phase(api_client, namespace: str, name: str, phases: set[str], timeout=120.0) -> dict:
    return wait_for(f"Rollback {name} in {phases}", lambda: (lambda rb: rb if rb.get(
        "status", {}).get("phase") in phases else None)(get_rollback(api_client, namespace, name)),
        timeout=timeout)


def events_for(api_client, namespace: str, name: str) -> list:
    evs = client.CoreV1Api(api_client).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=Rollback").items
    return sorted(evs, key=lambda e: int(e.metadata.resource_version))


def audit_events(cluster, namespace: str):
    """The API server's audit events whose line names `namespace`, parsed. Without an audit log we
    can read (an existing cluster) the test fails, saying so: a check of what reached the API
    server cannot pass unseen."""
    path: Path | None = getattr(cluster, "audit_log", None)
    if not path or not path.exists():
        pytest.fail("this check counts requests in the API server's audit log, and this cluster gives "
                    "the tests none (REWIND_TEST_EXISTING_CLUSTER): it cannot prove anything here")
    text = path.read_text()
    # The API server may be writing the last line as we read: only whole lines count.
    # Lines end with "\n" only: str.splitlines would also split inside a request body holding
    # U+0085 or U+2028, which JSON leaves unescaped.
    for line in text[:text.rfind("\n") + 1].split("\n"):
        if line and namespace in line:      # cheap: the log holds the whole session's requests
            yield json.loads(line)


def audit_writes(cluster, namespace: str, resource: str, name: str | None = None,
                 user_agent_prefix: str = "rewind/", subresource: str | None = None) -> list[dict]:
    """Mutating requests the operator made on `resource` (or on its `subresource`, e.g. "scale")
    in `namespace`, from the API server's audit log. Without one we can read (an existing
    cluster) the test fails, saying so: a check of what was written cannot pass unseen."""
    out = []
    for ev in audit_events(cluster, namespace):
        ref = ev.get("objectRef") or {}
        if (ev.get("verb") in ("create", "update", "patch", "delete")
                and ref.get("namespace") == namespace and ref.get("resource") == resource
                and (name is None or ref.get("name") == name)
                and (ref.get("subresource") or None) == subresource
                and (ev.get("userAgent") or "").startswith(user_agent_prefix)):
            out.append(ev)
    return out


# --- crashing the operator at a named point (rewind/crashpoints.py) and starting it again ------

CRASH_ENV = "REWIND_CRASH_AT"


@contextmanager
def _environment(**values: str):
    """os.environ with `values` while the operator process is started (Operator.start copies it)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_armed(op, point: str):
    with _environment(**{CRASH_ENV: point}):
        return op.start()


def died_at(op, point: str, timeout: float = 150.0) -> None:
    """The armed operator killed itself at `point`: a point never reached fails the case."""
    try:
        code = op.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the operator never reached crash point {point} in {timeout:.0f}s; "
                             f"log tail:\n{op.output()[-3000:]}") from None
    assert code == -signal.SIGKILL, \
        f"the operator exited with {code}, not by SIGKILL at {point}; log tail:\n{op.output()[-3000:]}"
    assert f"crash point {point.split('@')[0]} reached: SIGKILL" in op.output()


def restart(op):
    assert CRASH_ENV not in os.environ, f"{CRASH_ENV} is set in the test's environment"
    return op.start()


def assert_restored_once(cluster, api_client, apps, namespace: str, rs: dict, name: str, op) -> dict:
    """The Deployment `web` rolled back from revision 3 to 2 (now 4) by the Rollback `name`, with every
    effect once as the API server's audit log saw it (tests of API faults and outages)."""
    rb = get_rollback(api_client, namespace, name)
    assert rb["status"]["phase"] == "Succeeded", (rb["status"], op.output()[-4000:])
    assert condition(rb, "Ready")["status"] == "True"
    after = deployment_dict(apps, namespace, "web")
    assert after["spec"]["template"] == template_of(rs[2])
    assert after["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "4"
    assert rolled_out(apps, namespace, "web")
    # Exactly once, as the API server saw it: one patch of the Deployment, one report ConfigMap,
    # never two Events of one outcome (an Event is told, not recorded: one lost to the faults
    # after its retries is allowed; status is the record, checked above).
    writes = audit_writes(cluster, namespace, "deployments", "web")
    assert writes is not None, "no audit log: nothing can be proved"
    assert [w["verb"] for w in writes if (w.get("responseStatus") or {}).get("code", 200) < 400] == ["patch"], writes
    reasons = Counter(e.reason for e in events_for(api_client, namespace, name))
    assert reasons["RolledBack"] <= 1 and reasons["Succeeded"] <= 1 and reasons["Planned"] <= 1, reasons
    reports = [w for w in audit_writes(cluster, namespace, "configmaps")
               if w["verb"] == "create" and (w.get("responseStatus") or {}).get("code", 200) < 400]
    assert len(reports) == 1, reports
    step = rb["status"]["steps"][0]
    assert step["state"] == "Succeeded" and step["restoredRevision"] == 4, step
    return rb


OUTAGE_IMAGES = ["registry.local/booking:1.0", "registry.local/booking:1.1", "registry.local/booking:1.2-bad"]


def rollout_under_way(cluster, api_client, apps, namespace: str, idle_operator):
    """The scene of the API outage tests: Deployment `web` with three revisions (new pods need 15 s
    to count as available), the operator started, the Rollback `undo` (to the previous revision)
    applied and its step Waiting for the rollout. Returns the ReplicaSets by revision, and the
    operator."""
    rs = deploy_revisions(apps, namespace, "web", OUTAGE_IMAGES, minReadySeconds=15)
    op = idle_operator.start()
    kubectl_apply(cluster, namespace, rollback("undo", [{"kind": "Deployment", "name": "web", "toRevision": "previous"}]))
    wait_for("the rollout under way", lambda: (get_rollback(api_client, namespace, "undo").get("status", {})
                                                .get("steps") or [{}])[0].get("state") == "Waiting", timeout=60)
    return rs, op
