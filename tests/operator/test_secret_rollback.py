"""Secret history and Secret rollback against the real control plane: history entries appear on
change (and not on identical writes), OAuth Secrets go back byte for byte, all together or none,
and no value ever leaves a Secret."""

from __future__ import annotations

import base64
import os
import secrets as pysecrets
import subprocess
import sys

import pytest
from kubernetes import client

from helpers import condition, events_for, get_rollback, kubectl_apply, wait_for, wait_phase

pytestmark = pytest.mark.cluster


def canary(label: str) -> str:
    return f"canary-{label}-{pysecrets.token_hex(8)}"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def make_secret(core, ns, name, data: dict[str, str], track=True, type_="Opaque", immutable=False):
    body = {"metadata": {"name": name, "labels": {"rewind.dev/track": "true"} if track else {}},
            "type": type_, "data": {k: b64(v) for k, v in data.items()}}
    if immutable:
        body["immutable"] = True
    core.create_namespaced_secret(ns, body)


def set_data(core, ns, name, data: dict[str, str]):
    core.patch_namespaced_secret(name, ns, {"data": {k: b64(v) for k, v in data.items()}})


def data_of(core, ns, name) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (core.read_namespaced_secret(name, ns).data or {}).items()}


def revisions(core, ns, name) -> list[int]:
    copies = core.list_namespaced_secret(ns, label_selector=f"rewind.dev/history-of={name}").items
    return sorted(int(c.metadata.labels["rewind.dev/revision"]) for c in copies)


def secret_rollback(name, secrets_spec):
    return {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback", "metadata": {"name": name},
            "spec": {"severity": "High", "reason": "OAuth credential rotation broke sign-in",
                     "secrets": secrets_spec}}


@pytest.fixture
def core(api_client):
    return client.CoreV1Api(api_client)


def test_history_records_changes_only(cluster, core, namespace, operator):
    v1 = {"client-id": "booking-web", "client-secret": canary("v1")}
    make_secret(core, namespace, "google-oauth", v1)
    wait_for("revision 1 recorded", lambda: revisions(core, namespace, "google-oauth") == [1], timeout=30)
    copy = core.read_namespaced_secret("google-oauth.rewind.1", namespace)
    assert copy.immutable is True
    assert copy.metadata.owner_references[0].name == "google-oauth"
    assert data_of(core, namespace, "google-oauth.rewind.1") == v1

    core.patch_namespaced_secret("google-oauth", namespace, {"metadata": {"annotations": {"touched": "yes"}}})
    set_data(core, namespace, "google-oauth", v1)          # an identical write
    v2 = {"client-id": "booking-web", "client-secret": canary("v2")}
    set_data(core, namespace, "google-oauth", v2)
    wait_for("revision 2 recorded", lambda: revisions(core, namespace, "google-oauth") == [1, 2], timeout=30)
    assert data_of(core, namespace, "google-oauth.rewind.2") == v2

    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}
    out = subprocess.run([cluster.kubectl_bin, "rewind", "history", "secret/google-oauth", "-n", namespace,
                          f"--kubeconfig={cluster.kubeconfig}"], capture_output=True, text=True, env=env,
                         check=True).stdout
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["REVISION", "RECORDED", "HASH"]
    assert [ln.split()[0] for ln in lines[1:]] == ["1", "2"]
    assert "client-secret (" in out and "bytes)" in out
    assert v1["client-secret"] not in out and v2["client-secret"] not in out
    # Deleting the Secret deletes its history (owner references, the real garbage collector).
    core.delete_namespaced_secret("google-oauth", namespace)
    wait_for("history collected", lambda: revisions(core, namespace, "google-oauth") == [], timeout=60)


def test_oauth_secrets_roll_back_byte_for_byte_and_nothing_leaks(cluster, api_client, core, namespace, operator):
    google_old = {"client-id": "booking-web", "client-secret": canary("google-old")}
    google_new = {"client-id": "booking-web", "client-secret": canary("google-new")}
    ms_old = {"client-id": "booking-ms", "client-secret": canary("ms-old"), "tenant": "instyle"}
    ms_new = {"client-id": "booking-ms", "client-secret": canary("ms-new"), "tenant": "instyle"}
    make_secret(core, namespace, "google-oauth", google_old)
    wait_for("google revision 1", lambda: revisions(core, namespace, "google-oauth") == [1], timeout=30)
    set_data(core, namespace, "google-oauth", google_new)
    wait_for("google revision 2", lambda: revisions(core, namespace, "google-oauth") == [1, 2], timeout=30)
    make_secret(core, namespace, "microsoft-oauth", ms_new, track=False)
    make_secret(core, namespace, "microsoft-oauth-2026-11-20", ms_old, track=False)

    kubectl_apply(cluster, namespace, secret_rollback("oauth", [
        {"name": "google-oauth", "toRevision": "previous"},
        {"name": "microsoft-oauth", "fromSecret": "microsoft-oauth-2026-11-20"}]))
    rb = wait_phase(api_client, namespace, "oauth", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
    assert rb["status"]["phase"] == "Succeeded", str(rb["status"])
    assert data_of(core, namespace, "google-oauth") == google_old
    assert data_of(core, namespace, "microsoft-oauth") == ms_old
    assert condition(rb, "SecretsRestored")["status"] == "True"
    # What they held before is kept, so the rollback can itself be undone.
    # (The restored data is recorded by the Secret watch, a moment after the rollback finished.)
    revs = wait_for("the restored data in the history", lambda: (lambda r: r if r[-1] >= 3 else None)(
        revisions(core, namespace, "google-oauth")), timeout=30)
    assert data_of(core, namespace, f"google-oauth.rewind.{revs[-1]}") == google_old
    assert data_of(core, namespace, "google-oauth.rewind.2") == google_new
    plan = rb["status"]["plan"][0]["secrets"]
    assert {c["name"]: c["source"] for c in plan} == {
        "google-oauth": "google-oauth.rewind.1", "microsoft-oauth": "microsoft-oauth-2026-11-20"}

    # No canary outside Secrets: the Rollback, every Event, every annotation, the operator's log.
    values = [v["client-secret"] for v in (google_old, google_new, ms_old, ms_new)]
    haystacks = [str(get_rollback(api_client, namespace, "oauth")),
                 str([(e.reason, e.message) for e in client.CoreV1Api(api_client).list_namespaced_event(namespace).items]),
                 str([s.metadata.annotations for s in core.list_namespaced_secret(namespace).items]),
                 operator.output()]
    for value in values:
        for forms in (value, b64(value)):
            assert all(forms not in h for h in haystacks)
    assert "SecretsRestored" in [e.reason for e in events_for(api_client, namespace, "oauth")]


@pytest.mark.parametrize("case,reason,fragment", [
    ("missing", "SecretNotFound", "does not exist"),
    ("no-history", "RevisionNotFound", "has no history"),
    ("unknown-revision", "RevisionNotFound", "revision 9 of Secret"),
    ("from-missing", "SecretNotFound", "the Secret to restore from"),
    ("type-mismatch", "SecretTypeMismatch", "is of type kubernetes.io/tls"),
    ("other-namespace", "NamespaceNotAllowed", "only touches its own namespace"),
])
def test_secret_refusals_change_nothing(cluster, api_client, core, namespace, operator, case, reason, fragment):
    value = {"client-secret": canary("current")}
    make_secret(core, namespace, "google-oauth", value, track=case != "no-history")
    if case != "no-history":
        wait_for("revision 1", lambda: revisions(core, namespace, "google-oauth") == [1], timeout=30)
    target = {"name": "google-oauth", "toRevision": "previous"}
    if case == "missing":
        target["name"] = "nope"
    elif case == "unknown-revision":
        target["toRevision"] = 9
    elif case == "from-missing":
        target = {"name": "google-oauth", "fromSecret": "gone"}
    elif case == "type-mismatch":
        core.create_namespaced_secret(namespace, {"metadata": {"name": "tls-old"}, "type": "kubernetes.io/tls",
                                                  "data": {"tls.crt": b64("x"), "tls.key": b64("y")}})
        target = {"name": "google-oauth", "fromSecret": "tls-old"}
    elif case == "other-namespace":
        target["namespace"] = "default"
    before = core.read_namespaced_secret("google-oauth", namespace).metadata.resource_version
    kubectl_apply(cluster, namespace, secret_rollback("bad", [target]))
    rb = wait_phase(api_client, namespace, "bad", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
    assert rb["status"]["phase"] == "Failed"
    ready = condition(rb, "Ready")
    assert ready["reason"] == reason and fragment in ready["message"], ready
    assert core.read_namespaced_secret("google-oauth", namespace).metadata.resource_version == before
    assert data_of(core, namespace, "google-oauth") == value


def test_all_or_nothing_when_one_write_fails(cluster, api_client, core, namespace, operator):
    a_old, a_new = {"k": canary("a-old")}, {"k": canary("a-new")}
    b_old, b_new = {"k": canary("b-old")}, {"k": canary("b-new")}
    make_secret(core, namespace, "a", a_new, track=False)
    make_secret(core, namespace, "a-good", a_old, track=False)
    make_secret(core, namespace, "b", b_new, track=False, immutable=True)   # its write will be refused
    make_secret(core, namespace, "b-good", b_old, track=False)
    kubectl_apply(cluster, namespace, secret_rollback("pair", [
        {"name": "a", "fromSecret": "a-good"}, {"name": "b", "fromSecret": "b-good"}]))
    rb = wait_phase(api_client, namespace, "pair", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
    assert rb["status"]["phase"] == "Failed", str(rb["status"])
    message = condition(rb, "Ready")["message"]
    assert "writing Secret b failed" in message and "every Secret was put back as it was (a)" in message
    assert data_of(core, namespace, "a") == a_new
    assert data_of(core, namespace, "b") == b_new


def test_secret_spec_needs_exactly_one_source(cluster, namespace, rollback_crd):
    out = kubectl_apply(cluster, namespace, secret_rollback("both", [
        {"name": "a", "toRevision": 1, "fromSecret": "b"}]), check=False)
    assert out.returncode != 0 and "give exactly one of toRevision and fromSecret" in out.stderr


def test_workloads_using_a_restored_secret_are_restarted_when_asked(cluster, api_client, core, namespace, operator):
    from helpers import deployment, rolled_out
    apps = client.AppsV1Api(api_client)
    old, new = {"client-secret": canary("old")}, {"client-secret": canary("new")}
    make_secret(core, namespace, "google-oauth", new, track=False)
    make_secret(core, namespace, "google-oauth-old", old, track=False)
    uses = deployment("web", "registry.local/web:1")
    uses["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "GOOGLE_CLIENT_SECRET", "valueFrom": {"secretKeyRef": {"name": "google-oauth", "key": "client-secret"}}}]
    apps.create_namespaced_deployment(namespace, uses)
    apps.create_namespaced_deployment(namespace, deployment("other", "registry.local/other:1"))
    for name in ("web", "other"):
        wait_for(f"{name} rolled out", lambda: rolled_out(apps, namespace, name))
    other_gen = apps.read_namespaced_deployment("other", namespace).metadata.generation

    rb_obj = secret_rollback("restart", [{"name": "google-oauth", "fromSecret": "google-oauth-old"}])
    rb_obj["spec"]["restartConsumers"] = True
    kubectl_apply(cluster, namespace, rb_obj)
    rb = wait_phase(api_client, namespace, "restart", {"Succeeded", "Failed", "Interrupted"}, timeout=90)
    assert rb["status"]["phase"] == "Succeeded", str(rb["status"])
    assert [s["name"] for s in rb["status"]["steps"]] == ["secrets", "restart-consumers"]
    web = apps.read_namespaced_deployment("web", namespace)
    assert web.spec.template.metadata.annotations["rewind.dev/restarted-by"] == rb["metadata"]["uid"]
    assert web.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    assert rolled_out(apps, namespace, "web")
    assert apps.read_namespaced_deployment("other", namespace).metadata.generation == other_gen
    assert data_of(core, namespace, "google-oauth") == old
