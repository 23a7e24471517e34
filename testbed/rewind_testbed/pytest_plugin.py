"""pytest fixtures for the test bed: the control plane, an API client, a fresh namespace per test,
a PostgreSQL server and a fresh database per test, and the job runner that stands in for the kubelet
of database Job pods.

By default the bed is local (built and started by the harness). To run the same tests against an
existing cluster (kind, say), set REWIND_TEST_EXISTING_CLUSTER=1 and point KUBECONFIG at it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rewind_testbed.alertmanager import Alertmanager
from rewind_testbed.s3server import S3Server
from rewind_testbed.cluster import ControlPlane
from rewind_testbed.postgres import PostgresServer, find_bindir


@dataclass
class Cluster:
    """What a test sees of a cluster, local or external."""

    kubeconfig: Path
    kubectl_bin: str
    log_dir: Path | None = None
    audit_log: Path | None = None
    pki_dir: Path | None = None          # the local control plane's CA (None on an external cluster)

    def user_kubeconfig(self, username: str, groups: list[str], directory: Path) -> Path:
        """A kubeconfig for a distinct user with a client certificate from the test bed's CA."""
        from rewind_testbed import pki as pkimod

        if self.pki_dir is None:
            pytest.skip("distinct users need the local test bed's CA to sign client certificates; "
                        "an existing cluster's authentication is not ours to extend")
        return pkimod.user_kubeconfig(pkimod.Pki(self.pki_dir), self.kubeconfig, username, groups, directory)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True, text=True, input=input, timeout=timeout,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}): "
                                 f"{out.stderr.strip()}")
        return out


def _external() -> bool:
    return os.environ.get("REWIND_TEST_EXISTING_CLUSTER") == "1"


def _host_address() -> str | None:
    """Where an existing cluster's pods reach this machine (rewind_testbed/external.py)."""
    return os.environ.get("REWIND_TEST_HOST_ADDRESS") if _external() else None


@pytest.fixture(scope="session")
def bed_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="rewind-bed-"))
    os.chmod(path, 0o755)
    # kubectl caches API discovery per server address (~/.kube/cache); an earlier session's API
    # server on the same port, with other CRDs, made `kubectl get rollbackapproval` resolve to a
    # group this session does not serve. Each session has its own cache.
    os.environ["KUBECACHEDIR"] = str(path / "kubectl-cache")
    yield path
    if os.environ.get("REWIND_KEEP_BED") != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(bed_dir: Path) -> Cluster:
    if _external():
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig:
            pytest.fail("REWIND_TEST_EXISTING_CLUSTER=1 needs KUBECONFIG to point at the cluster")
        from rewind_testbed import external
        yield Cluster(Path(kubeconfig), shutil.which("kubectl") or "kubectl",
                      audit_log=Path(external.AUDIT_LOG) if external.AUDIT_LOG else None,
                      pki_dir=Path(external.PKI_DIR) if external.PKI_DIR else None)
        return
    cp = ControlPlane.start(bed_dir / "cluster")
    print(f"\ntest control plane up in {cp.started_in:.1f}s; logs in {cp.log_dir}")
    try:
        yield Cluster(cp.kubeconfig, str(cp.bin_dir / "kubectl"), cp.log_dir, cp.audit_log, cp.pki.dir)
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def api_client(cluster: Cluster):
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


def _ns_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{base}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(request, api_client) -> str:
    """A fresh namespace for one test (with its `default` ServiceAccount), deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    name = _ns_name(request.node.name)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"rewind.dev/test": "true"})))
    deadline = time.monotonic() + 60
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except client.ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield name
    _release_rollbacks(api_client, name)
    try:
        core.delete_namespace(name)
    except client.ApiException as e:
        if e.status != 404:
            raise


def _release_rollbacks(api_client, namespace: str) -> None:
    """The test's operator is gone by now: without this, kopf's finalizer would hold its Rollbacks
    (and the namespace, in Terminating) for the rest of the session, where a later cluster-wide
    operator would find them."""
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    try:
        items = api.list_namespaced_custom_object("rewind.dev", "v1alpha1", namespace, "rollbacks")["items"]
    except client.ApiException:
        return    # no Rollback CRD in this session
    for rb in items:
        if rb["metadata"].get("finalizers"):
            try:
                api.patch_namespaced_custom_object("rewind.dev", "v1alpha1", namespace, "rollbacks",
                                                   rb["metadata"]["name"], {"metadata": {"finalizers": None}})
            except client.ApiException as e:
                if e.status != 404:
                    raise


@pytest.fixture(scope="session")
def postgres(bed_dir: Path) -> PostgresServer:
    server = PostgresServer.start(bed_dir / "postgres", host=_host_address() or "127.0.0.1")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database(request, postgres: PostgresServer) -> str:
    """A fresh database for one test; yields its name (dsn via postgres.dsn(name))."""
    name = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower())[:40] + "_" + secrets.token_hex(3)
    postgres.create_database(name)
    yield name
    postgres.drop_database(name)


@pytest.fixture(scope="session")
def alertmanager(bed_dir: Path) -> Alertmanager:
    """A real Alertmanager on loopback, its API at `alertmanager.url`; its receiver sends nothing."""
    am = Alertmanager.start(bed_dir / "alertmanager")
    print(f"\nAlertmanager up at {am.url}; log in {am.log}")
    try:
        yield am
    finally:
        am.stop()


@pytest.fixture(scope="session")
def s3_server(bed_dir: Path) -> S3Server:
    """A real S3 server (the Versity S3 Gateway) on loopback over HTTPS, its certificate from a CA
    of its own (`s3_server.ca_pem`); objects are files under `s3_server.data_dir`."""
    server = S3Server.start(bed_dir / "s3", host=_host_address() or "localhost")
    print(f"\nS3 server up at {server.endpoint}; log in {server.log}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def job_runner(cluster: Cluster, postgres: PostgresServer, bed_dir: Path):
    """Runs the containers of pods labelled rewind.dev/component=database-job as local processes
    with the local PostgreSQL tools, as their kubelet (see jobrunner.py). A test puts a backup
    "on a PVC" by writing to `job_runner.pvc_dir(namespace, claim)`; a pod's output is in
    `job_runner.log_path(namespace, pod)`."""
    if _external():
        from rewind_testbed import external
        missing = external.missing_for_jobs()
        if missing:
            pytest.skip(f"database Jobs run as real pods on an existing cluster only with {' and '.join(missing)} "
                        "set (where pods reach this machine, a directory every node mounts at the same "
                        "path: scripts/test-on-kind.sh sets both)")
        runner = external.ClusterJobs(cluster.kubeconfig, cluster.kubectl_bin,
                                      Path(tempfile.mkdtemp(prefix="rewind-jobs-", dir=external.SHARED_DIR))).start()
        print(f"\ndatabase Jobs run as real pods; PVCs under {runner.root_dir / 'pvc'}")
        yield runner
        runner.stop()
        return
    from rewind_testbed.jobrunner import JobRunner

    runner = JobRunner(cluster.kubeconfig, bed_dir / "jobs", find_bindir()).start()
    print(f"\njob runner up; database Job pod logs in {runner.root_dir / 'logs'}")
    try:
        yield runner
    finally:
        runner.stop()
