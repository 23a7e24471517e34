"""A real node for the test control plane: kubelet on containerd and runc, on this machine.

The local test bed's nodes are kwok's: pods on them run nothing (the Job runner plays the database
Jobs' pods as local processes). This node runs pods for real: containerd pulls nothing (no
registry is reachable) but holds the images nodeimage.py built, runc starts each container in its
own namespaces and cgroups with the pod's user, seccomp profile, read-only root filesystem and
volumes, and kubelet reports what happened (exit codes, termination messages, logs) as on any
cluster. It is what scripts/test-on-real-node.sh runs the suite against, in the mode an existing
cluster gets (REWIND_TEST_EXISTING_CLUSTER=1).

Its pod network is a bridge with one subnet, its gateway this machine, with no masquerading: pods
reach this machine (at the bridge's address, HOST_ADDRESS, where the tests' PostgreSQL and S3
server listen) and nothing beyond it. With a control plane that publishes itself there (ControlPlane.pod_address),
kube-proxy routes the `kubernetes` Service to the API server, so an operator can run in a pod;
CoreDNS on the bridge's address is the cluster DNS (Service names only; nothing outside).
The kubelet serves its API on the bridge's address only, to clients with a certificate from the
test bed's CA (the API server, as admin), and authorizes them through the API server.

Needs root (namespaces, cgroups, mounts) on a Linux host with cgroups (v1 or v2) and overlayfs.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from rewind_testbed import pki as pkimod
from rewind_testbed.cluster import ControlPlane
from rewind_testbed.procs import Proc, free_port, wait_until

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE.parent / "build-node.sh"
NODE_NAME = "rewind-node"
BRIDGE = "rwnode0"
SUBNET = "10.213.0.0/24"
HOST_ADDRESS = "10.213.0.1"      # the bridge's address: the node's, and where pods reach this machine
NAMESPACE = "k8s.io"             # containerd's namespace for the CRI
LOCK = "/run/rewind-real-node.lock"


def build_binaries() -> Path:
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@dataclass
class RealNode:
    cp: ControlPlane
    run_dir: Path
    bin_dir: Path
    procs: list[Proc] = field(default_factory=list)
    _lock: object = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        # A unix socket path has at most 107 bytes: a short one under /run, not in run_dir.
        return Path("/run") / f"rwnode-{self.cp.api_port}" / "containerd.sock"

    @classmethod
    def start(cls, cp: ControlPlane, run_dir: Path, images: list[Path]) -> "RealNode":
        if os.geteuid() != 0:
            raise RuntimeError("a real node needs root (namespaces, cgroups, mounts)")
        node = cls(cp=cp, run_dir=run_dir, bin_dir=build_binaries())
        # One real node per machine: they would share the bridge, iptables' chains and the
        # kubepods cgroups. The lock is held until stop() has undone all of it.
        node._lock = open(LOCK, "w")
        deadline = time.monotonic() + 120      # one that is stopping gets the time to finish
        while True:
            try:
                fcntl.flock(node._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    node._lock.close()
                    raise RuntimeError(f"another real node runs on this machine (it holds {LOCK}); "
                                       "stop it first") from None
                time.sleep(0.5)
        try:
            node._start(images)
        except BaseException:
            node.stop()
            raise
        return node

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin_dir / "ctr"), f"--address={self.socket}", "-n", NAMESPACE, *args],
                              check=check, capture_output=True, text=True, timeout=timeout)

    def _start(self, images: list[Path]) -> None:
        t0 = time.monotonic()
        d = self.run_dir
        for sub in ("containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "logs"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self._bridge()

        (d / "cni/net.d/10-rewind-node.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "rewind-node",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": True,
                         "ipMasq": False,
                         "ipam": {"type": "host-local", "dataDir": str(d / "cni/ipam"),
                                  "ranges": [[{"subnet": SUBNET, "gateway": HOST_ADDRESS}]]}}],
        }, indent=2))
        config = d / "containerd/config.toml"
        config.write_text(f"""version = 3
root = "{d / 'containerd/root'}"
state = "{self.socket.parent / 'state'}"
[grpc]
  address = "{self.socket}"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{_pause_image()}"
[plugins.'io.containerd.cri.v1.runtime']
  # Some sandboxes (these machines' among them) refuse a negative oom_score_adj even to root;
  # kubelet asks -998 for every pod sandbox. No lower than containerd's own, then.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{self.bin_dir / 'runc'}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{self.bin_dir / 'cni'}"]
    conf_dir = "{d / 'cni/net.d'}"
""")
        env = {**os.environ, "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        containerd = self._proc("containerd", [str(self.bin_dir / "containerd"), f"--config={config}"], env)
        wait_until("containerd", lambda: self.ctr("version", check=False).returncode == 0, 60, [containerd])
        for image in images:
            self.ctr("images", "import", "--no-unpack", str(image))

        self._dns(env)
        kubeconfig = self._kubelet_kubeconfig()
        port = free_port()
        kubelet_config = d / "kubelet/config.yaml"
        kubelet_config.write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": HOST_ADDRESS, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": free_port(),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.cp.pki.ca_crt)}},
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "podLogsDir": str(d / "pod-logs"),
            "clusterDNS": [HOST_ADDRESS], "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            # Its images are imported, never pulled: nothing may collect them, nothing evicts.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "maxPods": 250,
            "oomScoreAdj": 0,    # its own; see restrict_oom_score_adj above
            "registerNode": True,
        }))
        self._proc("kubelet", [
            str(self.bin_dir / "kubelet"), f"--config={kubelet_config}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={d / 'kubelet/root'}", f"--cert-dir={d / 'kubelet/pki'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={HOST_ADDRESS}", "--v=1",
        ], env)
        wait_until("the real node Ready", self._ready, 120, self.procs, interval=1)
        if self.cp.pod_address:
            self._kube_proxy(env)
        self.started_in = time.monotonic() - t0

    def _dns(self, env: dict) -> None:
        """The cluster DNS, CoreDNS with its `kubernetes` plugin, on the bridge's address: Service
        names resolve as in any cluster (kopf's in-cluster login goes to kubernetes.default.svc),
        and nothing else does (no upstream: the pods reach nothing outside)."""
        user = "system:rewind-test-dns"
        self.cp.kubectl("create", "clusterrole", "rewind-test-dns", "--verb=get,list,watch",
                        "--resource=services,endpoints,namespaces,pods,endpointslices.discovery.k8s.io", check=False)
        self.cp.kubectl("create", "clusterrolebinding", "rewind-test-dns", "--clusterrole=rewind-test-dns",
                        f"--user={user}", check=False)
        kubeconfig = pkimod.user_kubeconfig(self.cp.pki, self.cp.kubeconfig, user, [], self.run_dir / "dns")
        corefile = self.run_dir / "dns/Corefile"
        health = free_port()
        corefile.write_text(f"""cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {HOST_ADDRESS}
    errors
    health 127.0.0.1:{health}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
    }}
    cache 30
}}
""")
        dns = self._proc("coredns", [str(self.bin_dir / "coredns"), "-conf", str(corefile)], env)
        wait_until("CoreDNS", lambda: httpx.get(f"http://127.0.0.1:{health}/health", timeout=2).status_code == 200,
                   60, [dns], interval=0.5)

    def _kube_proxy(self, env: dict) -> None:
        """Services for the node's pods (iptables rules): what lets a pod reach the API server at
        the `kubernetes` Service, as an operator running in the cluster does."""
        user = "system:kube-proxy"
        self.cp.kubectl("create", "clusterrolebinding", "rewind-test-node-proxier",
                        "--clusterrole=system:node-proxier", f"--user={user}", check=False)
        kubeconfig = pkimod.user_kubeconfig(self.cp.pki, self.cp.kubeconfig, user, [], self.run_dir / "kube-proxy")
        health = free_port()
        config = self.run_dir / "kube-proxy/config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables", "clusterCIDR": SUBNET, "hostnameOverride": NODE_NAME,
            "healthzBindAddress": f"127.0.0.1:{health}", "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # Leave the machine's conntrack settings alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }))
        proxy = self._proc("kube-proxy", [str(self.bin_dir / "kube-proxy"), f"--config={config}"], env)
        wait_until("kube-proxy's rules", lambda: _iptables_has("KUBE-SERVICES"), 60, [proxy], interval=0.5)

    def _proc(self, name: str, argv: list[str], env: dict) -> Proc:
        p = Proc(name, argv, self.run_dir / "logs" / f"{name}.log", env=env)
        p.start()
        self.procs.append(p)
        return p

    def _bridge(self) -> None:
        """The pod network's bridge, with this machine's address on it, before any pod: the tests'
        servers listen on that address from the start."""
        if _ip("link", "show", BRIDGE, check=False).returncode != 0:
            _ip("link", "add", BRIDGE, "type", "bridge")
        if HOST_ADDRESS not in _ip("-4", "addr", "show", BRIDGE).stdout:
            _ip("addr", "add", f"{HOST_ADDRESS}/{SUBNET.split('/')[1]}", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")

    def _kubelet_kubeconfig(self) -> Path:
        """The kubelet's credentials: system:node:<name> in system:nodes, bound to the
        system:node ClusterRole (the API server authorizes by RBAC alone)."""
        user = f"system:node:{NODE_NAME}"
        self.cp.kubectl("create", "clusterrolebinding", "rewind-test-node", "--clusterrole=system:node",
                        f"--user={user}", check=False)
        return pkimod.user_kubeconfig(self.cp.pki, self.cp.kubeconfig, user, ["system:nodes"],
                                      self.run_dir / "kubelet")

    def _ready(self) -> bool:
        out = self.cp.kubectl("get", "node", NODE_NAME, "-o",
                              "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
        return out.stdout.strip() == "True"

    def stop(self) -> None:
        """Kills every container the node started (containerd's shims outlive containerd), stops
        kubelet and containerd, unmounts what they mounted and removes the bridge."""
        kubelet = [p for p in self.procs if p.name == "kubelet"]
        for p in kubelet:
            p.stop()
        if any(p.name == "containerd" and p.alive() for p in self.procs):
            tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
            for task in tasks:
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=30)
            deadline = time.monotonic() + 20
            for task in tasks:
                while self.ctr("tasks", "delete", task, check=False, timeout=30).returncode != 0 \
                        and time.monotonic() < deadline:
                    time.sleep(0.5)
            for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.ctr("containers", "delete", container, check=False, timeout=30)
        proxied = any(p.name == "kube-proxy" for p in self.procs)
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        if proxied:    # its iptables rules, gone
            subprocess.run([str(self.bin_dir / "kube-proxy"), "--cleanup"], capture_output=True, timeout=60)
        _remove_kube_chains()    # and kubelet's (KUBE-FIREWALL, the canaries)
        for root in (self.run_dir, self.socket.parent):
            for mount in sorted(_mounts_under(root), key=len, reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True)
        _ip("link", "del", BRIDGE, check=False)
        shutil.rmtree(self.socket.parent, ignore_errors=True)
        if self._lock:
            self._lock.close()     # and with it the lock
            self._lock = None


def _pause_image() -> str:
    from rewind_testbed.nodeimage import PAUSE_IMAGE
    return PAUSE_IMAGE


def _remove_kube_chains() -> None:
    """Every KUBE-* chain, and every rule that jumps to one, in each table of iptables and
    ip6tables: what kubelet and kube-proxy leave behind (only one real node runs per machine)."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            listed = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True)
            if listed.returncode != 0:
                continue
            lines = listed.stdout.splitlines()
            for rule in lines:
                parts = shlex.split(rule)
                if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1].startswith("KUBE-") \
                        and not parts[1].startswith("KUBE-"):
                    subprocess.run([tool, "-t", table, "-D", *parts[1:]], capture_output=True)
            chains = [line.split()[1] for line in lines if line.startswith("-N KUBE-")]
            for chain in chains:
                subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
            for chain in chains:
                subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)


def _iptables_has(chain: str) -> bool:
    return subprocess.run(["iptables", "-t", "nat", "-S", chain], capture_output=True).returncode == 0


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    return [p for p in points if p.startswith(prefix)]
