"""Benchmark (not a test): many Rollbacks at once through Rewind against as many
`kubectl rollout undo` + `kubectl rollout status`, side by side on the local control plane.

    .venv/bin/python bench/scale.py [--rollbacks 100] [--namespaces 10] [--rounds 3] [--replicas 1]

Each round makes 2 x N fresh Deployments (N per side, spread round-robin over M namespaces),
each with the same three real revisions (one kubectl apply per revision for all of them, every
rollout complete before the next), and waits until all of them are settled (as workload_undo.py:
rollout complete, old ReplicaSets at 0, no pod terminating, still so half a second later). Then it
times, in an order that alternates per round, each side from a settled state:

- kubectl: for each of its N Deployments `kubectl rollout undo` then `kubectl rollout status`,
           run by a pool of --kubectl-parallel workers (a person's `xargs -P`; each worker runs one
           Deployment's two commands, then takes the next), until every process has ended;
- rewind:  one `kubectl apply` of N Rollbacks (toRevision: previous), until every Rollback is
           Ready=True with phase Succeeded, seen by one watch of all of them from this process.

During the Rewind window the operator process (one `rewind run`, its own ServiceAccount, the
shipped ClusterRole bound in each of the M namespaces, `--namespace` once per namespace) is
sampled: VmRSS every 0.2 s (the peak sample, and VmHWM), CPU seconds (utime + stime from
/proc/<pid>/stat), and its requests from the API server's audit log (every request of the
operator and of the person, reads included), counted from the apply until the operator has sent
nothing but watches for 2 s. Afterwards every Deployment of both sides must run revision 2's
image and every Rollback must have Succeeded (the round fails otherwise).

Reported: medians with quartiles and extremes of each side, the ratio of the medians and the
spread of the per-round ratios; the operator's peak RSS, CPU seconds and writes per round. Goals
(read, never asserted): Rewind at most 1.5x kubectl's time, the operator under 200 MiB.
Results: bench/results/scale-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from benchlib import (
    ONCALL_USER, OPERATOR_USER, AuditLog, Bed, RollbackWatch, Sampler, add_nodes, fmt_spread, group_objects,
    images_in_group, make_revisions_many, memory_kib, rollback_doc, settle_many, source_revision, spread,
    wait_watching_namespaces,
)

HERE = Path(__file__).resolve().parent
MIB = 1024


def last_patch(audit: AuditLog, user: str, since: float, count: int) -> float | None:
    """Seconds from `since` (wall time) until `user` had patched `count` Deployments: when the
    last undo was sent, before any rollout finished."""
    at = sorted(r.at for r in audit.between(user, since) if r.verb == "patch" and r.resource == "deployments")
    return round(at[count - 1] - since, 3) if len(at) >= count else None


def kubectl_side(bed: Bed, audit: AuditLog, targets: list[tuple[str, str]], parallel: int,
                 timeout: float) -> dict:
    """`kubectl rollout undo` + `rollout status` for every target, `parallel` at a time, as the
    person; until the last one ended."""
    kubectl = [str(bed.cp.bin_dir / "kubectl"), f"--kubeconfig={bed.oncall_kubeconfig}"]

    def one(target: tuple[str, str]):
        ns, name = target
        for cmd in (["rollout", "undo", f"deployment/{name}", "-n", ns],
                    ["rollout", "status", f"deployment/{name}", "-n", ns, f"--timeout={int(timeout)}s"]):
            out = subprocess.run([*kubectl, *cmd], capture_output=True, text=True, timeout=timeout + 30)
            if out.returncode != 0:
                return f"{ns}/{name}: kubectl {cmd[0]} {cmd[1]}: {out.stderr.strip()[:200]}"
        return None

    wall0, t0 = time.time(), time.monotonic()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        failures = [f for f in pool.map(one, targets) if f]
    return {"seconds": round(time.monotonic() - t0, 3), "failures": failures,
            "last_patch_s": last_patch(audit, ONCALL_USER, wall0, len(targets))}


def rewind_side(bed: Bed, audit: AuditLog, targets: list[tuple[str, str]], group: str,
                timeout: float) -> dict:
    """One kubectl apply of a Rollback per target, as the person; until every one is Ready."""
    docs = [rollback_doc(f"rb-{name}", ns, name, group) for ns, name in targets]
    expected = {f"{ns}/rb-{name}" for ns, name in targets}
    watch = RollbackWatch(bed, group, expected).start()
    sampler = Sampler(bed.operator.pid).start()
    wall0, t0 = time.time(), time.monotonic()
    bed.kubectl("apply", "-f", "-", as_oncall=True, input=yaml.safe_dump_all(docs), timeout=timeout)
    applied = time.monotonic() - t0
    finished = watch.wait(timeout)
    t_end = time.monotonic()
    sampler.stop()
    elapsed = (watch.last_ready if watch.ready_at else t_end) - t0
    cpu_ready = sampler.cpu_s
    quiet_until = audit.quiet(OPERATOR_USER, wall0, seconds=2.0, timeout=60)
    requests = audit.between(OPERATOR_USER, wall0, quiet_until + 0.001)
    writes = [r for r in requests if r.kind == "write"]
    return {
        "seconds": round(elapsed, 3), "apply_seconds": round(applied, 3),
        "last_patch_s": last_patch(audit, OPERATOR_USER, wall0, len(targets)),
        "all_ended": finished, "phases": dict(Counter(watch.ended.values())),
        "not_ended": sorted(expected - set(watch.ended))[:20],
        "operator": {
            "peak_rss_mib": round(sampler.peak_kib / MIB, 1),
            "vmhwm_mib": round(memory_kib(bed.operator.pid)["VmHWM"] / MIB, 1),
            "cpu_s_until_ready": round(cpu_ready, 2),
            "writes": len(writes), "reads": sum(r.kind == "read" for r in requests),
            "reviews": sum(r.kind == "review" for r in requests),
            "writes_by": dict(Counter(f"{r.verb} {r.resource}" for r in writes).most_common()),
            "failed_requests": sum(r.code >= 400 for r in requests),
            "failed_by": dict(Counter(f"{r.verb} {r.resource} {r.code}" for r in requests if r.code >= 400)),
        },
    }


def run(args) -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="rewind-bench-scale-"))
    source = source_revision()      # the commit measured, and the load average at the start
    bed = Bed.start(run_dir, audit_all=True)
    print(f"run dir: {run_dir}", flush=True)
    try:
        namespaces = [bed.namespace(f"scale-{i}") for i in range(args.namespaces)]
        # Both sides' pods, plus one surge pod each during a rollout; the test bed has 2 nodes of 110.
        nodes = add_nodes(bed, 2 * args.rollbacks * (args.replicas + 1) + 50)
        audit = AuditLog(bed.cp.audit_log)
        started = time.time()
        bed.start_operator()
        wait_watching_namespaces(bed, audit, namespaces, started)
        pid = bed.operator.pid
        results: dict[str, list[float]] = {"kubectl": [], "rewind": []}
        rounds = []
        for r in range(args.rounds):
            group = f"r{r}"
            kube_targets = [(namespaces[j % args.namespaces], f"k{r}-{j}") for j in range(args.rollbacks)]
            rw_targets = [(namespaces[j % args.namespaces], f"w{r}-{j}") for j in range(args.rollbacks)]
            history_s = make_revisions_many(bed, kube_targets + rw_targets, args.replicas, group,
                                            revisions=3, timeout=args.timeout)
            rec: dict = {"round": r + 1, "history_s": round(history_s, 1), "settle_waits_s": []}
            order = ["kubectl", "rewind"] if r % 2 == 0 else ["rewind", "kubectl"]
            rec["order"] = order
            for side in order:
                rec["settle_waits_s"].append(round(settle_many(bed, group, timeout=args.timeout), 2))
                if side == "kubectl":
                    idle = Sampler(pid).start()
                    rec["kubectl"] = kubectl_side(bed, audit, kube_targets, args.kubectl_parallel, args.timeout)
                    rec["kubectl"]["operator_cpu_s_meanwhile"] = round(idle.stop().cpu_s, 2)
                    if rec["kubectl"]["failures"]:
                        raise RuntimeError(f"kubectl failed: {rec['kubectl']['failures'][:3]}")
                else:
                    rec["rewind"] = rewind_side(bed, audit, rw_targets, group, args.timeout)
                    if not rec["rewind"]["all_ended"] or set(rec["rewind"]["phases"]) != {"Succeeded"}:
                        raise RuntimeError(f"not every Rollback succeeded: {rec['rewind']['phases']}, "
                                           f"not ended: {rec['rewind']['not_ended']}")
                results[side].append(rec[side]["seconds"])
            settle_many(bed, group, timeout=args.timeout)
            images = images_in_group(bed, group)
            wrong = {k: v for k, v in images.items() if v != "registry.local/app:2"}
            rec["deployments_on_previous_image"] = len(images) - len(wrong)
            rec["deployments"] = len(images)
            if wrong or len(images) != 2 * args.rollbacks:
                raise RuntimeError(f"{len(wrong)} Deployments not on revision 2's image: {list(wrong.items())[:5]}")
            rounds.append(rec)
            op = rec["rewind"]["operator"]
            print(f"round {r + 1} ({' first, '.join(order)} second): kubectl {rec['kubectl']['seconds']:.2f}s, "
                  f"rewind {rec['rewind']['seconds']:.2f}s "
                  f"({rec['rewind']['seconds'] / rec['kubectl']['seconds']:.2f}x); every Deployment patched after "
                  f"{rec['kubectl']['last_patch_s']}s / {rec['rewind']['last_patch_s']}s; operator peak RSS "
                  f"{op['peak_rss_mib']} MiB, CPU {op['cpu_s_until_ready']} s, {op['writes']} writes",
                  flush=True)
            if r + 1 == args.rounds:
                break       # the bed goes whole; no need to wait for 2 x N Deployments' pods to go
            # The next round starts from a cluster without this round's pods.
            bed.kubectl("delete", "deployments", "-A", "-l", f"rewind.dev/bench-group={group}", "--wait=false",
                        timeout=300)
            deadline = time.monotonic() + args.timeout
            while group_objects(bed, group, "pods,replicasets") and time.monotonic() < deadline:
                time.sleep(1)
        stats = {k: spread(v) for k, v in results.items()}
        ratios = [rw / kc for rw, kc in zip(results["rewind"], results["kubectl"])]
        ratio = stats["rewind"]["median"] / stats["kubectl"]["median"]
        ops = [rec["rewind"]["operator"] for rec in rounds]
        patched = {side: spread([rec[side]["last_patch_s"] for rec in rounds if rec[side]["last_patch_s"]])
                   for side in ("kubectl", "rewind") if any(rec[side]["last_patch_s"] for rec in rounds)}
        operator = {"peak_rss_mib": spread([o["peak_rss_mib"] for o in ops]),
                    "vmhwm_mib_at_end": ops[-1]["vmhwm_mib"],
                    "cpu_s_until_ready": spread([o["cpu_s_until_ready"] for o in ops]),
                    "writes": spread([o["writes"] for o in ops]),
                    "writes_per_rollback": spread([o["writes"] / args.rollbacks for o in ops]),
                    "reads": spread([o["reads"] for o in ops])}
        print(f"\n{args.rounds} rounds, {args.rollbacks} Rollbacks in {args.namespaces} namespaces, "
              f"{args.replicas} replicas, kubectl pool of {args.kubectl_parallel}, each side from a settled state:")
        print(f"  kubectl rollout undo + rollout status (all):  {fmt_spread(stats['kubectl'])}")
        print(f"  Rewind apply to every Rollback Ready:         {fmt_spread(stats['rewind'])}")
        print(f"  ratio of medians {ratio:.2f}x; per-round ratios {fmt_spread(spread(ratios), 'x')}")
        for side, st in patched.items():
            print(f"  {side}: every Deployment patched (the last undo sent) after {fmt_spread(st)}")
        print(f"  operator: peak RSS {fmt_spread(operator['peak_rss_mib'], ' MiB', 1)}; "
              f"CPU {fmt_spread(operator['cpu_s_until_ready'], ' s', 1)}; "
              f"writes {fmt_spread(operator['writes'], '', 0)}")
        out = Path(args.results_dir) / f"scale-{dt.date.today()}{'-' + args.tag if args.tag else ''}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "date": str(dt.date.today()), "source": source,
            "rollbacks": args.rollbacks, "namespaces": args.namespaces, "rounds": args.rounds,
            "replicas": args.replicas, "revisions": 3, "kubectl_parallel": args.kubectl_parallel,
            "kwok_nodes": nodes, "operator_namespaces_flag": True, "settled_before_timing": True,
            "runs": results, "stats": stats, "median": {k: s["median"] for k, s in stats.items()},
            "ratio_rewind_over_kubectl": round(ratio, 2),
            "per_round_ratios": [round(x, 3) for x in ratios], "per_round_ratio_stats": spread(ratios),
            "every_deployment_patched_s": patched, "operator": operator, "per_round": rounds,
            "loadavg_at_end": os.getloadavg()},
            indent=2) + "\n")
        print(f"results: {out}")
        return 0
    finally:
        bed.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollbacks", type=int, default=100, help="Rollbacks (and kubectl undos) per round")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--kubectl-parallel", type=int, default=10,
                        help="kubectl undo+status pairs running at once (a pool; 0: all at once)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds any one wait may take")
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--tag", default="", help="appended to the results file's name")
    args = parser.parse_args()
    if args.kubectl_parallel <= 0:
        args.kubectl_parallel = args.rollbacks
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
