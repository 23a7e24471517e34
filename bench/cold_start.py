"""Benchmark (not a test): the operator's cold start over many finished Rollbacks.

    .venv/bin/python bench/cold_start.py [--finished 1000] [--namespaces 10] [--rounds 5] [--settle 30]

Seeding (timed, reported, not part of the cold start): D small Deployments (--deployments, spread
over M namespaces, two real revisions each) and one tracked Secret per namespace (label
rewind.dev/track=true, so the Secret history's resume path runs too); then F Rollbacks
(toRevision: previous), D at a time, one per Deployment, each batch applied in one kubectl apply
and run to the end by a running operator (each batch flips every Deployment back to its other
template). Every one must have Succeeded. The operator is then stopped (SIGTERM).

Each round then starts a fresh `rewind run` process (its own ServiceAccount, the shipped
ClusterRole bound in each namespace, `--namespace` once per namespace, `--liveness`) and watches
it for --settle seconds from its start:

- live:      its liveness endpoint first answers 200 (kopf serves it once the operator runs;
             it says nothing about what it has listed);
- watching:  its watch of Rollbacks has started in every namespace (from the audit log: kopf
             lists the namespace's Rollbacks first, then watches from the list's version, so every
             finished Rollback has reached the operator);
- daemons:   every finished Rollback's daemon has run and ended (kopf logs "Daemon 'rollback'
             succeeded." at INFO for each; a finished Rollback's daemon returns at once, without
             a request): the operator has worked through everything it listed;
- quiet:     the first moment after `watching` from which the operator used under 0.03 CPU
             seconds in a second;
- at the end of the window: VmRSS and VmHWM, CPU seconds (utime + stime) since the start, and
  every request it sent (the API server's audit log logs every request of the operator's
  ServiceAccount): reads, and writes by verb/resource. The goal is zero writes: a finished
  Rollback needs nothing written, so any write is a finding.

Before seeding, the same is measured once over empty namespaces (`empty`): the operator's own
floor. Medians with spread go to stdout and bench/results/cold_start-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import yaml

from benchlib import (
    OPERATOR_USER, AuditLog, Bed, RollbackWatch, add_nodes, cpu_seconds, fmt_spread, images_in_group,
    make_revisions_many, memory_kib, rollback_doc, source_revision, spread, wait_watching_namespaces,
)

HERE = Path(__file__).resolve().parent
MIB = 1024
SEED = "seed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_operator(bed: Bed) -> None:
    bed.operator.terminate()
    bed.operator.wait(timeout=30)


def daemons_ended(log: Path, offset: int) -> list[float]:
    """When each Rollback daemon ended, from the operator's log after `offset`: kopf logs
    "Daemon 'rollback' succeeded." at INFO when one returns (a finished Rollback's at once)."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for line in text.split("\n") if "Daemon 'rollback' succeeded." in line]


def cold_start(bed: Bed, audit: AuditLog, namespaces: list[str], settle: float) -> dict:
    """Starts the operator and watches it for `settle` seconds; leaves it running."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    log = bed.run_dir / "operator.log"
    offset = log.stat().st_size if log.exists() else 0
    wall0, t0 = time.time(), time.monotonic()
    bed.start_operator(args=("--liveness", url))
    pid = bed.operator.pid
    live = None
    samples: list[tuple[float, float]] = []      # (seconds since start, CPU seconds)
    watching = None
    while (now := time.monotonic() - t0) < settle:
        if bed.operator.poll() is not None:
            raise RuntimeError(f"the operator exited with {bed.operator.returncode}; "
                               f"see {bed.run_dir / 'operator.log'}")
        samples.append((now, cpu_seconds(pid)))
        if live is None:
            try:
                with urllib.request.urlopen(url, timeout=0.5) as answer:
                    if answer.status == 200:
                        live = time.monotonic() - t0
            except OSError:
                pass
        if watching is None and now > 0.5:
            try:
                watching = wait_watching_namespaces(bed, audit, namespaces, wall0, timeout=0) - wall0
            except TimeoutError:
                pass
        time.sleep(0.1)
    mem, cpu = memory_kib(pid), cpu_seconds(pid)
    ended = daemons_ended(log, offset)
    requests = audit.between(OPERATOR_USER, wall0)
    writes = [r for r in requests if r.kind == "write"]
    quiet = None
    if watching is not None:
        for i, (t, c) in enumerate(samples):
            later = [c2 for t2, c2 in samples[i:] if t2 <= t + 1.0]
            if t >= watching and samples[-1][0] >= t + 1.0 and later[-1] - c < 0.03:
                quiet = t
                break
    return {
        "live_s": round(live, 3) if live is not None else None,
        "watching_s": round(watching, 3) if watching is not None else None,
        "quiet_s": round(quiet, 3) if quiet is not None else None,
        "daemons_ended": len(ended), "all_daemons_ended_s": round(max(ended) - wall0, 3) if ended else None,
        "window_s": settle, "rss_mib": round(mem["VmRSS"] / MIB, 1), "vmhwm_mib": round(mem["VmHWM"] / MIB, 1),
        "cpu_s": round(cpu, 2), "reads": sum(r.kind == "read" for r in requests),
        "reads_by": dict(Counter(f"{r.verb} {r.resource}" for r in requests if r.kind == "read").most_common()),
        "writes": len(writes),
        "writes_by": dict(Counter(f"{r.verb} {r.resource}" for r in writes).most_common()),
        "write_examples": [f"{r.verb} {r.resource} {r.namespace}/{r.name} ({r.user_agent.split(' ')[0]}, {r.code})"
                           for r in writes[:10]],
    }


def seed(bed: Bed, namespaces: list[str], args) -> dict:
    """F finished Rollbacks, run for real by the running operator, D at a time."""
    targets = [(namespaces[j % len(namespaces)], f"app-{j}") for j in range(args.deployments)]
    t0 = time.monotonic()
    batches = []
    done = succeeded = 0
    while done < args.finished:
        batch = targets[:min(args.deployments, args.finished - done)]
        names = [(ns, f"rb-{done + j}") for j, (ns, _) in enumerate(batch)]
        watch = RollbackWatch(bed, SEED, {f"{ns}/{n}" for ns, n in names}).start()
        tb = time.monotonic()
        bed.kubectl("apply", "-f", "-", as_oncall=True, timeout=600, input=yaml.safe_dump_all(
            [rollback_doc(n, ns, target, SEED) for (ns, n), (_, target) in zip(names, batch)]))
        if not watch.wait(args.timeout) or set(watch.ended.values()) != {"Succeeded"}:
            raise RuntimeError(f"seeding batch {len(batches) + 1}: {Counter(watch.ended.values())}, "
                               f"{len(names) - len(watch.ended)} not ended")
        batches.append(round(time.monotonic() - tb, 2))
        succeeded += len(names)
        done += len(batch)
        print(f"  seeded {done}/{args.finished} ({batches[-1]:.1f} s for {len(batch)})", flush=True)
    return {"seconds": round(time.monotonic() - t0, 1), "batches_s": batches, "batch_size": args.deployments,
            "succeeded": succeeded}


def run(args) -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="rewind-bench-cold-"))
    source = source_revision()      # the commit measured, and the load average at the start
    bed = Bed.start(run_dir, audit_all=True)
    print(f"run dir: {run_dir}", flush=True)
    try:
        namespaces = [bed.namespace(f"cold-{i}") for i in range(args.namespaces)]
        add_nodes(bed, args.deployments * (args.replicas + 1) + 50)
        make_revisions_many(bed, [(namespaces[j % args.namespaces], f"app-{j}") for j in range(args.deployments)],
                            args.replicas, SEED, revisions=2, timeout=args.timeout)
        audit = AuditLog(bed.cp.audit_log)
        print("cold start over empty namespaces (the operator's floor)", flush=True)
        empty = cold_start(bed, audit, namespaces, args.settle)
        print(f"  {json.dumps(empty)}", flush=True)
        # Tracked Secrets: the running operator records each one's first history copy now; a cold
        # start lists them again and must find their history current.
        bed.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tracked", "namespace": ns,
                                                              "labels": {"rewind.dev/track": "true"}},
             "stringData": {"key": "value"}} for ns in namespaces]))
        print(f"seeding {args.finished} finished Rollbacks, {args.deployments} at a time", flush=True)
        seeding = seed(bed, namespaces, args)
        # Each Rollback flips its Deployment to the other template: after an odd number of them,
        # revision 1's image; after an even number, revision 2's (where it started).
        images = images_in_group(bed, SEED)
        runs = [args.finished // args.deployments + (j < args.finished % args.deployments)
                for j in range(args.deployments)]
        expected = {f"{namespaces[j % args.namespaces]}/app-{j}": f"registry.local/app:{1 if n % 2 else 2}"
                    for j, n in enumerate(runs)}
        wrong = {k: v for k, v in images.items() if expected.get(k) != v}
        if wrong or len(images) != len(expected):
            raise RuntimeError(f"Deployments not where their Rollbacks put them: {list(wrong.items())[:5]}")
        wall_stop = time.time()
        stop_operator(bed)
        time.sleep(1)
        at_stop = [f"{r.verb} {r.resource}" for r in audit.between(OPERATOR_USER, wall_stop) if r.kind == "write"]
        rounds = []
        for r in range(args.rounds):
            rec = cold_start(bed, audit, namespaces, args.settle)
            stop_operator(bed)
            rounds.append(rec)
            print(f"cold start {r + 1}: live {rec['live_s']} s, watching {rec['watching_s']} s, "
                  f"{rec['daemons_ended']} daemons ended by {rec['all_daemons_ended_s']} s, "
                  f"quiet {rec['quiet_s']} s, "
                  f"RSS {rec['rss_mib']} MiB (peak {rec['vmhwm_mib']}), CPU {rec['cpu_s']} s, "
                  f"{rec['reads']} reads, {rec['writes']} writes {rec['writes_by'] or ''}", flush=True)
        keys = ("live_s", "watching_s", "all_daemons_ended_s", "quiet_s", "rss_mib", "vmhwm_mib", "cpu_s",
                "reads", "writes")
        stats = {k: spread([rec[k] for rec in rounds if rec[k] is not None]) for k in keys
                 if any(rec[k] is not None for rec in rounds)}
        print(f"\n{args.rounds} cold starts over {args.finished} finished Rollbacks in {args.namespaces} namespaces "
              f"(seeded in {seeding['seconds']} s):")
        for k in keys:
            if k in stats:
                print(f"  {k:11} {fmt_spread(stats[k], '', 2)}")
        out = Path(args.results_dir) / f"cold_start-{dt.date.today()}{'-' + args.tag if args.tag else ''}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "date": str(dt.date.today()), "source": source,
            "finished": args.finished, "namespaces": args.namespaces, "deployments": args.deployments,
            "replicas": args.replicas, "rounds": args.rounds, "settle_s": args.settle,
            "seeding": seeding, "seeded_rollbacks_succeeded": seeding["succeeded"],
            "deployments_where_their_rollbacks_put_them": len(images) - len(wrong),
            "writes_at_stop": at_stop, "empty": empty, "per_round": rounds, "stats": stats,
            "loadavg_at_end": os.getloadavg()}, indent=2) + "\n")
        print(f"results: {out}")
        return 0
    finally:
        bed.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finished", type=int, default=1000, help="finished Rollbacks to start over")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--deployments", type=int, default=50, help="Deployments the seeding Rollbacks target")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=30, help="seconds each cold start is watched")
    parser.add_argument("--timeout", type=float, default=600, help="seconds any one wait may take")
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--tag", default="", help="appended to the results file's name")
    args = parser.parse_args()
    args.deployments = min(args.deployments, args.finished)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
