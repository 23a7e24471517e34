from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import OPERATOR_NS, OPERATOR_SA, install_crds, install_operator_role

pytest_plugins = ["rewind_testbed.pytest_plugin"]


@pytest.fixture(scope="session")
def rollback_crd(cluster):
    """The committed CRDs and admission policies, installed the way a user installs them, and the
    test bed's ClusterRollbackPolicy (no approvals; the operator may connect to loopback only, where
    every test server listens). The authorization tests set their own policy in their namespace."""
    return install_crds(cluster)


@pytest.fixture(scope="session")
def operator_role(cluster, api_client):
    """The shipped ClusterRole (manifests/rbac.yaml) and a ServiceAccount for the operator. The
    tests bind it per namespace, so the operator can reach nothing outside the test's namespace."""
    return install_operator_role(cluster)


def _operator_kubeconfig(cluster, api_client, namespace: str, role: str, path: Path) -> Path:
    """A kubeconfig with a real ServiceAccount token; the role bound in `namespace` only."""
    from kubernetes import client

    client.RbacAuthorizationV1Api(api_client).create_namespaced_role_binding(namespace, {
        "metadata": {"name": "rewind-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]})
    return _service_account_kubeconfig(cluster, api_client, OPERATOR_NS, OPERATOR_SA, path,
                                       namespace=namespace)


def _service_account_kubeconfig(cluster, api_client, sa_namespace: str, sa_name: str, path: Path,
                                namespace: str | None = None) -> Path:
    """A kubeconfig (mode 0600) that authenticates as the ServiceAccount `sa_namespace/sa_name`
    with a real token from the TokenRequest API, as a pod of that ServiceAccount would; its
    context's default namespace is `namespace` (none when None). Binds nothing."""
    import yaml
    from kubernetes import client

    token = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        sa_name, sa_namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    ctx_name = admin["current-context"]
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == ctx_name)
    cl = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
    context = {"cluster": cl["name"], "user": "rewind-operator"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cl],
        "users": [{"name": "rewind-operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": context}],
        "current-context": "operator",
    }))
    path.chmod(0o600)
    return path


class Operator:
    """`rewind run` as a separate process, so a test can SIGKILL it and start it again.

    By default it watches `namespace` only, verbosely, with a short watch inactivity timeout.
    With `args` it runs the installed `rewind` program (the image's entrypoint) with exactly those
    arguments plus `--kubeconfig`, and the environment as it is: no --namespace, no --verbose,
    no test settings (for the manifests' own args, cluster-wide)."""

    def __init__(self, kubeconfig: Path, namespace: str | None, log: Path,
                 args: list[str] | None = None):
        self.kubeconfig, self.namespace, self.log = kubeconfig, namespace, log
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def command(self) -> list[str]:
        if self.args is None:
            return [sys.executable, "-m", "rewind.cli", "run", "--namespace", self.namespace,
                    "--kubeconfig", str(self.kubeconfig), "--verbose"]
        script = Path(sys.executable).with_name("rewind")   # the console script pip installed
        program = [str(script)] if script.exists() else [sys.executable, "-m", "rewind.cli"]
        return [*program, *self.args, "--kubeconfig", str(self.kubeconfig)]

    def start(self) -> "Operator":
        self.starts += 1
        out = open(self.log, "ab")
        out.write(f"\n===== operator start #{self.starts}: {' '.join(self.command())} =====\n".encode())
        out.flush()
        env = dict(os.environ)
        if self.args is None:
            env["REWIND_WATCH_INACTIVITY_TIMEOUT"] = "30"
        self.proc = subprocess.Popen(
            self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
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


@pytest.fixture
def operator_as(cluster, api_client, operator_role, tmp_path):
    """Factory: `operator_as(service_account, args)` -> an Operator (not started yet) running the
    `rewind` program with exactly `args` plus --kubeconfig, holding a real token of the
    ServiceAccount `service_account` in `operator_as.namespace` (rewind-test-system; the shipped
    ClusterRoles are in place). It binds nothing: the test binds what it means to test. Stopped
    at teardown."""
    started: list[Operator] = []

    def make(service_account: str, args: list[str]) -> Operator:
        kubeconfig = _service_account_kubeconfig(cluster, api_client, OPERATOR_NS, service_account,
                                                 tmp_path / f"{service_account}.kubeconfig")
        op = Operator(kubeconfig, None, tmp_path / f"{service_account}.log", args=args)
        print(f"operator: {' '.join(op.command())}\noperator log: {op.log}")
        started.append(op)
        return op

    make.namespace = OPERATOR_NS
    yield make
    for op in started:
        op.stop()
        if op.proc and op.proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
            print(op.output()[-5000:])


# --- on an existing cluster (REWIND_TEST_EXISTING_CLUSTER=1): what cannot run there says why ----

MADE_UP_IMAGES = re.compile(r"registry\.(local|example(\.com)?)/|testbed\.rewind\.dev/never-ready")


def pytest_collection_modifyitems(config, items):
    """On an existing cluster, a cluster test whose module deploys made-up images (registry.local/,
    registry.example.com/: the test bed's kwok nodes start any image and make its pods Ready; real
    kubelets cannot pull them, so the rollouts those tests wait for never end) is skipped with that
    reason, as is a test of the local test bed's own stand-ins; everything else runs there."""
    if os.environ.get("REWIND_TEST_EXISTING_CLUSTER") != "1":
        return
    sources: dict[str, bool] = {}
    for item in items:
        if item.get_closest_marker("test_bed_only"):
            item.add_marker(pytest.mark.skip(reason="it tests the local test bed's own stand-ins (kwok, "
                                                    "the Job runner), which an existing cluster does not use"))
            continue
        if item.get_closest_marker("made_up_images"):
            sources[str(item.path)] = True
        elif not (item.get_closest_marker("cluster") or "cluster" in getattr(item, "fixturenames", ())):
            continue
        path = str(item.path)
        if path not in sources:
            sources[path] = bool(MADE_UP_IMAGES.search(item.path.read_text(errors="replace")))
        if sources[path]:
            item.add_marker(pytest.mark.skip(reason=(
                "its workloads run made-up images that only the local test bed's kwok nodes start "
                "(real kubelets cannot pull them, so the rollouts it waits for never end)")))
