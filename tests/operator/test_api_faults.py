"""The API server misbehaves while a rollback runs: errors, throttling, reset connections, answers
lost after the write, watches that end with 410 Gone, the API server gone for 20 seconds (two
minutes in the long tier) or answering nothing. The operator talks to it only through a
fault-injecting proxy (testbed/rewind_testbed/faultproxy.py); the test and the controllers talk to
the API server directly. What must hold: the rollback ends right, every effect happens once
(counted from the API server's audit log, which sees what reached it, whatever the operator
believes), and nothing waits forever."""

from __future__ import annotations

import collections
import os
import time

import pytest
from kubernetes import client

from helpers import (
    OUTAGE_IMAGES as IMAGES, assert_restored_once, deploy_revisions, get_rollback, kubectl_apply, rollback,
    rollout_under_way, wait_phase,
)
from rewind_testbed.faultproxy import FaultProxy, Rule

pytestmark = pytest.mark.cluster

LONG = os.environ.get("REWIND_LONG_TIER") == "1"


@pytest.fixture
def apps(api_client):
    return client.AppsV1Api(api_client)


@pytest.fixture
def proxy(cluster, idle_operator, tmp_path):
    """The operator's own kubeconfig (its ServiceAccount token), pointed at the fault proxy."""
    if getattr(cluster, "audit_log", None) is None:
        pytest.fail("these tests count effects from the API server's audit log, which this cluster "
                    "does not give us (an existing cluster): they cannot prove anything here")
    p = FaultProxy.for_kubeconfig(idle_operator.kubeconfig, tmp_path / "proxy").start()
    idle_operator.kubeconfig = p.kubeconfig(tmp_path / "via-proxy.kubeconfig")
    yield p
    p.stop()


def test_errors_throttling_resets_lost_answers_and_gone_watches_change_nothing_twice(
        cluster, api_client, apps, namespace, idle_operator, proxy):
    rs = deploy_revisions(apps, namespace, "web", IMAGES)
    # The first patch of the Deployment is made but its answer lost; of the other requests, one in
    # six is answered 503, one in ten 429 with Retry-After, one in ten has its connection reset
    # before it reaches the API server, one in ten (watches too) arrives 1.5 s late (a seeded
    # draw each); every second watch ends at once with 410 Gone.
    proxy.add(Rule("lose-response", method="PATCH", path=r"/deployments/web(\?|$)", times=1))
    proxy.add(Rule("status", status=503, probability=1 / 6, seed=1, watch=False))
    proxy.add(Rule("status", status=429, retry_after=1, probability=0.1, seed=2, watch=False))
    proxy.add(Rule("reset", probability=0.1, seed=3, watch=False))
    proxy.add(Rule("delay", delay=1.5, probability=0.1, seed=4))
    proxy.add(Rule("gone", watch=True, every=2))
    op = idle_operator.start()
    kubectl_apply(cluster, namespace, rollback("undo", [{"kind": "Deployment", "name": "web", "toRevision": "previous"}]))
    wait_phase(api_client, namespace, "undo", {"Succeeded", "Failed", "Interrupted"}, timeout=240)
    print("faults injected:", collections.Counter(i[1] for i in proxy.injected), "of", proxy.requests, "requests")
    assert proxy.count("lose-response") == 1 and proxy.count("status") + proxy.count("reset") >= 3, \
        proxy.injected
    assert_restored_once(cluster, api_client, apps, namespace, rs, "undo", op)
    assert op.proc.poll() is None, "the operator died"


@pytest.mark.parametrize("mode,seconds", [
    ("outage", 20), ("blackhole", 20),
    pytest.param("outage", 120, marks=pytest.mark.long), pytest.param("blackhole", 120, marks=pytest.mark.long),
])
def test_the_api_server_gone_mid_rollback(cluster, api_client, apps, namespace, idle_operator, proxy, mode, seconds):
    """Mid-rollout (the new pods need 15 s to count as available), the API server goes away for
    the operator: `outage` cuts every connection and resets new ones (the API server stopped),
    `blackhole` leaves requests unanswered (a network partition). Afterwards the rollback goes on
    and ends Succeeded, with every effect once."""
    if seconds > 60 and not LONG:
        pytest.skip("the long tier: make test-long")
    rs, op = rollout_under_way(cluster, api_client, apps, namespace, idle_operator)
    (proxy.outage if mode == "outage" else proxy.blackhole)(True)
    started = time.monotonic()
    try:
        time.sleep(seconds)
        # Meanwhile the rollout finished without the operator (the controllers never lost the
        # API server): the rollback cannot have ended, since the operator saw none of it.
        assert get_rollback(api_client, namespace, "undo")["status"]["phase"] == "Running"
    finally:
        (proxy.outage if mode == "outage" else proxy.blackhole)(False)
    healed = time.monotonic()
    rb = wait_phase(api_client, namespace, "undo", {"Succeeded", "Failed", "Interrupted"}, timeout=240)
    print(f"{mode} {healed - started:.0f}s; the rollback ended {time.monotonic() - healed:.1f}s after it, "
          f"phase {rb['status']['phase']}")
    assert_restored_once(cluster, api_client, apps, namespace, rs, "undo", op)
    assert op.proc.poll() is None, "the operator died"
