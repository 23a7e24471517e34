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

from rewind_testbed import cluster as cluster_mod
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
        if audit_all:
            # The test bed's policy logs writes only; the request count needs reads too. The
            # control plane reads the module's AUDIT_POLICY when it starts the API server.
            cluster_mod.AUDIT_POLICY = AUDIT_ALL_POLICY
        cp = ControlPlane.start(run_dir / "cluster", bin_dir)
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

    def start_operator(self, env: dict[str, str] | None = None, verbose: bool = False) -> subprocess.Popen:
        """`rewind run` as a separate process, as the operator's ServiceAccount, for the
        namespaces made so far (as `python -m rewind.cli run`, like the tests)."""
        token = self.kubectl("create", "token", OPERATOR_SA, "-n", SYSTEM_NS, "--duration=6h").stdout.strip()
        self.operator_kubeconfig = kubeconfig_for(self.cp, token, self.run_dir / "operator.kubeconfig",
                                                  OPERATOR_SA, self.namespaces[0])
        argv = [sys.executable, "-m", "rewind.cli", "run", "--kubeconfig", str(self.operator_kubeconfig)]
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        if verbose:
            argv.append("--verbose")
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
    want, st = d["spec"]["replicas"], d.get("status", {})
    if st.get("observedGeneration", 0) < d["metadata"]["generation"]:
        return "generation not observed"
    for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"):
        if st.get(key, 0) != want:
            return f"deployment {key}={st.get(key, 0)} (want {want})"
    if st.get("terminatingReplicas"):
        return f"deployment terminatingReplicas={st['terminatingReplicas']}"
    revision = d["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision")
    for rs in (o for o in doc["items"] if o["kind"] == "ReplicaSet"):
        current = rs["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision") == revision
        rst = rs.get("status", {})
        if not current and (rs["spec"].get("replicas", 0) or rst.get("replicas", 0)
                            or rst.get("terminatingReplicas")):
            return f"old ReplicaSet {rs['metadata']['name']} not at 0"
        if current and (rst.get("observedGeneration", 0) < rs["metadata"]["generation"]
                        or rst.get("readyReplicas", 0) != want or rst.get("availableReplicas", 0) != want):
            return f"current ReplicaSet {rs['metadata']['name']} not ready"
    pods = [o for o in doc["items"] if o["kind"] == "Pod"]
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
