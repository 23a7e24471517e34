"""Benchmark (not a test): a Deployment rollback through Rewind against `kubectl rollout undo`,
side by side on the local control plane.

    .venv/bin/python bench/workload_undo.py [--rounds 7] [--replicas 3]

Each round makes two fresh, identical Deployments with three real revisions each (the deployment
controller makes them) and waits until both are settled: the last rollout complete, every old
ReplicaSet scaled to 0 in spec and status, no pod terminating, exactly `replicas` pods, and still
so half a second later. Then it times, in alternating order, each from a settled state (the
cluster settles again between the two):

- kubectl:  `kubectl rollout undo deployment/NAME` followed by `kubectl rollout status` (what a
            person types, and the only way to know the rollout finished);
- rewind:   `kubectl apply` of a Rollback (toRevision: previous) followed by
            `kubectl wait --for=condition=Ready` (plan, preflight, guarded patch, rollout wait,
            status and Events).

Both end when the rollout is complete; both Deployments are then checked to run revision 2's
image. The operator runs as its own process and ServiceAccount (the shipped ClusterRole, bound in
the benchmark's namespace), the kubectl commands as a cluster-admin user of their own.

Why settle first: started right after the history is built, `kubectl rollout status` also waits
for the previous rollout's old pods to go, which made the baseline about three times slower than
an undo is and the ratio look better than it is (1.08x on 2026-12-01).

Medians with quartiles and extremes, and the ratio (of the medians, and the spread of the paired
per-round ratios) go to stdout and to bench/results/workload_undo-<date>.json. Speed is measured
here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

from benchlib import Bed, fmt_spread, image_of, make_revisions, settle, source_revision, spread, timed

HERE = Path(__file__).resolve().parent
NS = "bench"


def run(args) -> int:
    source = source_revision()     # now, so that its load average is the one at the start
    run_dir = Path(tempfile.mkdtemp(prefix="rewind-bench-undo-"))
    bed = Bed.start(run_dir)
    try:
        bed.namespace(NS)
        bed.start_operator()
        bed.wait_operator_watching(None)
        results: dict[str, list[float]] = {"kubectl": [], "rewind": []}
        settle_waits: list[float] = []
        for r in range(args.rounds):
            a, b = f"kubectl-{r}", f"rewind-{r}"
            make_revisions(bed, NS, a, args.replicas)
            make_revisions(bed, NS, b, args.replicas)

            def kubectl_undo():
                bed.kubectl("rollout", "undo", f"deployment/{a}", "-n", NS, as_oncall=True)
                bed.kubectl("rollout", "status", f"deployment/{a}", "-n", NS, "--timeout=120s", as_oncall=True)

            def rewind_undo():
                bed.kubectl("apply", "-f", "-", as_oncall=True, input=yaml.safe_dump({
                    "apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback",
                    "metadata": {"name": b, "namespace": NS},
                    "spec": {"severity": "High", "reason": "benchmark",
                             "application": [{"name": b, "toRevision": "previous"}]}}))
                bed.kubectl("wait", "--for=condition=Ready", f"rollback/{b}", "-n", NS, "--timeout=120s",
                            as_oncall=True)

            order = [("kubectl", kubectl_undo), ("rewind", rewind_undo)]
            for label, fn in (order if r % 2 == 0 else order[::-1]):
                settle_waits.append(settle(bed, NS, [a, b]))   # both, so neither pays the other's rollout
                results[label].append(round(timed(fn), 3))
            settle(bed, NS, [a, b])
            for name in (a, b):   # both really went back to revision 2's image
                image = image_of(bed, NS, name)
                assert image == "registry.local/app:2", (name, image)
            print(f"round {r + 1}: kubectl {results['kubectl'][-1]:.2f}s, rewind {results['rewind'][-1]:.2f}s "
                  f"({results['rewind'][-1] / results['kubectl'][-1]:.2f}x)", flush=True)
        stats = {k: spread(v) for k, v in results.items()}
        ratios = [rw / kc for rw, kc in zip(results["rewind"], results["kubectl"])]
        ratio = stats["rewind"]["median"] / stats["kubectl"]["median"]
        print(f"\n{args.rounds} rounds, {args.replicas} replicas, each side timed from a settled state:")
        print(f"  kubectl rollout undo + rollout status:   {fmt_spread(stats['kubectl'])}")
        print(f"  Rewind apply + wait Ready:               {fmt_spread(stats['rewind'])}")
        print(f"  ratio of medians {ratio:.2f}x; per-round ratios {fmt_spread(spread(ratios), 'x')}")
        out = Path(args.results_dir) / f"workload_undo-{dt.date.today()}{'-' + args.tag if args.tag else ''}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({
            "date": str(dt.date.today()), "source": source,
            "rounds": args.rounds, "replicas": args.replicas, "settled_before_timing": True,
            "runs": results, "stats": stats, "median": {k: s["median"] for k, s in stats.items()},
            "ratio_rewind_over_kubectl": round(ratio, 2),
            "per_round_ratios": [round(x, 3) for x in ratios], "per_round_ratio_stats": spread(ratios),
            "settle_waits_s": [round(x, 3) for x in settle_waits], "loadavg_at_end": os.getloadavg()},
            indent=2) + "\n")
        print(f"results: {out}")
        return 0
    finally:
        bed.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--tag", default="", help="appended to the results file's name")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
