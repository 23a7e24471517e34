"""What an operator's Prometheus scrapes after a real rollback, and the JSON log lines."""

from __future__ import annotations

import datetime
import json
import socket

import httpx
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from helpers import deploy_revisions, kubectl_apply, rollback, wait_for, wait_phase

IMAGES = ["registry.local/web:1", "registry.local/web:2", "registry.local/web:3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_after_a_real_rollback_and_json_logs(cluster, api_client, namespace, idle_operator):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    idle_operator.args = ["run", "--namespace", namespace, "--metrics-address", f"127.0.0.1:{port}",
                          "--log-format", "json"]
    idle_operator.start()
    # The endpoint is up before kopf's start-up handlers have run; until they have, this process
    # drives nothing and says so (rewind_leader 0). Standalone, it then leads.
    before = wait_for("the operator to lead", lambda: (lambda s: s if s and _value(s, "rewind_leader") == 1
                                                       else None)(_safe_scrape(url)), timeout=60)
    assert _value(before, "rewind_severity_target_seconds", severity="Critical") == 300
    assert _value(before, "rewind_rollbacks_finished_total", severity="High", phase="Succeeded",
                  reason="Succeeded") is None

    deploy_revisions(client.AppsV1Api(api_client), namespace, "web", IMAGES)
    kubectl_apply(cluster, namespace, rollback("undo", [{"name": "web"}]))
    rb = wait_phase(api_client, namespace, "undo", {"Succeeded", "Failed"}, timeout=90)
    assert rb["status"]["phase"] == "Succeeded"

    after = wait_for("the finished rollback counted", lambda: (lambda s: s if _value(
        s, "rewind_rollbacks_finished_total", severity="High", phase="Succeeded", reason="Succeeded") else None)(
        _scrape(url)), timeout=30)
    assert _value(after, "rewind_rollbacks_finished_total", severity="High", phase="Succeeded", reason="Succeeded") == 1
    assert _value(after, "rewind_rollbacks_within_target_total", severity="High", within="true") == 1
    assert _value(after, "rewind_time_to_restore_seconds_count", severity="High", phase="Succeeded") == 1
    # The time to restore is the one the Rollback's status records (seconds, as status keeps them).
    took = (datetime.datetime.fromisoformat(rb["status"]["completedAt"].replace("Z", "+00:00"))
            - datetime.datetime.fromisoformat(rb["status"]["startedAt"].replace("Z", "+00:00"))).total_seconds()
    assert _value(after, "rewind_time_to_restore_seconds_sum", severity="High", phase="Succeeded") == took
    assert _value(after, "rewind_step_duration_seconds_count", kind="WorkloadRevision", state="Succeeded") == 1
    assert _value(after, "rewind_operator_errors_total") == 0
    assert _value(after, "rewind_rollbacks_overdue") == 0
    # The finished rollback is no longer among those being driven.
    assert not any(v for (name, labels), v in after.items() if name == "rewind_rollbacks")

    lines = [line for line in idle_operator.output().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any("is Succeeded" in r["message"] for r in records)
    assert not [line for line in idle_operator.output().splitlines()
                if line and not line.startswith(("{", "=====", "\n"))], "a log line that is not JSON"


def _safe_scrape(url: str):
    try:
        return _scrape(url)
    except httpx.HTTPError:
        return None
