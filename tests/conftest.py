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
RBAC = REPO / "manifests" / "rbac.yaml"
OPERATOR_NS = "rewind-test-system"
OPERATOR_SA = "rewind-operator"


@pytest.fixture(scope="session")
def rollback_crd(cluster):
    """The committed CRD, installed the way a user installs it."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/rollbacks.rewind.dev")
    wait_for("rollbacks served", lambda: cluster.kubectl(
        "get", "rollbacks", "-A", check=False).returncode == 0, timeout=30)
    return CRD


@pytest.fixture(scope="session")
def operator_role(cluster, api_client):
    """The shipped ClusterRole (manifests/rbac.yaml) and a ServiceAccount for the operator. The
    tests bind it per namespace, so the operator can reach nothing outside the test's namespace."""
    import yaml

    docs = list(yaml.safe_load_all(RBAC.read_text()))
    roles = [d for d in docs if d["kind"] == "ClusterRole"]
    discovery = next(d for d in docs if d["kind"] == "ClusterRoleBinding"
                     and d["metadata"]["name"] == "rewind-operator-discovery")
    discovery["subjects"] = [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]
    cluster.kubectl("create", "namespace", OPERATOR_NS, check=False)
    cluster.kubectl("create", "serviceaccount", OPERATOR_SA, "-n", OPERATOR_NS, check=False)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([*roles, discovery]))
    return "rewind-operator"


def _operator_kubeconfig(cluster, api_client, namespace: str, role: str, path: Path) -> Path:
    """A kubeconfig with a real ServiceAccount token; the role bound in `namespace` only."""
    import yaml
    from kubernetes import client

    client.RbacAuthorizationV1Api(api_client).create_namespaced_role_binding(namespace, {
        "metadata": {"name": "rewind-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]})
    token = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        OPERATOR_SA, OPERATOR_NS, {"spec": {"expirationSeconds": 3600}}).status.token
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    ctx_name = admin["current-context"]
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == ctx_name)
    cl = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cl],
        "users": [{"name": "rewind-operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cl["name"], "user": "rewind-operator",
                                                      "namespace": namespace}}],
        "current-context": "operator",
    }))
    path.chmod(0o600)
    return path


class Operator:
    """`rewind run` as a separate process, so a test can SIGKILL it and start it again."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path):
        self.kubeconfig, self.namespace, self.log = kubeconfig, namespace, log
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
             "--kubeconfig", str(self.kubeconfig), "--verbose"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        out.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the operator stops wherever it is, mid-step, until killed or thawed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

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
def idle_operator(cluster, api_client, namespace, rollback_crd, operator_role, tmp_path):
    """`rewind run` for the test's namespace, as a ServiceAccount with the shipped role; not
    started yet (the test calls .start())."""
    kubeconfig = _operator_kubeconfig(cluster, api_client, namespace, operator_role,
                                      tmp_path / "operator.kubeconfig")
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log")
    print(f"operator log: {op.log}")
    yield op
    op.stop()
    if op.proc and op.proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
        print(op.output()[-5000:])


@pytest.fixture
def operator(idle_operator):
    """The operator, running."""
    return idle_operator.start()
