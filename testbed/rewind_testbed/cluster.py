"""The local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake kubelets), all on loopback with TLS, RBAC and free ports.

    with ControlPlane.start(run_dir) as cp:
        print(cp.kubeconfig)

Every component writes its log to `run_dir/logs/<name>.log`; errors name that file.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from rewind_testbed import pki as pkimod
from rewind_testbed.procs import Proc, free_port, wait_until

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE.parent / "build.sh"
KWOK_STAGES = HERE / "kwok-stages.yaml"
AUDIT_POLICY = HERE / "audit-policy.yaml"
NODE_COUNT = 2


def build_binaries() -> Path:
    """Builds (or finds in the cache) the control-plane binaries; returns their directory."""
    override = os.environ.get("REWIND_TESTBED_BIN")
    if override:
        return Path(override)
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


def _write_kubeconfig(path: Path, server: str, pki: pkimod.Pki) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rewind-testbed", "cluster": {
            "server": server, "certificate-authority": str(pki.ca_crt)}}],
        "users": [{"name": "admin", "user": {
            "client-certificate": str(pki.admin_crt), "client-key": str(pki.admin_key)}}],
        "contexts": [{"name": "rewind-testbed", "context": {
            "cluster": "rewind-testbed", "user": "admin"}}],
        "current-context": "rewind-testbed",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


@dataclass
class ControlPlane:
    run_dir: Path
    bin_dir: Path
    pki: pkimod.Pki
    api_port: int
    kubeconfig: Path
    procs: list[Proc] = field(default_factory=list)
    # False: no kwok and no fake nodes, for a real kubelet to join (node.py).
    fake_nodes: bool = True
    # Where pods reach the API server (a real node's bridge): it listens on every address and
    # publishes this one as the `kubernetes` Service's endpoint, for kube-proxy to route to.
    pod_address: str | None = None
    # None: AUDIT_POLICY (writes with their bodies; no reads).
    audit_policy: Path | None = None
    _etcd: Proc | None = field(default=None, repr=False)
    _api: Proc | None = field(default=None, repr=False)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def audit_log(self) -> Path:
        """JSON lines, one per mutating request (see audit-policy.yaml)."""
        return self.log_dir / "audit.jsonl"

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            check=check, capture_output=True, text=True, input=input, timeout=timeout,
        )

    def _client(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(str(self.pki.admin_crt), str(self.pki.admin_key))
        return httpx.Client(base_url=self.server, verify=ctx, timeout=5)

    @classmethod
    def start(cls, run_dir: Path, bin_dir: Path | None = None, fake_nodes: bool = True,
              pod_address: str | None = None, audit_policy: Path | None = None) -> "ControlPlane":
        bin_dir = bin_dir or build_binaries()
        run_dir.mkdir(parents=True, exist_ok=True)
        pki = pkimod.generate(run_dir / "pki")
        cp = cls(run_dir=run_dir, bin_dir=bin_dir, pki=pki, api_port=free_port(),
                 kubeconfig=run_dir / "admin.kubeconfig", fake_nodes=fake_nodes, pod_address=pod_address,
                 audit_policy=audit_policy)
        try:
            cp._start_all()
        except BaseException:
            cp.stop()
            raise
        return cp

    def _proc(self, name: str, *args: str) -> Proc:
        p = Proc(name, [str(self.bin_dir / name), *args], self.log_dir / f"{name}.log")
        p.start()
        self.procs.append(p)
        return p

    def _start_all(self) -> None:
        t0 = time.monotonic()
        etcd_port, peer_port = free_port(), free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        etcd = self._proc(
            "etcd",
            "--name=node0", f"--data-dir={self.run_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=node0={peer_url}",
            "--unsafe-no-fsync=true", "--quota-backend-bytes=8589934592",
            "--auto-compaction-retention=1", "--log-level=warn",
        )
        wait_until("etcd /health", lambda: httpx.get(f"{etcd_url}/health", timeout=2)
                   .json().get("health") == "true", 60, [etcd])

        pki = self.pki
        api = self._proc(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            *(["--bind-address=0.0.0.0", f"--advertise-address={self.pod_address}"] if self.pod_address
              else ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                    "--endpoint-reconciler-type=none"]),
            f"--secure-port={self.api_port}",
            f"--tls-cert-file={pki.apiserver_crt}", f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_crt}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--max-requests-inflight=0", "--max-mutating-requests-inflight=0",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            f"--audit-policy-file={self.audit_policy or AUDIT_POLICY}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
            # To a real kubelet (logs, exec), as the admin; the kubelet checks it against the CA.
            f"--kubelet-client-certificate={pki.admin_crt}", f"--kubelet-client-key={pki.admin_key}",
            "--kubelet-preferred-address-types=InternalIP",
        )
        self._etcd, self._api = etcd, api
        _write_kubeconfig(self.kubeconfig, self.server, pki)
        self._wait_apiserver_ready()

        common = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        ]
        kcm = self._proc(
            "kube-controller-manager", *common, f"--secure-port={free_port()}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_crt}",
            "--controllers=*",
        )
        sched = self._proc("kube-scheduler", *common, f"--secure-port={free_port()}")
        watched = [etcd, api, kcm, sched]
        if self.fake_nodes:
            watched.append(self._proc(
                "kwok", f"--kubeconfig={self.kubeconfig}", f"--config={KWOK_STAGES}",
                "--manage-all-nodes=true", "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{free_port()}",
            ))
            self._create_nodes()
            wait_until("fake nodes Ready", self._nodes_ready, 120, watched)
        # The service-account controller creates `default` in each namespace; Pods need it.
        wait_until("default ServiceAccount", lambda: self.kubectl(
            "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
            120, watched)
        self.started_in = time.monotonic() - t0

    def _wait_apiserver_ready(self) -> None:
        with self._client() as client:
            wait_until("kube-apiserver /readyz",
                       lambda: client.get("/readyz").status_code == 200, 120, [self._etcd, self._api])

    def _named(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)

    def stop_process(self, name: str, kill: bool = False) -> None:
        """One component (kube-apiserver, kube-controller-manager, ...) goes away: SIGTERM, or
        SIGKILL with `kill` (its machine failed). The others stay, and reconnect once it is back."""
        self._named(name).stop(sig=signal.SIGKILL if kill else signal.SIGTERM)

    def start_process(self, name: str) -> None:
        """The same component again: same arguments, ports, certificates, etcd and logs (the API
        server's audit log goes on in the same file). Returns once the API server is ready."""
        old = self._named(name)
        new = Proc(old.name, old.argv, old.log)
        new.start()
        self.procs[self.procs.index(old)] = new
        if old is self._api:
            self._api = new
            self._wait_apiserver_ready()

    def _create_nodes(self) -> None:
        nodes = []
        for i in range(NODE_COUNT):
            nodes.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": f"kwok-node-{i}",
                    "labels": {"type": "kwok", "kubernetes.io/hostname": f"kwok-node-{i}",
                               "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                },
                "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                           "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}},
            })
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))

    def _nodes_ready(self) -> bool:
        out = self.kubectl(
            "get", "nodes", "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{' '}{end}",
            check=False,
        ).stdout.split()
        return len(out) == NODE_COUNT and all(s == "True" for s in out)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        shutil.rmtree(self.run_dir / "etcd", ignore_errors=True)

    def __enter__(self) -> "ControlPlane":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
