"""Benchmark (not a test): a Deployment rollback through Rewind against `kubectl rollout undo`,
side by side on the local control plane.

    .venv/bin/python bench/workload_undo.py [--rounds 5] [--replicas 3]

Each round makes two fresh Deployments with three real revisions each (the deployment controller
makes them), then times, in alternating order:

- kubectl:  `kubectl rollout undo deployment/NAME` followed by `kubectl rollout status` (what a
            person types, and the only way to know the rollout finished);
- rewind:   `kubectl apply` of a Rollback (toRevision: previous) followed by
            `kubectl wait --for=condition=Ready` (plan, preflight, guarded patch, rollout wait,
            status and Events).

Both end when the rollout is complete. Medians and the ratio go to stdout and to
bench/results/workload_undo-<date>.json. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rewind_testbed.cluster import ControlPlane, build_binaries

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NS = "bench"


def deployment(name: str, image: str, replicas: int) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}}


def make_revisions(cp: ControlPlane, name: str, replicas: int) -> None:
    for i in (1, 2, 3):
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment(name, f"registry.local/app:{i}", replicas)))
        cp.kubectl("rollout", "status", f"deployment/{name}", "-n", NS, "--timeout=120s")


def timed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def run(args) -> int:
    bin_dir = build_binaries()
    run_dir = Path(tempfile.mkdtemp(prefix="rewind-bench-undo-"))
    cp = ControlPlane.start(run_dir / "cluster", bin_dir)
    operator = None
    try:
        cp.kubectl("apply", "-f", str(REPO / "crds" / "rollbacks.rewind.dev.yaml"))
        cp.kubectl("wait", "--for=condition=Established", "crd/rollbacks.rewind.dev")
        cp.kubectl("create", "namespace", NS)
        operator = subprocess.Popen(
            [sys.executable, "-m", "rewind.cli", "run", "--namespace", NS, "--kubeconfig", str(cp.kubeconfig)],
            stdout=open(run_dir / "operator.log", "wb"), stderr=subprocess.STDOUT)
        results: dict[str, list[float]] = {"kubectl": [], "rewind": []}
        for r in range(args.rounds):
            a, b = f"kubectl-{r}", f"rewind-{r}"
            make_revisions(cp, a, args.replicas)
            make_revisions(cp, b, args.replicas)

            def kubectl_undo():
                cp.kubectl("rollout", "undo", f"deployment/{a}", "-n", NS)
                cp.kubectl("rollout", "status", f"deployment/{a}", "-n", NS, "--timeout=120s")

            def rewind_undo():
                cp.kubectl("apply", "-f", "-", input=yaml.safe_dump({
                    "apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback",
                    "metadata": {"name": b, "namespace": NS},
                    "spec": {"severity": "High", "reason": "benchmark",
                             "application": [{"name": b, "toRevision": "previous"}]}}))
                cp.kubectl("wait", "--for=condition=Ready", f"rollback/{b}", "-n", NS, "--timeout=120s")

            order = [("kubectl", kubectl_undo), ("rewind", rewind_undo)]
            for label, fn in (order if r % 2 == 0 else order[::-1]):
                results[label].append(round(timed(fn), 3))
            for name in (a, b):   # both really went back to revision 2's image
                image = cp.kubectl("get", "deployment", name, "-n", NS, "-o",
                                   "jsonpath={.spec.template.spec.containers[0].image}").stdout
                assert image == "registry.local/app:2", (name, image)
            print(f"round {r + 1}: kubectl {results['kubectl'][-1]:.2f}s, rewind {results['rewind'][-1]:.2f}s", flush=True)
        med = {k: statistics.median(v) for k, v in results.items()}
        ratio = med["rewind"] / med["kubectl"]
        print(f"\nmedian over {args.rounds} rounds, {args.replicas} replicas: kubectl rollout undo + status "
              f"{med['kubectl']:.2f}s; Rewind apply + wait Ready {med['rewind']:.2f}s; ratio {ratio:.2f}x")
        out = HERE / "results" / f"workload_undo-{dt.date.today()}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"rounds": args.rounds, "replicas": args.replicas, "runs": results,
                                   "median": med, "ratio_rewind_over_kubectl": round(ratio, 2)}, indent=2))
        print(f"results: {out}")
        return 0
    finally:
        if operator:
            operator.terminate()
            operator.wait(timeout=15)
        cp.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=3)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
