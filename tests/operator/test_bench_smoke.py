"""The scale and cold-start benchmarks, run tiny, so that they cannot rot: each as a subprocess
(its own control plane, as `make bench-scale` runs it) into a temporary results folder. What is
asserted is the results file's shape and what the benchmark checked about the cluster (every
Rollback succeeded, every Deployment went back), never a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


def bench(script: str, tmp_path: Path, *args: str) -> dict:
    if os.environ.get("REWIND_TEST_EXISTING_CLUSTER") == "1":
        pytest.skip("the benchmarks start their own local control plane")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "operator"), str(REPO / "testbed"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(REPO / "bench" / script), "--results-dir", str(tmp_path), *args],
                         capture_output=True, text=True, timeout=540, env=env, cwd=REPO)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-5000:])
    files = list(tmp_path.glob(f"{script.removesuffix('.py')}-*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_scale_benchmark_runs(tmp_path):
    r = bench("scale.py", tmp_path, "--rollbacks", "4", "--namespaces", "2", "--rounds", "1", "--replicas", "1")
    assert (r["rollbacks"], r["namespaces"], r["rounds"], r["replicas"]) == (4, 2, 1, 1)
    assert r["source"]["commit"] and len(r["source"]["loadavg_at_start"]) == 3 and len(r["loadavg_at_end"]) == 3
    assert set(r["runs"]) == {"kubectl", "rewind"} and all(len(v) == 1 for v in r["runs"].values())
    assert set(r["stats"]["rewind"]) == {"n", "median", "q1", "q3", "min", "max"}
    assert r["ratio_rewind_over_kubectl"] > 0
    (rnd,) = r["per_round"]
    assert rnd["kubectl"]["failures"] == []
    assert rnd["rewind"]["all_ended"] and rnd["rewind"]["phases"] == {"Succeeded": 4}
    assert rnd["deployments"] == rnd["deployments_on_previous_image"] == 8
    op = rnd["rewind"]["operator"]
    assert op["peak_rss_mib"] > 0 and op["vmhwm_mib"] >= op["peak_rss_mib"] and op["cpu_s_until_ready"] > 0
    # Each Rollback patched its Deployment once: the audit log was read.
    assert op["writes_by"].get("patch deployments") == 4 and op["writes"] >= 4 * 5


def test_cold_start_benchmark_runs(tmp_path):
    r = bench("cold_start.py", tmp_path, "--finished", "10", "--deployments", "5", "--namespaces", "2",
              "--rounds", "1", "--settle", "8")
    assert (r["finished"], r["namespaces"], r["rounds"]) == (10, 2, 1)
    assert r["seeding"]["succeeded"] == r["seeded_rollbacks_succeeded"] == 10
    assert r["deployments_where_their_rollbacks_put_them"] == 5
    (rnd,) = r["per_round"]
    assert rnd["daemons_ended"] == 10       # every finished Rollback reached the restarted operator
    for key in ("live_s", "watching_s", "all_daemons_ended_s", "rss_mib", "vmhwm_mib", "cpu_s"):
        assert rnd[key] is not None and rnd[key] > 0, (key, rnd)
    assert rnd["reads"] > 0 and rnd["reads_by"].get("list rollbacks") == 2
    assert isinstance(rnd["writes"], int) and set(r["stats"]) >= {"live_s", "rss_mib", "writes"}
    assert r["empty"]["writes"] == 0


def test_soak_benchmark_runs(tmp_path):
    r = bench("soak.py", tmp_path, "--minutes", "0.3", "--deployments", "3", "--namespaces", "1", "--interval", "1")
    assert (r["deployments"], r["namespaces"]) == (3, 1)
    assert r["applied"] >= 5 and r["ended"] == r["applied"] and r["phases"] == {"Succeeded": r["applied"]}
    assert r["failed"] == []
    assert set(r["apply_to_ready_s"]["all"]) == {"n", "median", "q1", "q3", "min", "max"}
    op = r["operator"]
    assert op["rss_mib_peak"] > 0 and op["cpu_s"] > 0 and len(r["samples"]) >= 2
    # Each Rollback patched its Deployment once: the audit log was read.
    assert op["writes_by"].get("patch deployments") == r["applied"]
