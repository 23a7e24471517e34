"""A restarted operator writes nothing for Rollbacks that are over.

Finished Rollbacks of every kind the operator ends in (Succeeded, Failed in preflight, Planned by a
dry run) and a tracked Secret whose history is current: after a restart the operator lists them all
again, and none of them needs a write. The API server's audit log (every mutating request, see
testbed/rewind_testbed/audit-policy.yaml) is the witness. The test bed's policy leaves Leases out of
the log; bench/cold_start.py, with its own policy, counts those too.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
from kubernetes import client

from helpers import deploy_revisions, kubectl_apply, rollback, wait_for, wait_phase

pytestmark = pytest.mark.cluster

# The operator's ServiceAccount (tests/conftest.py: OPERATOR_NS, OPERATOR_SA).
OPERATOR_USER = "system:serviceaccount:rewind-test-system:rewind-operator"
WORKLOADS = 4


def operator_writes(cluster, namespace: str, since: float) -> list[str]:
    """Every mutating request of the operator's ServiceAccount since `since` (wall time), in
    `namespace` or cluster-scoped, as "verb resource[/subresource] name (user agent)"."""
    text = cluster.audit_log.read_text()
    out = []
    # Whole lines only (the API server may be writing the last), split on "\n" only: request
    # bodies may hold U+0085 or U+2028, which str.splitlines would split on.
    for line in text[:text.rfind("\n") + 1].split("\n"):
        if not line or OPERATOR_USER not in line:
            continue
        ev = json.loads(line)
        ref = ev.get("objectRef") or {}
        at = datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        if (ev.get("user", {}).get("username") == OPERATOR_USER and at >= since
                and ev.get("verb") in ("create", "update", "patch", "delete", "deletecollection")
                and ref.get("namespace") in (namespace, None)):
            resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            out.append(f"{ev['verb']} {resource} {ref.get('name', '')} ({ev.get('userAgent', '').split(' ')[0]})")
    return out


def daemons_ended(op, start: int) -> int:
    """How many Rollback daemons of the operator's `start`-th run have ended (kopf logs
    "Daemon 'rollback' succeeded." at INFO when one returns; a finished Rollback's returns at once)."""
    run = op.output().split(f"===== operator start #{start}:")[-1]
    return sum("Daemon 'rollback' succeeded." in line for line in run.split("\n"))


def test_a_restart_over_finished_rollbacks_writes_nothing(cluster, api_client, namespace, idle_operator):
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    for i in range(WORKLOADS):
        deploy_revisions(apps, namespace, f"web-{i}", ["registry.local/web:1", "registry.local/web:2"],
                         replicas=1)
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "oauth", "labels": {"rewind.dev/track": "true"}}, "stringData": {"id": "one"}})
    op = idle_operator.start()
    first = time.time()
    for i in range(WORKLOADS):
        kubectl_apply(cluster, namespace, rollback(f"undo-{i}", [{"name": f"web-{i}", "toRevision": "previous"}]))
    kubectl_apply(cluster, namespace, rollback("dry", [{"name": "web-0", "toRevision": 1}], dryRun=True))
    kubectl_apply(cluster, namespace, rollback("missing", [{"name": "nowhere", "toRevision": "previous"}]))
    for i in range(WORKLOADS):
        wait_phase(api_client, namespace, f"undo-{i}", {"Succeeded"})
    wait_phase(api_client, namespace, "dry", {"Planned"})
    wait_phase(api_client, namespace, "missing", {"Failed"})
    for i in range(WORKLOADS):
        image = apps.read_namespaced_deployment(f"web-{i}", namespace).spec.template.spec.containers[0].image
        assert image == "registry.local/web:1"
    wait_for("the Secret's history", lambda: core.list_namespaced_secret(
        namespace, label_selector="rewind.dev/history-of=oauth").items)
    time.sleep(3)       # the last writes after Ready (the report, Events)
    # The witness sees the operator's writes at all: the runs above made many.
    assert len(operator_writes(cluster, namespace, first)) >= 5 * WORKLOADS

    op.stop()
    restart = time.time()
    op.start()
    total = WORKLOADS + 2
    wait_for("every finished Rollback seen by the restarted operator",
             lambda: daemons_ended(op, 2) >= total, timeout=60)
    time.sleep(3)       # anything it might still write after looking at them
    assert op.proc.poll() is None, op.output()[-3000:]
    assert operator_writes(cluster, namespace, restart) == []
