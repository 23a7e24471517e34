"""The leak scan: a whole rollback (database, OAuth Secrets, a certificate, the Deployment) with
unique canary values in every Secret it touches; afterwards no canary appears anywhere but in
Secrets: not in any other object of the namespace (the Rollback's status and annotations, Events,
Jobs and their pods, ReplicaSets...), not in Secret annotations, not in the operator's log, the
Job runner's logs, the API server's audit log, or this test's own output."""

from __future__ import annotations

import base64
import json
import secrets as pysecrets
import urllib.parse

import pytest
from kubernetes import client

from rewind_testbed.certs import issue, pki
from dbhelpers import CLAIM, db_secret, make_dump
from helpers import deploy_revisions, kubectl_apply, wait_for, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]
HOST = "www.instylehairboutique.co.za"
KINDS = "rollbacks,events,jobs,pods,configmaps,deployments,replicasets,persistentvolumeclaims,serviceaccounts"


def forms(value: str) -> list[str]:
    return [value, base64.b64encode(value.encode()).decode(), urllib.parse.quote(value, safe="")]


def test_no_secret_value_leaves_a_secret(cluster, api_client, postgres, booking_db, job_runner, namespace,
                                         operator, capfd):
    ns = namespace
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    canaries = {f"oauth-{i}": f"canary-{pysecrets.token_hex(12)}" for i in range(4)}
    make_dump(postgres, booking_db, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    db_secret(api_client, ns, postgres.dsn(booking_db))
    canaries["db-password"] = postgres.password

    def secret(name, data, type_="Opaque", track=False):
        core.create_namespaced_secret(ns, {"metadata": {"name": name, "labels": {"rewind.dev/track": "true"} if track else {}},
                                           "type": type_, "data": {k: base64.b64encode(v.encode()).decode()
                                                                   for k, v in data.items()}})

    secret("google-oauth", {"client-secret": canaries["oauth-0"]}, track=True)
    wait_for("history", lambda: core.list_namespaced_secret(ns, label_selector="rewind.dev/history-of=google-oauth").items)
    core.patch_namespaced_secret("google-oauth", ns, {"data": {"client-secret": base64.b64encode(
        canaries["oauth-1"].encode()).decode()}})
    secret("microsoft-oauth", {"client-secret": canaries["oauth-2"]})
    secret("microsoft-oauth-old", {"client-secret": canaries["oauth-3"]})
    root, inter = pki()
    cur, old = issue(HOST, inter, hosts=[HOST]), issue(HOST, inter, hosts=[HOST])
    for name, leaf in (("booking-tls", cur), ("booking-tls-old", old)):
        secret(name, {"tls.crt": (leaf.cert_pem + inter.cert_pem).decode(), "tls.key": leaf.key_pem.decode(),
                      "ca.crt": root.cert_pem.decode()}, type_="kubernetes.io/tls")
        body = leaf.key_pem.decode().splitlines()[1]        # a line of the private key itself
        canaries[f"key-{name}"] = body
    deploy_revisions(apps, ns, "web", ["registry.local/web:1", "registry.local/web:2"])
    wait_for("google revision 2", lambda: len(core.list_namespaced_secret(
        ns, label_selector="rewind.dev/history-of=google-oauth").items) == 2)

    kubectl_apply(cluster, ns, {
        "apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback", "metadata": {"name": "everything"},
        "spec": {"severity": "Critical", "reason": "security incident",
                 "database": {"connection": {"secretRef": {"name": "booking-db", "key": "DATABASE_URL"}},
                              "restoreFrom": {"persistentVolumeClaim": {"claimName": CLAIM, "path": "nightly/backup.dump"}},
                              "verify": {"tables": ["users"]}},
                 "secrets": [{"name": "google-oauth", "toRevision": "previous"},
                             {"name": "microsoft-oauth", "fromSecret": "microsoft-oauth-old"}],
                 "certificates": [{"secretName": "booking-tls", "fromSecret": "booking-tls-old", "hosts": [HOST],
                                   "trust": {"caFromSecret": True}}],
                 "application": [{"name": "web"}]}})
    rb = wait_phase(api_client, ns, "everything", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    assert rb["status"]["phase"] == "Succeeded", str(rb["status"])
    # The two OAuth Secrets and the TLS Secret hold their earlier data, byte for byte.
    data = {s.metadata.name: s.data for s in core.list_namespaced_secret(ns).items}
    assert base64.b64decode(data["google-oauth"]["client-secret"]).decode() == canaries["oauth-0"]
    assert data["microsoft-oauth"] == data["microsoft-oauth-old"]
    assert data["booking-tls"] == data["booking-tls-old"]

    haystacks = {
        "objects": cluster.kubectl("get", KINDS, "-n", ns, "-o", "json").stdout,
        "secret annotations": json.dumps([s.metadata.annotations for s in core.list_namespaced_secret(ns).items]),
        "operator log": operator.output(),
        "job runner logs": "\n".join(p.read_text(errors="replace") for p in job_runner.root_dir.rglob("*.log")),
        "audit log": cluster.audit_log.read_text() if cluster.audit_log else "",
    }
    out, err = capfd.readouterr()
    haystacks["test output"] = out + err
    assert len(haystacks["objects"]) > 1000 and "everything" in haystacks["objects"]
    # The scan can see a canary where it is allowed to be: in the Secrets themselves.
    in_secrets = cluster.kubectl("get", "secrets", "-n", ns, "-o", "json").stdout
    assert all(forms(v)[1] in in_secrets for k, v in canaries.items() if k.startswith("oauth"))
    for label, value in canaries.items():
        for form in forms(value):
            for where, text in haystacks.items():
                assert form not in text, f"{label} leaked into {where}"
