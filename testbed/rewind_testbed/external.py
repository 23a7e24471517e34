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
import threading
import time
from pathlib import Path

from rewind_testbed.jobrunner import LABEL_SELECTOR, JobRunner

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
    local runner's). A watch of the database Job pods saves each one's output (`kubectl logs`) to
    log_path as its containers end, before the operator deletes its Job (and the pod with it), so
    tests read pod logs, and count the pods that ran, as they do with the local runner; the
    runner's own log lists them."""

    def __init__(self, kubeconfig: Path, kubectl: str, shared: Path):
        super().__init__(kubeconfig, shared / "jobs", Path("/nonexistent"))
        self._kubectl = [kubectl, f"--kubeconfig={kubeconfig}"]
        for sub in ("pvc", "logs"):
            (self.root_dir / sub).mkdir(parents=True, exist_ok=True)
        for path in (shared, shared / "jobs", self.root_dir / "pvc"):
            path.chmod(0o1777)
        self._saved: dict[str, int] = {}     # pod uid -> containers ended when its logs were saved

    def create_pvc(self, namespace: str, claim: str, size: str = "1Gi", timeout: float = 60) -> Path:
        path = self.pvc_dir(namespace, claim)
        path.mkdir(parents=True, exist_ok=True)
        for p in (path.parent, path):
            p.chmod(0o1777)       # the pods' uid 999 writes here; a hostPath gets no fsGroup
        return super().create_pvc(namespace, claim, size, timeout)

    def _save_logs(self, namespace: str, pod: str) -> Path:
        path = super().log_path(namespace, pod)
        out = subprocess.run([*self._kubectl, "logs", pod, "-n", namespace, "--all-containers", "--prefix"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0 or not path.exists():
            path.write_text(out.stdout + out.stderr)
        return path

    def _watch(self) -> None:
        from kubernetes import watch

        while not self._stopping.is_set():
            try:
                for event in watch.Watch().stream(self.core.list_pod_for_all_namespaces,
                                                  label_selector=LABEL_SELECTOR,
                                                  timeout_seconds=self._watch_timeout):
                    pod = event["object"]
                    statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
                    ended = sum(1 for c in statuses if c.state and c.state.terminated)
                    uid = pod.metadata.uid
                    if ended and (ended > self._saved.get(uid, 0) or pod.metadata.deletion_timestamp):
                        self._saved[uid] = ended
                        self._save_logs(pod.metadata.namespace, pod.metadata.name)
                        with self.log_file.open("a") as f:
                            f.write(f"{pod.metadata.namespace}/{pod.metadata.name}: {ended} container(s) "
                                    f"ended, phase {pod.status.phase}\n")
                    if self._stopping.is_set():
                        return
            except Exception as e:  # noqa: BLE001 - the next round lists again
                with self.log_file.open("a") as f:
                    f.write(f"watch: {type(e).__name__}: {e}\n")
                time.sleep(1)

    def start(self) -> "ClusterJobs":
        self.log_file.touch()
        self._thread = threading.Thread(target=self._watch, name="cluster-jobs", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        self._stopping.set()
        if self._thread:
            self._thread.join(timeout)
        if self._owns_api:
            self._api.close()
