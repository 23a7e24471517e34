"""Maintenance and monitoring hooks, notifications and the incident report, through the operator,
each effect asserted where it landed: the Service and Deployment in the API server, the silence
in a real Alertmanager, the calls on a local HTTP receiver, the messages on a real local SMTP
server, and the report ConfigMap against the Rollback's status."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys

import pytest
from kubernetes import client

import httpservers
from helpers import (
    audit_writes, condition, deploy_revisions, deployment, events_for, kubectl_apply, rolled_out, rollback, wait_for,
    wait_phase,
)
from rewind_testbed.receivers import SmtpReceiver, WebhookReceiver
from rewind import incident

pytestmark = pytest.mark.cluster

TOKEN = "T0KEN-c4n4ry-8f3e2a"          # part of the webhook URLs: a secret, must not leak


@pytest.fixture(scope="module")
def health():
    server, url = httpservers.start()
    yield url
    server.shutdown()


@pytest.fixture
def hooks_server():
    with WebhookReceiver() as r:
        yield r


def _secret(api_client, namespace, name, data: dict[str, str]):
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
        "metadata": {"name": name}, "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def _bed(api_client, namespace):
    """web (2 revisions) behind Service web, and an alert checker with 2 replicas."""
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    deploy_revisions(apps, namespace, "web", ["registry.local/web:1", "registry.local/web:2"])
    apps.create_namespaced_deployment(namespace, deployment("alert-checker", "registry.local/checker:1"))
    wait_for("alert-checker", lambda: rolled_out(apps, namespace, "alert-checker"))
    core.create_namespaced_service(namespace, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80}]}})
    return apps, core


def _hooks(hooks_server, alertmanager, namespace):
    return {
        "maintenance": {"http": {"enter": {"url": hooks_server.url("/maintenance/enter"), "body": '{"bookings": false}'},
                                 "exit": {"urlSecretRef": {"name": "maintenance-exit", "key": "url"}}},
                        "service": {"name": "web", "selector": {"app": "maintenance-page"}}},
        "monitoring": {"scaleDown": [{"name": "alert-checker"}],
                       "alertmanager": {"url": alertmanager.url,
                                        "matchers": [{"name": "team", "value": "booking"}]}},
    }


def _silences(alertmanager, namespace):
    import httpx
    return [s for s in httpx.get(f"{alertmanager.url}/api/v2/silences").json()
            if any(m["value"] == namespace for m in s["matchers"])]


def test_hooks_are_undone_after_a_failed_rollback(cluster, api_client, namespace, operator, health,
                                                   hooks_server, alertmanager):
    apps, core = _bed(api_client, namespace)
    _secret(api_client, namespace, "maintenance-exit", {"url": hooks_server.url(f"/maintenance/exit/{TOKEN}")})
    kubectl_apply(cluster, namespace, rollback("hooked", [{"name": "web"}], **_hooks(hooks_server, alertmanager, namespace),
                                               verification={"http": [{"name": "health", "url": f"{health}/error"}]}))
    rb = wait_phase(api_client, namespace, "hooked", {"Succeeded", "Failed", "Interrupted"}, timeout=120)
    st = rb["status"]
    assert st["phase"] == "Failed", st
    assert condition(rb, "Ready")["reason"] == "VerificationFailed"
    assert [(s["name"], s["state"]) for s in st["steps"]] == [
        ("maintenance/enter", "Succeeded"), ("monitoring/suspend", "Succeeded"), ("deployment/web", "Succeeded"),
        ("verify/http/health", "Failed"), ("maintenance/exit", "Succeeded"), ("monitoring/resume", "Succeeded")]
    assert condition(rb, "HooksUndone")["status"] == "True"

    # The maintenance window was entered and exited, in that order, on the receiver.
    calls = [r.path for r in hooks_server.requests]
    assert calls == ["/maintenance/enter", f"/maintenance/exit/{TOKEN}"]
    assert hooks_server.requests[0].payload == {"bookings": False}
    # The Service went to the maintenance backend and came back: two patches, now its own pods.
    assert core.read_namespaced_service("web", namespace).spec.selector == {"app": "web"}
    patches = audit_writes(cluster, namespace, "services", "web")
    if patches is not None:
        assert len(patches) == 2, patches
    # Monitoring: the checker was scaled to 0 and back to 2; the silence existed and is expired.
    assert apps.read_namespaced_deployment("alert-checker", namespace).spec.replicas == 2
    assert st["hooks"]["scaledReplicas"] == {"Deployment/alert-checker": 2}
    assert "scaled to 0: Deployment/alert-checker (was 2)" in st["steps"][1]["message"]
    silences = _silences(alertmanager, namespace)
    assert len(silences) == 1 and silences[0]["status"]["state"] == "expired"
    # Confined to the Rollback's namespace although the spec did not say so.
    assert {(m["name"], m["value"]) for m in silences[0]["matchers"]} == {("team", "booking"), ("namespace", namespace)}
    assert silences[0]["id"] == st["hooks"]["silenceId"]
    assert rb["metadata"]["uid"] in silences[0]["comment"]
    assert st["hooks"]["serviceSelector"] == {"app": "web"}
    assert TOKEN not in str(rb) and TOKEN not in operator.output()


def test_a_failed_maintenance_entry_changes_nothing(cluster, api_client, namespace, operator, hooks_server,
                                                     alertmanager):
    apps, core = _bed(api_client, namespace)
    _secret(api_client, namespace, "maintenance-exit", {"url": hooks_server.url("/maintenance/exit")})
    hooks_server.fail_next(1, status=403)          # not worth retrying
    kubectl_apply(cluster, namespace, rollback("refused", [{"name": "web"}], **_hooks(hooks_server, alertmanager, namespace)))
    rb = wait_phase(api_client, namespace, "refused", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
    st = rb["status"]
    assert st["phase"] == "Failed" and condition(rb, "Ready")["reason"] == "HookFailed", st
    assert "the maintenance enter hook answered 403" in condition(rb, "Ready")["message"]
    assert [(s["name"], s["state"]) for s in st["steps"]] == [
        ("maintenance/enter", "Failed"), ("monitoring/suspend", "Skipped"), ("deployment/web", "Skipped"),
        ("maintenance/exit", "Succeeded"), ("monitoring/resume", "Skipped")]
    # Nothing else changed: the workload is untouched, the Service too, no silence, checker running.
    assert audit_writes(cluster, namespace, "deployments") == []
    assert audit_writes(cluster, namespace, "services") == []
    assert core.read_namespaced_service("web", namespace).spec.selector == {"app": "web"}
    assert apps.read_namespaced_deployment("web", namespace).metadata.annotations[
        "deployment.kubernetes.io/revision"] == "2"
    assert _silences(alertmanager, namespace) == []
    # The exit hook still ran: the application may have half-entered maintenance.
    assert [r.path for r in hooks_server.requests] == ["/maintenance/enter", "/maintenance/exit"]


def test_notifications_are_routed_retried_and_never_doubled(cluster, api_client, namespace, operator):
    deploy_revisions(client.AppsV1Api(api_client), namespace, "web", ["registry.local/web:1", "registry.local/web:2"])
    with WebhookReceiver() as ops, WebhookReceiver() as pager, WebhookReceiver(slack=True) as slack, \
            WebhookReceiver() as broken, SmtpReceiver() as smtp:
        _secret(api_client, namespace, "ops-webhook", {"url": ops.url(f"/events/{TOKEN}")})
        _secret(api_client, namespace, "sms-gateway", {"url": pager.url(f"/sms/{TOKEN}")})
        _secret(api_client, namespace, "ops-slack", {"url": slack.url(f"/services/{TOKEN}")})
        _secret(api_client, namespace, "broken-webhook", {"url": broken.url(f"/gone/{TOKEN}")})
        ops.fail_next(1, status=503)      # the Started notification: first attempt refused,
        ops.drop_next(1)                  # second received but its answer lost, third answered
        smtp.fail_next(1, code=451)
        broken.fail_next(100, status=410)
        ref = lambda name: {"name": name, "key": "url"}  # noqa: E731
        kubectl_apply(cluster, namespace, rollback("told", [{"name": "web"}], notifications=[
            {"name": "ops", "webhook": {"urlSecretRef": ref("ops-webhook")}},
            {"name": "pager", "severities": ["Critical"], "webhook": {"urlSecretRef": ref("sms-gateway")}},
            {"name": "chat", "events": ["Started", "Succeeded", "Failed"], "slack": {"webhookSecretRef": ref("ops-slack")}},
            {"name": "mail", "events": ["Succeeded", "Failed"], "email": {
                "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "None"},
                "from": "rewind@example.com", "to": ["stakeholders@example.com"]}},
            {"name": "broken", "events": ["Succeeded"], "webhook": {"urlSecretRef": ref("broken-webhook")}},
        ]))
        rb = wait_for("every notification settled", lambda: (lambda r: r if r.get("status", {}).get("phase") == "Succeeded"
                      and r["status"].get("notifications") and all(n["state"] != "Pending" for n in r["status"]["notifications"])
                      else None)(client.CustomObjectsApi(api_client).get_namespaced_custom_object(
                          "rewind.dev", "v1alpha1", namespace, "rollbacks", "told")), timeout=120)
        st = rb["status"]
        uid = rb["metadata"]["uid"]
        records = {(n["channel"], n["event"]): n for n in st["notifications"]}
        assert set(records) == {("ops", "Started"), ("ops", "Succeeded"), ("chat", "Started"), ("chat", "Succeeded"),
                                ("mail", "Succeeded"), ("broken", "Succeeded")}    # pager: Critical only
        assert pager.requests == []

        # ops: one refusal and one lost answer among its requests; retried under the same key
        # each time, so the receiver acts on each event exactly once.
        assert len(ops.requests) == 4
        assert sum(records[("ops", e)]["attempts"] for e in ("Started", "Succeeded")) == 4
        for event in ("Started", "Succeeded"):
            tries = [r for r in ops.requests if r.payload["event"] == event]
            assert {r.key for r in tries} == {records[("ops", event)]["key"]}
            assert len(tries) == records[("ops", event)]["attempts"]
        assert sorted(r.payload["event"] for r in ops.delivered) == ["Started", "Succeeded"]
        p = next(r.payload for r in ops.delivered if r.payload["event"] == "Succeeded")
        assert p["rollback"] == {"namespace": namespace, "name": "told", "uid": uid}
        assert p["severity"] == "High" and p["phase"] == "Succeeded" and p["reason"] == "bad release"

        assert [r.payload["text"].split(": ", 1)[1].split(".")[0] for r in slack.requests] == ["Started", "Succeeded"]
        # mail: refused once (451), sent again with the same Message-ID; one message delivered.
        assert len(smtp.unique) == 1
        mail = smtp.unique[0]
        assert mail.message["Subject"] == f"[High] Rollback {namespace}/told: Succeeded"
        assert mail.message["To"] == "stakeholders@example.com"
        assert records[("mail", "Succeeded")]["attempts"] == 2

        # broken: 410 is not worth retrying; recorded, and the rollback is not affected.
        assert records[("broken", "Succeeded")]["state"] == "Failed"
        assert records[("broken", "Succeeded")]["attempts"] == 1
        assert "answered 410" in records[("broken", "Succeeded")]["lastError"]
        assert all(n["state"] == "Sent" for k, n in records.items() if k[0] != "broken")
        assert condition(rb, "Ready")["status"] == "True"
        notified = condition(rb, "Notified")
        assert notified["status"] == "False" and notified["reason"] == "NotificationFailed"
        assert TOKEN not in str(rb) and TOKEN not in operator.output()

        # The report: in its ConfigMap, rendered from this very status, and printed by the CLI.
        cm_name = st["report"]["configMapRef"]

        def settled_report():
            fresh = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
                "rewind.dev", "v1alpha1", namespace, "rollbacks", "told")
            text = client.CoreV1Api(api_client).read_namespaced_config_map(cm_name, namespace).data["report.md"]
            return text if text == incident.render(fresh) and "| broken | Succeeded | Failed |" in text else None
        text = wait_for("the report of the settled status", settled_report, timeout=30)
        cm = client.CoreV1Api(api_client).read_namespaced_config_map(cm_name, namespace)
        assert cm.metadata.owner_references[0].uid == uid
        out = subprocess.run([sys.executable, "-m", "rewind.cli", "report", "told", "-n", namespace,
                              "--kubeconfig", str(cluster.kubeconfig)], capture_output=True, text=True, check=True)
        assert out.stdout == text
        assert "- [ ] Stakeholders notified: 5 of 6 notification(s) sent" in text
        assert "Tell the people behind broken by hand" in text
        # The failure path leaks nothing either: lastError, the Warning Event, the report.
        events = [(e.reason, e.message) for e in events_for(api_client, namespace, "told")]
        assert any(r == "NotificationFailed" and "broken" in m for r, m in events)
        assert TOKEN not in str(events) and TOKEN not in text


def test_an_operator_killed_mid_notification_sends_it_again_under_the_same_key(
        cluster, api_client, namespace, idle_operator):
    deploy_revisions(client.AppsV1Api(api_client), namespace, "web", ["registry.local/web:1", "registry.local/web:2"])
    with WebhookReceiver() as ops:
        _secret(api_client, namespace, "ops-webhook", {"url": ops.url("/events")})
        ops.slow_next(1, seconds=30)     # the Started notification: received, answer held back
        kubectl_apply(cluster, namespace, rollback("killed", [{"name": "web"}], notifications=[
            {"name": "ops", "webhook": {"urlSecretRef": {"name": "ops-webhook", "key": "url"}}}]))
        idle_operator.start()
        wait_for("the Started notification in flight", lambda: ops.requests, timeout=60)
        idle_operator.kill()                         # SIGKILL while it waits for the answer
        idle_operator.start()
        rb = wait_for("the rollback done and told", lambda: (lambda r: r if r.get("status", {}).get("phase") == "Succeeded"
                      and all(n["state"] == "Sent" for n in r["status"].get("notifications", [])) else None)(
            client.CustomObjectsApi(api_client).get_namespaced_custom_object(
                "rewind.dev", "v1alpha1", namespace, "rollbacks", "killed")), timeout=120)
        started = [r for r in ops.requests if r.payload["event"] == "Started"]
        assert len(started) == 2 and len({r.key for r in started}) == 1     # sent again, same key
        assert sorted(r.payload["event"] for r in ops.delivered) == ["Started", "Succeeded"]
        rec = next(n for n in rb["status"]["notifications"] if n["event"] == "Started")
        assert rec["key"] == started[0].key
        assert rec["attempts"] == 2        # the claimed attempt cut off by the kill counts too


def _start_checking(cluster, api_client, namespace, name, hooks_server, alertmanager, health, count):
    """Applies a Rollback with every hook and an HTTP check of `count` measurements, and returns
    once the check runs (the maintenance window entered); returns a getter of the Rollback."""
    kubectl_apply(cluster, namespace, rollback(name, [{"name": "web"}], **_hooks(hooks_server, alertmanager, namespace),
                                               verification={"http": [{"name": "health", "url": f"{health}/api/health",
                                                                       "count": count, "intervalSeconds": 1}]}))
    crd = client.CustomObjectsApi(api_client)
    get = lambda: crd.get_namespaced_custom_object("rewind.dev", "v1alpha1", namespace, "rollbacks", name)  # noqa: E731
    wait_for("the checks running", lambda: any(s["name"] == "verify/http/health" and s["state"] == "Running"
                                               for s in get().get("status", {}).get("steps", [])), timeout=60)
    # Inside the window: the checker is down and the public Service shows the maintenance page.
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    assert apps.read_namespaced_deployment("alert-checker", namespace).spec.replicas == 0
    assert core.read_namespaced_service("web", namespace).spec.selector == {"app": "maintenance-page"}
    assert [s["status"]["state"] for s in _silences(alertmanager, namespace)] == ["active"]
    return get


def test_undo_goes_on_past_a_part_that_cannot_be_undone(cluster, api_client, namespace, operator, health,
                                                        hooks_server, alertmanager):
    apps, core = _bed(api_client, namespace)
    _secret(api_client, namespace, "maintenance-exit", {"url": hooks_server.url("/maintenance/exit")})
    _start_checking(cluster, api_client, namespace, "partial", hooks_server, alertmanager, health, 6)
    core.delete_namespaced_service("web", namespace)      # gone before it can be switched back
    rb = wait_phase(api_client, namespace, "partial", {"Succeeded", "Failed", "Interrupted"}, timeout=90)
    st = rb["status"]
    assert st["phase"] == "Failed" and condition(rb, "Ready")["reason"] == "HookFailed", st
    steps = {s["name"]: s for s in st["steps"]}
    assert steps["verify/http/health"]["state"] == "Succeeded"
    assert steps["maintenance/exit"]["state"] == "Failed"
    assert "Service web" in steps["maintenance/exit"]["message"]
    # The rest of the undo still happened: the exit hook, the checker, the silence.
    assert [r.path for r in hooks_server.requests] == ["/maintenance/enter", "/maintenance/exit"]
    assert apps.read_namespaced_deployment("alert-checker", namespace).spec.replicas == 2
    assert [s["status"]["state"] for s in _silences(alertmanager, namespace)] == ["expired"]
    undone = condition(rb, "HooksUndone")
    assert undone["status"] == "False" and "Service web" in undone["message"]


def test_a_service_already_on_the_maintenance_backend_is_refused(cluster, api_client, namespace, operator,
                                                                   hooks_server, alertmanager):
    apps, core = _bed(api_client, namespace)
    core.patch_namespaced_service("web", namespace, {"spec": {"selector": {"app": "maintenance-page"}}})
    _secret(api_client, namespace, "maintenance-exit", {"url": hooks_server.url("/maintenance/exit")})
    hooks = _hooks(hooks_server, alertmanager, namespace)
    del hooks["maintenance"]["http"]
    kubectl_apply(cluster, namespace, rollback("stale", [{"name": "web"}], **hooks))
    rb = wait_phase(api_client, namespace, "stale", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
    assert rb["status"]["phase"] == "Failed"
    assert "already points at the maintenance backend" in condition(rb, "Ready")["message"]
    # Left as it was found: an earlier rollback's maintenance page is not "restored" as the app.
    assert core.read_namespaced_service("web", namespace).spec.selector == {"app": "maintenance-page"}
    assert apps.read_namespaced_deployment("web", namespace).metadata.annotations[
        "deployment.kubernetes.io/revision"] == "2"


def test_a_silence_for_another_namespace_is_refused(cluster, api_client, namespace, operator, alertmanager):
    deploy_revisions(client.AppsV1Api(api_client), namespace, "web", ["registry.local/web:1", "registry.local/web:2"])
    kubectl_apply(cluster, namespace, rollback("wide", [{"name": "web"}], monitoring={"alertmanager": {
        "url": alertmanager.url, "matchers": [{"name": "namespace", "value": "payments"}]}}))
    rb = wait_phase(api_client, namespace, "wide", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
    planned = condition(rb, "Planned")
    assert planned["status"] == "False" and planned["reason"] == "NamespaceNotAllowed", planned
    assert _silences(alertmanager, "payments") == []


def test_a_rollback_deleted_mid_run_still_undoes_its_hooks(cluster, api_client, namespace, operator, health,
                                                          hooks_server, alertmanager):
    apps, core = _bed(api_client, namespace)
    _secret(api_client, namespace, "maintenance-exit", {"url": hooks_server.url("/maintenance/exit")})
    _start_checking(cluster, api_client, namespace, "dropped", hooks_server, alertmanager, health, 30)
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        "rewind.dev", "v1alpha1", namespace, "rollbacks", "dropped")

    def gone():
        try:
            get()
            return False
        except client.ApiException as e:
            return e.status == 404
    get = lambda: client.CustomObjectsApi(api_client).get_namespaced_custom_object(  # noqa: E731
        "rewind.dev", "v1alpha1", namespace, "rollbacks", "dropped")
    wait_for("the Rollback gone", gone, timeout=60)
    # Deleted mid-run, yet the maintenance window was exited and monitoring resumed.
    assert core.read_namespaced_service("web", namespace).spec.selector == {"app": "web"}
    assert apps.read_namespaced_deployment("alert-checker", namespace).spec.replicas == 2
    assert [s["status"]["state"] for s in _silences(alertmanager, namespace)] == ["expired"]
    assert [r.path for r in hooks_server.requests] == ["/maintenance/enter", "/maintenance/exit"]
    reasons = [e.reason for e in events_for(api_client, namespace, "dropped")]
    assert "Deleted" in reasons and reasons.index("Deleted") > reasons.index("Planned")


def test_a_failing_exit_hook_is_retried_under_one_key(cluster, api_client, namespace, operator, health,
                                                      hooks_server, alertmanager):
    _bed(api_client, namespace)
    _secret(api_client, namespace, "maintenance-exit", {"url": hooks_server.url("/maintenance/exit")})
    # Three measurements: the check runs for at least a second, long enough to be seen Running
    # (two, a second apart by whole-second timestamps, may be taken within a fraction of one).
    get = _start_checking(cluster, api_client, namespace, "retried", hooks_server, alertmanager, health, 3)
    hooks_server.fail_next(2, status=503)          # the exit hook: refused twice, then answered
    rb = wait_phase(api_client, namespace, "retried", {"Succeeded", "Failed", "Interrupted"}, timeout=90)
    assert rb["status"]["phase"] == "Succeeded", rb["status"]
    exits = [r for r in hooks_server.requests if r.path == "/maintenance/exit"]
    assert [r.answer for r in exits] == [503, 503, 200]
    key = hashlib.sha256(f"{rb['metadata']['uid']}/maintenance/exit".encode()).hexdigest()[:32]
    assert {r.key for r in exits} == {key}
    assert next(s for s in rb["status"]["steps"] if s["name"] == "maintenance/exit")["attempts"] == 3
    assert condition(rb, "HooksUndone")["status"] == "True"
    assert get()["status"]["phase"] == "Succeeded"


def test_a_silence_through_an_alertmanager_that_wants_credentials(cluster, api_client, namespace, operator,
                                                                   tmp_path):
    from rewind_testbed.alertmanager import Alertmanager

    deploy_revisions(client.AppsV1Api(api_client), namespace, "web", ["registry.local/web:1", "registry.local/web:2"])
    with Alertmanager.start(tmp_path / "am", basic_auth=("rewind", TOKEN)) as locked:
        monitoring = {"alertmanager": {"url": locked.url, "credentialsSecretRef": "am-credentials",
                                       "matchers": [{"name": "team", "value": "booking"}]}}
        # Without the Secret: refused before anything changed.
        kubectl_apply(cluster, namespace, rollback("no-creds", [{"name": "web"}], monitoring=monitoring))
        rb = wait_phase(api_client, namespace, "no-creds", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
        assert condition(rb, "Planned")["reason"] == "SecretNotFound", condition(rb, "Planned")
        _secret(api_client, namespace, "am-credentials", {"username": "rewind", "password": TOKEN})
        kubectl_apply(cluster, namespace, rollback("creds", [{"name": "web"}], monitoring=monitoring))
        rb = wait_phase(api_client, namespace, "creds", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
        assert rb["status"]["phase"] == "Succeeded", rb["status"]
        import httpx
        silences = httpx.get(f"{locked.url}/api/v2/silences", auth=("rewind", TOKEN)).json()
        assert [(s["id"], s["status"]["state"]) for s in silences] == [(rb["status"]["hooks"]["silenceId"], "expired")]
        assert TOKEN not in str(rb) and TOKEN not in operator.output()
