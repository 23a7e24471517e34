from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import wait_for

pytest_plugins = ["rewind_testbed.pytest_plugin"]

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "rollbacks.rewind.dev.yaml"


@pytest.fixture(scope="session")
def rollback_crd(cluster):
    """The committed CRD, installed the way a user installs it."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/rollbacks.rewind.dev")
    wait_for("rollbacks served", lambda: cluster.kubectl(
        "get", "rollbacks", "-A", check=False).returncode == 0, timeout=30)
    return CRD


class Operator:
    """`rewind run` as a separate process, so a test can SIGKILL it and start it again."""

    def __init__(self, cluster, namespace: str, log: Path):
        self.cluster, self.namespace, self.log = cluster, namespace, log
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "Operator":
        self.starts += 1
        out = open(self.log, "ab")
        out.write(f"\n===== operator start #{self.starts} =====\n".encode())
        out.flush()
        env = {**os.environ, "REWIND_WATCH_INACTIVITY_TIMEOUT": "30"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rewind.cli", "run", "--namespace", self.namespace,
             "--kubeconfig", str(self.cluster.kubeconfig), "--verbose"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        out.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def operator(cluster, namespace, rollback_crd, tmp_path):
    op = Operator(cluster, namespace, tmp_path / "operator.log").start()
    print(f"operator log: {op.log}")
    yield op
    op.stop()
    if op.proc and op.proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
        print(op.output()[-5000:])
