"""What the benchmarks share: the local control plane with the operator running as its own
ServiceAccount (the shipped ClusterRole, bound in the benchmark's namespace only, as the tests do),
a second identity for the person at the keyboard ("oncall"), Deployments with real revision
history, waiting for a settled state, the API server's audit log, and small statistics.

Not a test helper: tests have their own fixtures (tests/conftest.py); this mirrors them for scripts.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rewind_testbed.cluster import ControlPlane, build_binaries
from rewind_testbed.install import PERMISSIVE, install

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RBAC = REPO / "manifests" / "rbac.yaml"
SYSTEM_NS = "rewind-bench-system"
OPERATOR_SA = "rewind-operator"
ONCALL_SA = "oncall"
OPERATOR_USER = f"system:serviceaccount:{SYSTEM_NS}:{OPERATOR_SA}"
ONCALL_USER = f"system:serviceaccount:{SYSTEM_NS}:{ONCALL_SA}"
# Every request of the operator and of the person, reads included, at Metadata level (verb, user,
# user agent, URI, object, answer); nothing of anyone else (the controllers, kwok, the job runner
# all run as the admin user and would only slow the API server down).
AUDIT_ALL_POLICY = HERE / "audit-policy-requests.yaml"


def source_revision() -> dict:
    """Which operator code is measured: the commit, and whether operator/ differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()
    import rewind
    return {"commit": git("rev-parse", "HEAD"), "subject": git("log", "-1", "--format=%s"),
            "operator_dirty": bool(git("status", "--porcelain", "--", "operator", "crds", "manifests")),
            "rewind_package": str(Path(rewind.__file__).parent), "loadavg_at_start": os.getloadavg()}


# --- statistics ----------------------------------------------------------------------------------


def spread(values: list[float]) -> dict:
    """Median, quartiles (inclusive method) and extremes, rounded to milliseconds."""
    v = sorted(values)
    q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else (v[0], v[0], v[0])
    return {"n": len(v), "median": round(statistics.median(v), 3), "q1": round(q1, 3),
            "q3": round(q3, 3), "min": round(v[0], 3), "max": round(v[-1], 3)}


def fmt_spread(s: dict, unit: str = "s", digits: int = 2) -> str:
    f = f"{{:.{digits}f}}"
    return (f"{f.format(s['median'])}{unit} (IQR {f.format(s['q1'])}-{f.format(s['q3'])}, "
            f"range {f.format(s['min'])}-{f.format(s['max'])}, n={s['n']})")


# --- the bed -------------------------------------------------------------------------------------


def kubeconfig_for(cp: ControlPlane, token: str, path: Path, user: str, namespace: str = "default") -> Path:
    admin = yaml.safe_load(Path(cp.kubeconfig).read_text())
    cl = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cl],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cl["name"], "user": user, "namespace": namespace}}],
        "current-context": user}))
    path.chmod(0o600)
    return path


@dataclass
class Bed:
    """The control plane, the CRD, the operator's ServiceAccount and ClusterRoles, and the
    person's identity (cluster-admin, its own user so that its requests can be told apart)."""

    cp: ControlPlane
    run_dir: Path
    oncall_kubeconfig: Path
    operator_kubeconfig: Path | None = None
    operator: subprocess.Popen | None = None
    namespaces: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, run_dir: Path, audit_all: bool = False) -> "Bed":
        bin_dir = build_binaries()
        # The test bed's policy logs writes only; the request count needs reads too.
        cp = ControlPlane.start(run_dir / "cluster", bin_dir, audit_policy=AUDIT_ALL_POLICY if audit_all else None)
        try:
            install(cp.kubectl, PERMISSIVE)     # CRDs, admission policies, a policy with no approvals
            docs = list(yaml.safe_load_all(RBAC.read_text()))
            roles = [d for d in docs if d["kind"] == "ClusterRole"]
            discovery = next(d for d in docs if d["kind"] == "ClusterRoleBinding"
                             and d["metadata"]["name"] == "rewind-operator-discovery")
            discovery["subjects"] = [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": SYSTEM_NS}]
            cp.kubectl("create", "namespace", SYSTEM_NS)
            for sa in (OPERATOR_SA, ONCALL_SA):
                cp.kubectl("create", "serviceaccount", sa, "-n", SYSTEM_NS)
            cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([*roles, discovery]))
            cp.kubectl("create", "clusterrolebinding", "bench-oncall", "--clusterrole=cluster-admin",
                       f"--serviceaccount={SYSTEM_NS}:{ONCALL_SA}")
            token = cp.kubectl("create", "token", ONCALL_SA, "-n", SYSTEM_NS, "--duration=6h").stdout.strip()
            oncall = kubeconfig_for(cp, token, run_dir / "oncall.kubeconfig", "oncall")
            for _ in range(100):   # the ServiceAccount token is accepted once its RBAC is in the cache
                if cp.kubectl(f"--kubeconfig={oncall}", "get", "rollbacks", "-A", check=False).returncode == 0:
                    break
                time.sleep(0.1)
        except BaseException:
            cp.stop()
            raise
        return cls(cp=cp, run_dir=run_dir, oncall_kubeconfig=oncall)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120,
                as_oncall: bool = False) -> subprocess.CompletedProcess:
        """kubectl as the admin (setting up, watching), or as the person (what is timed)."""
        cmd = [str(self.cp.bin_dir / "kubectl"),
               f"--kubeconfig={self.oncall_kubeconfig if as_oncall else self.cp.kubeconfig}", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out

    def namespace(self, name: str, operator: bool = True) -> str:
        """A namespace; with `operator`, the operator's role bound in it (the operator reaches
        nothing outside its namespaces) and the operator, once started, watching it."""
        self.kubectl("create", "namespace", name)
        if operator:
            self.kubectl("create", "rolebinding", "rewind-operator", "-n", name, "--clusterrole=rewind-operator",
                         f"--serviceaccount={SYSTEM_NS}:{OPERATOR_SA}")
            self.namespaces.append(name)
        for _ in range(300):
            if self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0:
                break
            time.sleep(0.1)
        return name

    def start_operator(self, env: dict[str, str] | None = None, verbose: bool = False,
                       args: tuple[str, ...] = ()) -> subprocess.Popen:
        """`rewind run` as a separate process, as the operator's ServiceAccount, for the
        namespaces made so far (as `python -m rewind.cli run`, like the tests), with `args` added."""
        token = self.kubectl("create", "token", OPERATOR_SA, "-n", SYSTEM_NS, "--duration=6h").stdout.strip()
        self.operator_kubeconfig = kubeconfig_for(self.cp, token, self.run_dir / "operator.kubeconfig",
                                                  OPERATOR_SA, self.namespaces[0])
        argv = [sys.executable, "-m", "rewind.cli", "run", "--kubeconfig", str(self.operator_kubeconfig)]
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        if verbose:
            argv.append("--verbose")
        argv += args
        log = open(self.run_dir / "operator.log", "ab")
        self.operator = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **(env or {})})
        log.close()
        return self.operator

    def wait_operator_watching(self, audit: "AuditLog | None", timeout: float = 60) -> None:
        """Until the operator watches Rollbacks (from the audit log when there is one, else a pause)."""
        deadline = time.monotonic() + timeout
        if audit is None:
            time.sleep(3)
            return
        while time.monotonic() < deadline:
            if self.operator and self.operator.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.operator.returncode}; "
                                   f"see {self.run_dir / 'operator.log'}")
            if any(r.user == OPERATOR_USER and r.verb == "watch" and r.resource == "rollbacks"
                   for r in audit.read()):
                time.sleep(0.5)
                return
            time.sleep(0.2)
        raise TimeoutError(f"the operator did not start watching Rollbacks; see {self.run_dir / 'operator.log'}")

    def stop(self) -> None:
        if self.operator and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
        self.cp.stop()


# --- Deployments with history, and a settled state ----------------------------------------------


def deployment(name: str, namespace: str, image: str, replicas: int) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}}


def make_revisions(bed: Bed, namespace: str, name: str, replicas: int, revisions: int = 3) -> None:
    """Revisions 1..N of `name` (images registry.local/app:1..N), each rolled out by the
    deployment controller."""
    for i in range(1, revisions + 1):
        bed.kubectl("apply", "-f", "-", input=yaml.safe_dump(
            deployment(name, namespace, f"registry.local/app:{i}", replicas)))
        bed.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=120s")


def _settled(bed: Bed, namespace: str, name: str) -> str | None:
    """None when `name` is settled, else what is still moving."""
    d = json.loads(bed.kubectl("get", "deployment", name, "-n", namespace, "-o", "json").stdout)
    selector = ",".join(f"{k}={v}" for k, v in d["spec"]["selector"]["matchLabels"].items())
    doc = json.loads(bed.kubectl("get", "replicasets,pods", "-n", namespace, "-l", selector,
                                 "-o", "json").stdout)
    return moving(d, doc["items"])


def moving(d: dict, items: list[dict]) -> str | None:
    """None when the Deployment `d` is settled, else what is still moving; `items` are its
    ReplicaSets and pods (those its selector matches)."""
    want, st = d["spec"]["replicas"], d.get("status", {})
    if st.get("observedGeneration", 0) < d["metadata"]["generation"]:
        return "generation not observed"
    for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"):
        if st.get(key, 0) != want:
            return f"deployment {key}={st.get(key, 0)} (want {want})"
    if st.get("terminatingReplicas"):
        return f"deployment terminatingReplicas={st['terminatingReplicas']}"
    revision = d["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision")
    for rs in (o for o in items if o["kind"] == "ReplicaSet"):
        current = rs["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision") == revision
        rst = rs.get("status", {})
        if not current and (rs["spec"].get("replicas", 0) or rst.get("replicas", 0)
                            or rst.get("terminatingReplicas")):
            return f"old ReplicaSet {rs['metadata']['name']} not at 0"
        if current and (rst.get("observedGeneration", 0) < rs["metadata"]["generation"]
                        or rst.get("readyReplicas", 0) != want or rst.get("availableReplicas", 0) != want):
            return f"current ReplicaSet {rs['metadata']['name']} not ready"
    pods = [o for o in items if o["kind"] == "Pod"]
    if any(p["metadata"].get("deletionTimestamp") for p in pods):
        return "pods terminating"
    if len(pods) != want:
        return f"{len(pods)} pods (want {want})"
    return None


def settle(bed: Bed, namespace: str, names: list[str], timeout: float = 120, quiet: float = 0.5) -> float:
    """Waits until every Deployment in `names` is settled: its rollout complete, every old
    ReplicaSet at 0 (spec and status), no pod terminating, exactly `replicas` pods; checked again
    after `quiet` seconds. Returns how long it waited."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        moving = [f"{n}: {m}" for n in names if (m := _settled(bed, namespace, n))]
        if not moving:
            time.sleep(quiet)
            moving = [f"{n}: {m}" for n in names if (m := _settled(bed, namespace, n))]
            if not moving:
                return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise TimeoutError(f"not settled after {timeout}s: {'; '.join(moving)}")
        time.sleep(0.1)


# --- many Deployments at once (scale.py, cold_start.py) ------------------------------------------
# The same history and the same settled state as above, for a hundred Deployments or more: one
# kubectl apply per revision and one list per look, instead of a few kubectl calls per Deployment.

GROUP_LABEL = "rewind.dev/bench-group"


def add_nodes(bed: Bed, pods: int, per_node: int = 110) -> int:
    """More kwok nodes, like the test bed's own, until the nodes can hold `pods` pods; returns
    how many nodes there are."""
    nodes = json.loads(bed.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    have = len(nodes)
    need = -(-pods // per_node)
    extra = [{"apiVersion": "v1", "kind": "Node",
              "metadata": {"name": f"kwok-bench-node-{i}", "annotations": {"kwok.x-k8s.io/node": "fake"},
                           "labels": {"type": "kwok", "kubernetes.io/hostname": f"kwok-bench-node-{i}",
                                      "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
              "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": str(per_node)},
                         "capacity": {"cpu": "32", "memory": "256Gi", "pods": str(per_node)}}}
             for i in range(have, need)]
    if extra:
        bed.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(extra))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = [n for n in json.loads(bed.kubectl("get", "nodes", "-o", "json").stdout)["items"]
                     if any(c["type"] == "Ready" and c["status"] == "True"
                            for c in n.get("status", {}).get("conditions", []))]
            if len(ready) >= need:
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"the extra kwok nodes are not Ready (want {need})")
    return max(have, need)


def grouped_deployment(name: str, namespace: str, image: str, replicas: int, group: str) -> dict:
    """deployment(), labelled with its group (the Deployment and its pods and ReplicaSets)."""
    d = deployment(name, namespace, image, replicas)
    d["metadata"]["labels"] = {GROUP_LABEL: group}
    d["spec"]["template"]["metadata"]["labels"][GROUP_LABEL] = group
    return d


def group_objects(bed: Bed, group: str, kinds: str = "deployments,replicasets,pods") -> list[dict]:
    return json.loads(bed.kubectl("get", kinds, "-A", "-l", f"{GROUP_LABEL}={group}", "-o", "json",
                                  timeout=300).stdout)["items"]


def make_revisions_many(bed: Bed, targets: list[tuple[str, str]], replicas: int, group: str,
                        revisions: int = 3, timeout: float = 600) -> float:
    """make_revisions() for every (namespace, name) in `targets` at once: revision i of all of them
    applied in one kubectl apply, then every rollout complete before revision i + 1. Returns the
    seconds it took."""
    t0 = time.monotonic()
    for i in range(1, revisions + 1):
        # Server-side: a client-side apply of a thousand objects spends minutes of CPU diffing.
        bed.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", timeout=timeout,
                    input=yaml.safe_dump_all([grouped_deployment(name, ns, f"registry.local/app:{i}", replicas, group)
                                              for ns, name in targets]))
        deadline = time.monotonic() + timeout
        while True:
            look = time.monotonic()
            deps = group_objects(bed, group, "deployments")
            behind = [d["metadata"]["name"] for d in deps if not _rolled_out(d, str(i))]
            if len(deps) == len(targets) and not behind:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"revision {i} not rolled out after {timeout}s: {behind[:5]}...")
            time.sleep(max(0.5, 2 * (time.monotonic() - look)))     # a big group's list costs CPU too
    return time.monotonic() - t0


def _rolled_out(d: dict, revision: str) -> bool:
    """What `kubectl rollout status` waits for, at the given revision."""
    want, st = d["spec"]["replicas"], d.get("status", {})
    return (d["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision") == revision
            and st.get("observedGeneration", 0) >= d["metadata"]["generation"]
            and all(st.get(k, 0) == want for k in ("replicas", "updatedReplicas", "availableReplicas")))


def _moving_in_group(bed: Bed, group: str) -> list[str]:
    objs = group_objects(bed, group)
    owned: dict[tuple[str, str], list[dict]] = {}
    for o in objs:
        if o["kind"] != "Deployment":
            owned.setdefault((o["metadata"]["namespace"], o["metadata"]["labels"].get("app", "")), []).append(o)
    return [f"{d['metadata']['namespace']}/{d['metadata']['name']}: {m}" for d in objs if d["kind"] == "Deployment"
            and (m := moving(d, owned.get((d["metadata"]["namespace"], d["metadata"]["name"]), [])))]


def settle_many(bed: Bed, group: str, timeout: float = 600, quiet: float = 0.5) -> float:
    """settle() for every Deployment of `group` (one list of Deployments, ReplicaSets and pods
    per look). Returns how long it waited."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        look = time.monotonic()
        still = _moving_in_group(bed, group)
        if not still:
            time.sleep(quiet)
            still = _moving_in_group(bed, group)
            if not still:
                return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(still)} not settled after {timeout}s: {'; '.join(still[:5])}")
        time.sleep(max(0.25, 2 * (time.monotonic() - look)))


def images_in_group(bed: Bed, group: str) -> dict[str, str]:
    """namespace/name -> the image of each Deployment of `group`."""
    return {f"{d['metadata']['namespace']}/{d['metadata']['name']}":
            d["spec"]["template"]["spec"]["containers"][0]["image"] for d in group_objects(bed, group, "deployments")}


# --- the operator process -----------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process so far (/proc/<pid>/stat utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of the process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().split("\n"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def image_of(bed: Bed, namespace: str, name: str) -> str:
    return bed.kubectl("get", "deployment", name, "-n", namespace, "-o",
                       "jsonpath={.spec.template.spec.containers[0].image}").stdout


def timed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


# --- the audit log -------------------------------------------------------------------------------


READS = ("get", "list", "watch")
WRITES = ("create", "update", "patch", "delete", "deletecollection")
# Creates that store nothing: access and token reviews are questions, not writes.
REVIEWS = ("selfsubjectaccessreviews", "selfsubjectrulesreviews", "subjectaccessreviews",
           "localsubjectaccessreviews", "tokenreviews", "selfsubjectreviews")


@dataclass
class Request:
    audit_id: str
    at: float                  # requestReceivedTimestamp, seconds since the epoch
    user: str
    user_agent: str
    verb: str
    resource: str              # "rollbacks/status", "events", or the URI for non-resource requests
    namespace: str
    name: str
    code: int

    @property
    def kind(self) -> str:
        if self.verb in READS:
            return "read"
        if self.resource in REVIEWS:
            return "review"
        if self.verb in WRITES:
            return "write"
        return "other"

    @property
    def client(self) -> str:
        """kopf (its own aiohttp client) or rewind (the official client), or kubectl."""
        ua = self.user_agent.lower()
        for name in ("kopf", "rewind", "kubectl"):
            if ua.startswith(name):
                return name
        return ua.split("/")[0] or "?"


def _timestamp(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class AuditLog:
    """The API server's audit log, read incrementally; one Request per audit ID (a watch logs a
    line when its answer starts and another when it ends)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.requests: dict[str, Request] = {}

    def read(self) -> list[Request]:
        """Everything seen so far (reads what was appended since the last call)."""
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self.offset += end
            for line in data[:end].splitlines():
                ev = json.loads(line)
                if ev["auditID"] in self.requests:
                    continue
                ref = ev.get("objectRef") or {}
                resource = ref.get("resource") or ev.get("requestURI", "").split("?")[0]
                if ref.get("subresource"):
                    resource += "/" + ref["subresource"]
                self.requests[ev["auditID"]] = Request(
                    audit_id=ev["auditID"], at=_timestamp(ev["requestReceivedTimestamp"]),
                    user=ev.get("user", {}).get("username", ""), user_agent=ev.get("userAgent", ""),
                    verb=ev.get("verb", ""), resource=resource, namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""), code=(ev.get("responseStatus") or {}).get("code", 0))
        return list(self.requests.values())

    def between(self, user: str, start: float, end: float | None = None) -> list[Request]:
        return sorted((r for r in self.read() if r.user == user and r.at >= start
                       and (end is None or r.at < end)), key=lambda r: r.at)

    def quiet(self, user: str, since: float, seconds: float = 2.0, timeout: float = 30.0) -> float:
        """Waits until `user` has sent no request (watches aside) for `seconds`; returns the
        time of its last request after `since` (or `since`)."""
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(0.25)
            last = max((r.at for r in self.between(user, since) if r.verb != "watch"), default=since)
            if time.time() - last >= seconds or time.monotonic() > deadline:
                return last


def tally(requests: list[Request]) -> Counter:
    """(kind, verb, resource) -> count."""
    return Counter((r.kind, r.verb, r.resource) for r in requests)


def by_kind(requests: list[Request]) -> Counter:
    return Counter(r.kind for r in requests)


class Sampler:
    """Samples the operator's VmRSS every `interval` seconds in a thread; `peak_kib` is the largest
    sample, `cpu_s` the CPU seconds between start() and stop()."""

    def __init__(self, pid: int, interval: float = 0.2):
        import threading
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu_s = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(memory_kib(self.pid)["VmRSS"])
            self._stop.wait(self.interval)

    def start(self) -> "Sampler":
        self._cpu0 = cpu_seconds(self.pid)
        self._thread.start()
        return self

    def stop(self) -> "Sampler":
        self._stop.set()
        self._thread.join()
        self.samples.append(memory_kib(self.pid)["VmRSS"])
        self.cpu_s = cpu_seconds(self.pid) - self._cpu0
        return self

    @property
    def peak_kib(self) -> int:
        return max(self.samples)


def wait_watching_namespaces(bed: Bed, audit: AuditLog, namespaces: list[str], since: float,
                             timeout: float = 120) -> float:
    """Until the operator (started at wall time `since`) has a watch of Rollbacks open in each of
    `namespaces` (it has listed them all first: kopf lists, then watches from the list's version);
    needs the audit policy that logs reads (Bed.start(audit_all=True)). Returns the wall time of
    the last of those watch requests."""
    deadline = time.monotonic() + timeout
    while True:
        if bed.operator and bed.operator.poll() is not None:
            raise RuntimeError(f"the operator exited with {bed.operator.returncode}; "
                               f"see {bed.run_dir / 'operator.log'}")
        watches = {}
        for r in audit.between(OPERATOR_USER, since):
            if r.verb == "watch" and r.resource == "rollbacks" and r.namespace not in watches:
                watches[r.namespace] = r.at
        if all(ns in watches for ns in namespaces):
            return max(watches[ns] for ns in namespaces)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the operator watches Rollbacks in {sorted(watches)} only; "
                               f"see {bed.run_dir / 'operator.log'}")
        time.sleep(0.1)


# --- Rollbacks, watched ---------------------------------------------------------------------------


def rollback_doc(name: str, namespace: str, target: str, group: str) -> dict:
    """A Rollback of the Deployment `target` to its previous revision, labelled with its group."""
    return {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback",
            "metadata": {"name": name, "namespace": namespace, "labels": {GROUP_LABEL: group}},
            "spec": {"severity": "High", "reason": "benchmark",
                     "application": [{"name": target, "toRevision": "previous"}]}}


def _ready(rb: dict) -> bool:
    st = rb.get("status") or {}
    return st.get("phase") == "Succeeded" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions", []))


class RollbackWatch:
    """A watch (the admin's, from the bench process) of the Rollbacks of a group, cluster-wide:
    when each one became Ready (phase Succeeded, Ready=True) or ended otherwise. Start it before
    the Rollbacks are applied; `wait()` returns when every expected one has ended."""

    TERMINAL = ("Planned", "Succeeded", "Failed", "Interrupted")

    def __init__(self, bed: Bed, group: str, expected: set[str]):
        import threading
        from kubernetes import config
        self.api_client = config.new_client_from_config(config_file=str(bed.cp.kubeconfig))
        self.group, self.expected = group, set(expected)     # "namespace/name"
        self.ready_at: dict[str, float] = {}
        self.ended: dict[str, str] = {}                       # "namespace/name" -> final phase
        self._listed = threading.Event()
        self._done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "RollbackWatch":
        self._thread.start()
        if not self._listed.wait(60):
            raise TimeoutError("could not list Rollbacks")
        return self

    def _see(self, rb: dict) -> None:
        key = f"{rb['metadata']['namespace']}/{rb['metadata']['name']}"
        if key not in self.expected or key in self.ended:
            return
        phase = (rb.get("status") or {}).get("phase")
        if _ready(rb):
            self.ready_at[key] = time.monotonic()
            self.ended[key] = phase
        elif phase in self.TERMINAL:
            self.ended[key] = phase
        if len(self.ended) == len(self.expected):
            self._done.set()

    def _run(self) -> None:
        from kubernetes import client, watch
        api = client.CustomObjectsApi(self.api_client)
        selector = f"{GROUP_LABEL}={self.group}"
        rv = None
        while not self._stop.is_set() and not self._done.is_set():
            try:
                if rv is None:
                    listed = api.list_cluster_custom_object("rewind.dev", "v1alpha1", "rollbacks",
                                                            label_selector=selector)
                    for rb in listed["items"]:
                        self._see(rb)
                    rv = listed["metadata"]["resourceVersion"]
                    self._listed.set()
                for ev in watch.Watch().stream(api.list_cluster_custom_object, "rewind.dev", "v1alpha1",
                                               "rollbacks", label_selector=selector, resource_version=rv,
                                               timeout_seconds=10):
                    if ev["type"] == "ERROR":
                        rv = None
                        break
                    rv = ev["object"]["metadata"]["resourceVersion"]
                    self._see(ev["object"])
                    if self._done.is_set() or self._stop.is_set():
                        break
            except Exception:   # noqa: BLE001 - a broken watch lists again
                rv = None
                time.sleep(0.2)

    def wait(self, timeout: float) -> bool:
        """True when every expected Rollback ended within `timeout`."""
        ok = self._done.wait(timeout)
        self._stop.set()
        return ok

    @property
    def last_ready(self) -> float:
        return max(self.ready_at.values())
