"""Benchmark (not a test): a soak. One operator runs for a long time while Rollbacks keep coming,
and what is watched is whether anything grows or slows that should not.

    .venv/bin/python bench/soak.py [--minutes 30] [--deployments 20] [--namespaces 4] [--interval 2]

It brings up the local control plane, makes --deployments Deployments (spread over --namespaces)
with three real revisions each, starts `rewind run` for those namespaces, and then, every
--interval seconds until --minutes have passed, applies one Rollback (toRevision: previous) of the
next Deployment in turn whose previous Rollback has ended and whose rollout has settled, as the
on-call person (`kubectl apply`). Finished Rollbacks are kept, as a cluster keeps its history.

Sampled every 10 s: the operator's RSS and CPU seconds, Rollbacks applied and ended. At the end:
the time from apply to Ready (medians and spread, first and last fifth of the run apart, so that a
slowdown shows), failures, the RSS at the start and at the end of the steady part and its slope
(least squares, MiB per hour, after the first tenth of the run), and the operator's writes per
Rollback from the API server's audit log. Read, never asserted: a slope near zero at a constant
count of live Rollbacks, no failure, no slowdown. Results: bench/results/soak-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from benchlib import (
    OPERATOR_USER, AuditLog, Bed, _settled, cpu_seconds, fmt_spread, make_revisions_many, memory_kib,
    rollback_doc, source_revision, spread,
)

HERE = Path(__file__).resolve().parent
MIB = 1024
GROUP = "soak"
TERMINAL = {"Succeeded", "Failed", "Interrupted"}


def _phase(api, ns: str, name: str) -> str | None:
    rb = api.get_namespaced_custom_object("rewind.dev", "v1alpha1", ns, "rollbacks", name)
    return (rb.get("status") or {}).get("phase")


def run(args) -> int:
    from kubernetes import client, config

    run_dir = Path(tempfile.mkdtemp(prefix="rewind-bench-soak-"))
    source = source_revision()
    bed = Bed.start(run_dir)
    print(f"run dir: {run_dir}", flush=True)
    try:
        namespaces = [bed.namespace(f"soak-{i}") for i in range(args.namespaces)]
        targets = [(namespaces[j % args.namespaces], f"d{j}") for j in range(args.deployments)]
        make_revisions_many(bed, targets, 1, GROUP, revisions=3, timeout=600)
        audit = AuditLog(bed.cp.audit_log)
        bed.start_operator()
        bed.wait_operator_watching(None)          # the audit policy here logs writes only
        pid = bed.operator.pid
        api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(bed.cp.kubeconfig)))

        wall0, t0 = time.time(), time.monotonic()
        cpu0 = cpu_seconds(pid)
        end = t0 + args.minutes * 60
        in_flight: dict[tuple[str, str], tuple[str, float]] = {}     # target -> (rollback, applied at)
        done: list[dict] = []
        samples: list[dict] = []
        applied = 0
        turn = 0
        next_apply = t0
        next_sample = t0
        while time.monotonic() < end or in_flight:
            now = time.monotonic()
            for target, (name, at) in list(in_flight.items()):
                phase = _phase(api, target[0], name)
                if phase in TERMINAL:
                    done.append({"name": f"{target[0]}/{name}", "phase": phase,
                                 "seconds": round(time.monotonic() - at, 3), "at": round(at - t0, 1)})
                    del in_flight[target]
            if now >= next_apply and now < end:
                next_apply += args.interval
                for _ in range(len(targets)):
                    ns, dep = targets[turn % len(targets)]
                    turn += 1
                    if (ns, dep) not in in_flight and _settled(bed, ns, dep) is None:
                        name = f"soak-{applied}"
                        doc = rollback_doc(name, ns, dep, GROUP)
                        bed.kubectl("apply", "-f", "-", as_oncall=True, input=yaml.safe_dump(doc))
                        in_flight[(ns, dep)] = (name, time.monotonic())
                        applied += 1
                        break
            if now >= next_sample:
                next_sample += 10
                samples.append({"t": round(now - t0, 1), "rss_mib": round(memory_kib(pid)["VmRSS"] / MIB, 1),
                                "cpu_s": round(cpu_seconds(pid) - cpu0, 2), "applied": applied,
                                "ended": len(done)})
                print(f"  {samples[-1]}", flush=True)
            if bed.operator.poll() is not None:
                raise RuntimeError(f"the operator exited with {bed.operator.returncode}")
            if time.monotonic() > end + 600:
                raise RuntimeError(f"{len(in_flight)} Rollbacks did not end 10 minutes after the last apply")
            time.sleep(0.25)
        elapsed = time.monotonic() - t0
        samples.append({"t": round(elapsed, 1), "rss_mib": round(memory_kib(pid)["VmRSS"] / MIB, 1),
                        "cpu_s": round(cpu_seconds(pid) - cpu0, 2), "applied": applied, "ended": len(done)})
        steady = [s for s in samples if s["t"] >= elapsed / 10] or samples
        slope = statistics.linear_regression([s["t"] for s in steady], [s["rss_mib"] for s in steady]).slope \
            if len(steady) >= 2 else 0.0
        fifth = max(1, len(done) // 5)
        durations = {"all": spread([d["seconds"] for d in done]),
                     "first_fifth": spread([d["seconds"] for d in done[:fifth]]),
                     "last_fifth": spread([d["seconds"] for d in done[-fifth:]])}
        writes = [r for r in audit.between(OPERATOR_USER, wall0) if r.kind == "write"]
        phases = dict(Counter(d["phase"] for d in done))
        result = {
            "date": str(dt.date.today()), "source": source, "minutes": args.minutes,
            "deployments": args.deployments, "namespaces": args.namespaces, "interval_s": args.interval,
            "applied": applied, "ended": len(done), "phases": phases,
            "failed": [d for d in done if d["phase"] != "Succeeded"][:20],
            "apply_to_ready_s": durations,
            "operator": {"rss_mib_first": steady[0]["rss_mib"], "rss_mib_last": steady[-1]["rss_mib"],
                         "rss_mib_peak": max(s["rss_mib"] for s in samples),
                         "rss_slope_mib_per_hour": round(slope * 3600, 2),
                         "vmhwm_mib": round(memory_kib(pid)["VmHWM"] / MIB, 1),
                         "cpu_s": samples[-1]["cpu_s"], "writes": len(writes),
                         "writes_per_rollback": round(len(writes) / max(1, len(done)), 1),
                         "writes_by": dict(Counter(f"{r.verb} {r.resource}" for r in writes).most_common())},
            "samples": samples,
        }
        print(f"\nsoak of {elapsed / 60:.1f} min: {applied} Rollbacks applied, {len(done)} ended {phases}")
        for k, v in durations.items():
            print(f"  apply to Ready, {k.replace('_', ' ')}: {fmt_spread(v)}")
        op = result["operator"]
        print(f"  operator RSS {op['rss_mib_first']} -> {op['rss_mib_last']} MiB (peak {op['rss_mib_peak']}, "
              f"slope {op['rss_slope_mib_per_hour']} MiB/h), CPU {op['cpu_s']} s, "
              f"{op['writes_per_rollback']} writes per Rollback")
        out = Path(args.results_dir) / f"soak-{dt.date.today()}{'-' + args.tag if args.tag else ''}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {out}")
        return 0
    finally:
        bed.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--deployments", type=int, default=20)
    parser.add_argument("--namespaces", type=int, default=4)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between two applies")
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--tag", default="", help="appended to the results file's name")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
