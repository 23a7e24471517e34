"""Installs Rewind's cluster-wide parts the way a user does (`kubectl apply -f crds/ -f
manifests/admission.yaml`), for the tests, the demo and the benchmarks, and waits until they work:
the CRDs served, and the admission policies that stamp the requester type-checked against them
(until then a create answers 503).

    install(kubectl, policy=PERMISSIVE)

`kubectl(*args, input=None, check=True)` is a ControlPlane's or a test Cluster's kubectl.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
ADMISSION = REPO / "manifests" / "admission.yaml"

# The test bed's platform policy: no approvals, and the operator may connect to loopback only,
# where every local stand-in (checks, hooks, receivers, Alertmanager, SMTP) listens.
LOOPBACK_EGRESS = [{"cidr": "127.0.0.0/8"}, {"cidr": "::1/128"}]
# On an existing cluster the stand-ins the Job pods reach (PostgreSQL, the S3 server) listen at
# REWIND_TEST_HOST_ADDRESS instead (rewind_testbed/external.py); the operator may connect there.
_HOST = os.environ.get("REWIND_TEST_HOST_ADDRESS") if os.environ.get("REWIND_TEST_EXISTING_CLUSTER") == "1" else None
PERMISSIVE = {"egress": LOOPBACK_EGRESS + ([{"cidr": f"{_HOST}/32"}] if _HOST else [])}


def _until(what: str, check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_established(kubectl, *crds: str, timeout: float = 60) -> None:
    """Waits until each CRD is Established. `kubectl wait` alone is not enough: it errors out at once
    while a CRD just created has no conditions yet ("status.conditions accessor error")."""
    for crd in crds:
        _until(f"{crd} established", lambda crd=crd: kubectl(
            "wait", "--for=condition=Established", "--timeout=10s", f"crd/{crd}",
            check=False).returncode == 0, timeout)


def install(kubectl, policy: dict | None = PERMISSIVE) -> None:
    """CRDs and admission policies; with `policy`, a ClusterRollbackPolicy `default` of that spec."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ADMISSION))
    wait_established(kubectl, "rollbacks.rewind.dev")
    probe = yaml.safe_dump({"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback",
                            "metadata": {"name": "probe", "namespace": "default"},
                            "spec": {"severity": "Low", "reason": "probe", "application": [{"name": "x"}]}})
    _until("the admission policies ready", lambda: kubectl(
        "create", "--dry-run=server", "-f", "-", input=probe, check=False).returncode == 0)
    if policy is not None:
        doc = yaml.safe_dump({"apiVersion": "rewind.dev/v1alpha1", "kind": "ClusterRollbackPolicy",
                              "metadata": {"name": "default"}, "spec": policy})
        _until("the ClusterRollbackPolicy applied", lambda: kubectl(
            "apply", "-f", "-", input=doc, check=False).returncode == 0, 30)
