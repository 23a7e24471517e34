"""The API server itself stops mid-rollback, and comes back: the kube-apiserver process is ended
(SIGTERM, as in a restart or an upgrade, or SIGKILL, as when its machine fails) for 20 seconds
(two minutes in the long tier) while the rollout is under way, then started again with the same
arguments, etcd and audit log. Unlike the fault proxy of test_api_faults.py, everyone loses it:
the operator, the deployment controller, the scheduler, kwok's kubelets. What must hold: the
rollback ends Succeeded once the API server is back, with every effect once (counted from the API
server's audit log), the operator never dies, nothing waits forever, and waiting stays cheap once
the API server is back: its restart lost the watch history, so a watch from the Deployment's
version is answered 410 Gone; the operator reads the Deployment a few times, not in a loop.

These tests run on a control plane of their own: the session's is shared by every test, and
stopping its API server would be felt by all of them."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
import yaml
from kubernetes import client, config

from helpers import (
    OPERATOR_NS, OPERATOR_SA, assert_restored_once, audit_events, install_crds, install_operator_role, rollout_under_way, wait_phase,
)
from rewind_testbed.cluster import AUDIT_POLICY, ControlPlane
from rewind_testbed.pytest_plugin import Cluster

pytestmark = pytest.mark.cluster

LONG = os.environ.get("REWIND_LONG_TIER") == "1"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
# After the API server is back: a get and a watch of the Deployment per wake, a wake per change of
# the Deployment or per watch slice (5 s), for the rest of the rollout (about 40 s here). A busy
# loop makes thousands.
MAX_DEPLOYMENT_READS_AFTER = 100
CONTROLLERS_LATER = 10


@pytest.fixture(scope="module")
def control_plane(bed_dir):
    if os.environ.get("REWIND_TEST_EXISTING_CLUSTER") == "1":
        pytest.skip("these tests stop and start the kube-apiserver process: only the local test bed's "
                    "control plane is ours to stop (the fault proxy's outages in test_api_faults.py run anywhere)")
    run_dir = bed_dir / f"own-cluster-{os.getpid()}"
    run_dir.mkdir()
    # The test bed's audit policy, and before it one rule more: the operator's reads, at Metadata
    # level (verb, URI, time), so its reads can be counted.
    policy = yaml.safe_load(AUDIT_POLICY.read_text())
    policy["rules"].insert(0, {"level": "Metadata", "users": [OPERATOR_USER], "verbs": ["get", "list", "watch"]})
    (run_dir / "audit-policy.yaml").write_text(yaml.safe_dump(policy))
    cp = ControlPlane.start(run_dir / "cluster", audit_policy=run_dir / "audit-policy.yaml")
    print(f"\nthis module's own control plane up in {cp.started_in:.1f}s; logs in {cp.log_dir}")
    yield cp
    cp.stop()


# This module's tests see only their own control plane: these override the session's fixtures of
# the same names, and everything built on them (namespace, idle_operator) follows.
@pytest.fixture(scope="module")
def cluster(control_plane):
    cp = control_plane
    return Cluster(cp.kubeconfig, str(cp.bin_dir / "kubectl"), cp.log_dir, cp.audit_log, cp.pki.dir)


@pytest.fixture(scope="module")
def api_client(cluster):
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="module")
def rollback_crd(cluster):
    return install_crds(cluster)


@pytest.fixture(scope="module")
def operator_role(cluster):
    return install_operator_role(cluster)


@pytest.fixture
def apps(api_client):
    return client.AppsV1Api(api_client)


@pytest.mark.parametrize("how,seconds", [
    ("stop", 20),
    pytest.param("kill", 120, marks=pytest.mark.long),
])
def test_the_api_server_stopped_mid_rollback(control_plane, cluster, api_client, apps, namespace, idle_operator,
                                             how, seconds):
    """The API server and the controller manager go away mid-rollout; the API server comes back
    first, the controller manager (as after losing its leader lease) CONTROLLERS_LATER seconds
    after it. Meanwhile nothing changes the Deployment, so the operator's watch from the version
    it saw last gets 410 Gone (the restart lost the history) and keeps getting it."""
    if seconds > 60 and not LONG:
        pytest.skip("the long tier: make test-long")
    rs, op = rollout_under_way(cluster, api_client, apps, namespace, idle_operator)
    control_plane.stop_process("kube-controller-manager", kill=how == "kill")
    control_plane.stop_process("kube-apiserver", kill=how == "kill")
    stopped = time.monotonic()
    try:
        time.sleep(seconds)
        assert op.proc.poll() is None, f"the operator died without its API server:\n{op.output()[-4000:]}"
    finally:
        control_plane.start_process("kube-apiserver")
        back, back_wall = time.monotonic(), time.time()
        try:
            time.sleep(CONTROLLERS_LATER)
        finally:
            control_plane.start_process("kube-controller-manager")
    rb = wait_phase(api_client, namespace, "undo", {"Succeeded", "Failed", "Interrupted"}, timeout=240)
    print(f"kube-apiserver {how} for {back - stopped:.0f}s (until ready again), the controllers "
          f"{CONTROLLERS_LATER}s longer; the rollback ended {time.monotonic() - back:.1f}s after the API server "
          f"was back, phase {rb['status']['phase']}")
    assert_restored_once(cluster, api_client, apps, namespace, rs, "undo", op)
    assert op.proc.poll() is None, "the operator died"
    reads = _operator_reads(cluster, namespace, since=back_wall)
    print("the operator's reads after the API server was back:", dict(reads))
    assert sum(n for (verb, res), n in reads.items() if res == "deployments") <= MAX_DEPLOYMENT_READS_AFTER, reads


def _operator_reads(cluster, namespace: str, since: float) -> Counter:
    """The operator's reads in `namespace` the API server received after `since` (wall time), by
    verb and resource, from the audit log."""
    from datetime import datetime

    reads: Counter = Counter()
    seen: set[str] = set()      # a watch is logged when its answer starts and when it ends
    for ev in audit_events(cluster, namespace):
        ref = ev.get("objectRef") or {}
        at = datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        if ev.get("user", {}).get("username") == OPERATOR_USER and ev.get("verb") in ("get", "list", "watch") \
                and ref.get("namespace") == namespace and at >= since and ev["auditID"] not in seen:
            seen.add(ev["auditID"])
            reads[(ev["verb"], ref.get("resource"))] += 1
    return reads
