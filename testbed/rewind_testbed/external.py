"""The suite on an existing cluster (`REWIND_TEST_EXISTING_CLUSTER=1`, e.g. kind through
scripts/test-on-kind.sh), where database Jobs run as real pods on real kubelets.

What the local test bed gives the tests by construction, a real cluster needs told:

- `REWIND_TEST_HOST_ADDRESS`: the address at which pods reach this machine (kind: its docker
  network's gateway). PostgreSQL and the S3 server listen there (as well as on loopback for
  nothing else), so the operator (a local process) and the Job pods use one and the same URL, and
  the test bed's ClusterRollbackPolicy lets the operator connect there.
- `REWIND_TEST_SHARED_DIR`: a directory of this machine mounted at the same path on every node
  (kind: `extraMounts`). A test's PVC is a hostPath PersistentVolume in it, so a backup the test
  writes is the file the Job pod reads, and the pre-rollback dump the pod writes is one the test
  can read. Its directories are world-writable: a hostPath volume gets no fsGroup, and the Job
  pods run as uid 999.
- `REWIND_TEST_AUDIT_LOG`: the API server's audit log, as a file here (kind: the control plane
  node's log directory mounted out), for the tests that count writes; without it they fail,
  saying so.
- `REWIND_TEST_PKI_DIR`: the cluster CA's `ca.crt` and `ca.key` (kind: copied out of the control
  plane node), for the tests that need distinct users with client certificates; without it they
  skip, saying so.

The images the Job pods run must be pullable by the nodes: `postgres:16`, and the operator's own
image as `rewind:0.1.0` (the `s3` container; kind: `kind load docker-image`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from rewind_testbed.jobrunner import JobRunner

HOST_ADDRESS = os.environ.get("REWIND_TEST_HOST_ADDRESS") or None
SHARED_DIR = os.environ.get("REWIND_TEST_SHARED_DIR") or None
AUDIT_LOG = os.environ.get("REWIND_TEST_AUDIT_LOG") or None
PKI_DIR = os.environ.get("REWIND_TEST_PKI_DIR") or None


def missing_for_jobs() -> list[str]:
    """What the database tests need on an existing cluster and were not told."""
    return [name for name, value in (("REWIND_TEST_HOST_ADDRESS", HOST_ADDRESS),
                                     ("REWIND_TEST_SHARED_DIR", SHARED_DIR)) if not value]


class ClusterJobs(JobRunner):
    """The `job_runner` fixture's interface where real kubelets run the Job pods: it runs nothing.
    A PVC is a hostPath PersistentVolume on the shared directory (create_pvc, pvc_dir, as the
    local runner's); a pod's output is read with `kubectl logs` when asked for."""

    def __init__(self, kubeconfig: Path, kubectl: str, shared: Path):
        super().__init__(kubeconfig, shared / "jobs", Path("/nonexistent"))
        self._kubectl = [kubectl, f"--kubeconfig={kubeconfig}"]
        for sub in ("pvc", "logs"):
            (self.root_dir / sub).mkdir(parents=True, exist_ok=True)
        for path in (shared, shared / "jobs", self.root_dir / "pvc"):
            path.chmod(0o1777)

    def create_pvc(self, namespace: str, claim: str, size: str = "1Gi", timeout: float = 60) -> Path:
        path = self.pvc_dir(namespace, claim)
        path.mkdir(parents=True, exist_ok=True)
        for p in (path.parent, path):
            p.chmod(0o1777)       # the pods' uid 999 writes here; a hostPath gets no fsGroup
        return super().create_pvc(namespace, claim, size, timeout)

    def log_path(self, namespace: str, pod: str) -> Path:
        path = super().log_path(namespace, pod)
        out = subprocess.run([*self._kubectl, "logs", pod, "-n", namespace, "--all-containers", "--prefix"],
                             capture_output=True, text=True, timeout=60)
        path.write_text(out.stdout + out.stderr)
        return path

    @property
    def log_file(self) -> Path:
        """Every Job pod's output so far, collected now (the local runner's own log has no
        counterpart: here a kubelet ran them)."""
        path = self.root_dir / "jobrunner.log"
        out = subprocess.run([*self._kubectl, "get", "pods", "-A", "-l", "rewind.dev/component=database-job",
                              "-o", "jsonpath={range .items[*]}{.metadata.namespace} {.metadata.name}{\"\\n\"}{end}"],
                             capture_output=True, text=True, timeout=60)
        parts = []
        for line in out.stdout.splitlines():
            if line.strip():
                ns, pod = line.split()
                parts.append(self.log_path(ns, pod).read_text())
        path.write_text("\n".join(parts))
        return path

    def start(self) -> "ClusterJobs":
        return self

    def stop(self, timeout: float = 30) -> None:
        if self._owns_api:
            self._api.close()
