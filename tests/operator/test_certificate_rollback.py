"""Certificate rollback against the real control plane and a real local TLS server that serves
whatever the TLS Secret holds (reloading it as a real server would): the earlier certificate comes
back byte for byte, the server serves it, and the TLS check records its fingerprint. The test CA
is in each Secret's ca.crt, which a Rollback trusts only when it says so (trust.caFromSecret);
a certificate the endpoint does not serve by the check's deadline is put back."""

from __future__ import annotations

import base64
import datetime

import pytest
from kubernetes import client

from rewind_testbed.certs import issue, pki
from tlsservers import ReloadingTlsServer
from helpers import audit_writes, condition, kubectl_apply, wait_for, wait_phase
from rewind.adapters import tls
from rewind.api.policy import EgressRule
from rewind_testbed.install import LOOPBACK_EGRESS

LOOPBACK = [EgressRule.model_validate(rule) for rule in LOOPBACK_EGRESS]

pytestmark = pytest.mark.cluster
HOST = "www.instylehairboutique.co.za"
TRUST_CA = {"trust": {"caFromSecret": True}}      # the test CA, in ca.crt


def tls_secret(name, leaf, inter, root, track=True):
    return {"metadata": {"name": name, "labels": {"rewind.dev/track": "true"} if track else {}},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64.b64encode(leaf.cert_pem + inter.cert_pem).decode(),
                     "tls.key": base64.b64encode(leaf.key_pem).decode(),
                     "ca.crt": base64.b64encode(root.cert_pem).decode()}}


def revisions(core, ns, name):
    return sorted(int(c.metadata.labels["rewind.dev/revision"]) for c in core.list_namespaced_secret(
        ns, label_selector=f"rewind.dev/history-of={name}").items)


def cert_rollback(name, certificates):
    return {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback", "metadata": {"name": name},
            "spec": {"severity": "Critical", "reason": "SSL certificate compromise", "certificates": certificates}}


def test_certificate_rollback_is_served_and_verified(cluster, api_client, namespace, operator, tmp_path):
    core = client.CoreV1Api(api_client)
    root, inter = pki()
    good = issue(HOST, inter, hosts=[HOST])
    bad = issue("staging.example.org", inter, hosts=["staging.example.org"])
    core.create_namespaced_secret(namespace, tls_secret("booking-tls", good, inter, root))
    wait_for("revision 1", lambda: revisions(core, namespace, "booking-tls") == [1], timeout=30)
    before = core.read_namespaced_secret("booking-tls", namespace).data
    core.patch_namespaced_secret("booking-tls", namespace, {"data": tls_secret("x", bad, inter, root)["data"]})
    wait_for("revision 2", lambda: revisions(core, namespace, "booking-tls") == [1, 2], timeout=30)
    server = ReloadingTlsServer(core, namespace, "booking-tls", tmp_path)
    try:
        wait_for("the bad certificate served", lambda: tls.fingerprint(
            tls.served("127.0.0.1", server.port, HOST, rules=LOOPBACK)) == tls.fingerprint(bad.cert))
        kubectl_apply(cluster, namespace, cert_rollback("cert", [{
            "secretName": "booking-tls", "toRevision": "previous", "hosts": [HOST], **TRUST_CA,
            "verify": {"host": "127.0.0.1", "port": server.port, "serverName": HOST, "timeoutSeconds": 30}}]))
        rb = wait_phase(api_client, namespace, "cert", {"Succeeded", "Failed", "Interrupted"}, timeout=90)
        assert rb["status"]["phase"] == "Succeeded", str(rb["status"])
        assert core.read_namespaced_secret("booking-tls", namespace).data == before   # byte for byte
        assert tls.fingerprint(tls.served("127.0.0.1", server.port, HOST, rules=LOOPBACK)) == tls.fingerprint(good.cert)
        check = next(v for v in rb["status"]["verification"] if v["kind"] == "TLS")
        assert check["outcome"] == "Passed"
        assert tls.fingerprint(good.cert)[:16] in check["detail"]
        assert rb["status"]["plan"][0]["secrets"][0]["fingerprint"] == tls.fingerprint(good.cert)
        assert condition(rb, "Verified")["status"] == "True"
        assert "BEGIN" not in str(rb)
    finally:
        server.close()


@pytest.mark.parametrize("case,reason,fragment", [
    ("opaque-target", "NotATLSSecret", "is of type Opaque, not kubernetes.io/tls"),
    ("expired", "CertificateExpired", "expired on"),
    ("key-mismatch", "KeyMismatch", "does not belong"),
    ("other-hosts", "CertificateHostMismatch", "do not cover"),
    ("incomplete-chain", "CertificateUntrusted", "does not lead to the CA in booking-tls-old's ca.crt"),
    ("untrusted-ca", "CertificateUntrusted", "does not lead to the system's trusted roots"),
    ("intermediate-first", "ChainOrder", "put the leaf first"),
    ("not-pem", "CertificateInvalid", "not PEM-encoded"),
])
def test_unfit_certificates_are_refused_and_nothing_changes(cluster, api_client, namespace, operator,
                                                            case, reason, fragment):
    core = client.CoreV1Api(api_client)
    root, inter = pki()
    current = issue(HOST, inter, hosts=[HOST])
    if case == "opaque-target":
        core.create_namespaced_secret(namespace, {"metadata": {"name": "booking-tls"}, "type": "Opaque",
                                                  "data": {"tls.crt": "eA==", "tls.key": "eQ=="}})
    else:
        core.create_namespaced_secret(namespace, tls_secret("booking-tls", current, inter, root, track=False))
    old = issue(HOST, inter, hosts=[HOST])
    src = tls_secret("booking-tls-old", old, inter, root, track=False)
    if case == "expired":
        gone = issue(HOST, inter, hosts=[HOST], not_before=datetime.datetime.now(datetime.timezone.utc)
                     - datetime.timedelta(days=100), days=90)
        src = tls_secret("booking-tls-old", gone, inter, root, track=False)
    elif case == "key-mismatch":
        src["data"]["tls.key"] = base64.b64encode(issue(HOST, inter).key_pem).decode()
    elif case == "other-hosts":
        src = tls_secret("booking-tls-old", issue("example.org", inter, hosts=["example.org"]), inter, root, track=False)
    elif case == "incomplete-chain":
        src["data"]["tls.crt"] = base64.b64encode(old.cert_pem).decode()
    elif case == "intermediate-first":
        src["data"]["tls.crt"] = base64.b64encode(inter.cert_pem + old.cert_pem).decode()
    elif case == "not-pem":
        src["data"]["tls.crt"] = base64.b64encode(b"not a certificate").decode()
    src["metadata"]["name"] = "booking-tls-old"
    core.create_namespaced_secret(namespace, src)
    before = core.read_namespaced_secret("booking-tls", namespace)
    trust = {} if case == "untrusted-ca" else TRUST_CA
    kubectl_apply(cluster, namespace, cert_rollback("bad-cert", [
        {"secretName": "booking-tls", "fromSecret": "booking-tls-old", "hosts": [HOST], **trust}]))
    rb = wait_phase(api_client, namespace, "bad-cert", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
    assert rb["status"]["phase"] == "Failed"
    ready = condition(rb, "Ready")
    assert ready["reason"] == reason and fragment in ready["message"], ready
    after = core.read_namespaced_secret("booking-tls", namespace)
    assert after.metadata.resource_version == before.metadata.resource_version
    assert after.data == before.data


def test_cert_manager_owned_secrets_are_flagged(cluster, api_client, namespace, operator):
    core = client.CoreV1Api(api_client)
    root, inter = pki()
    cur = tls_secret("booking-tls", issue(HOST, inter, hosts=[HOST]), inter, root, track=False)
    cur["metadata"]["annotations"] = {"cert-manager.io/certificate-name": "booking"}
    core.create_namespaced_secret(namespace, cur)
    core.create_namespaced_secret(namespace, {**tls_secret("booking-tls-old", issue(HOST, inter, hosts=[HOST]),
                                                            inter, root, track=False)})
    kubectl_apply(cluster, namespace, cert_rollback("managed", [
        {"secretName": "booking-tls", "fromSecret": "booking-tls-old", "hosts": [HOST], **TRUST_CA}]))
    rb = wait_phase(api_client, namespace, "managed", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
    assert rb["status"]["phase"] == "Succeeded", str(rb["status"])
    planned = condition(rb, "Planned")["message"]
    assert "managed by cert-manager (Certificate booking), which may overwrite the restored value" in planned


def test_a_certificate_the_endpoint_does_not_serve_is_put_back(cluster, api_client, namespace, operator, tmp_path):
    """The endpoint never picks the restored certificate up (it serves a copy of the Secret that
    does not change): at the check's deadline the Secret is put back, once, as a failed write is."""
    core = client.CoreV1Api(api_client)
    root, inter = pki()
    current = issue(HOST, inter, hosts=[HOST])
    core.create_namespaced_secret(namespace, tls_secret("booking-tls", current, inter, root))
    wait_for("revision 1", lambda: revisions(core, namespace, "booking-tls") == [1], timeout=30)
    core.create_namespaced_secret(namespace, tls_secret("booking-tls-old", issue(HOST, inter, hosts=[HOST]),
                                                        inter, root, track=False))
    core.create_namespaced_secret(namespace, tls_secret("frozen-copy", current, inter, root, track=False))
    before = core.read_namespaced_secret("booking-tls", namespace).data
    server = ReloadingTlsServer(core, namespace, "frozen-copy", tmp_path)
    try:
        kubectl_apply(cluster, namespace, cert_rollback("not-served", [{
            "secretName": "booking-tls", "fromSecret": "booking-tls-old", "hosts": [HOST], **TRUST_CA,
            "verify": {"host": "127.0.0.1", "port": server.port, "serverName": HOST, "timeoutSeconds": 3}}]))
        rb = wait_phase(api_client, namespace, "not-served", {"Succeeded", "Failed", "Interrupted"}, timeout=90)
    finally:
        server.close()
    assert rb["status"]["phase"] == "Failed", str(rb["status"])
    assert core.read_namespaced_secret("booking-tls", namespace).data == before      # byte for byte
    ready = condition(rb, "Ready")
    assert ready["reason"] == "CertificateNotServed", ready
    assert "not the restored" in ready["message"] and "was put back to what it held before the rollback" \
        in ready["message"], ready
    restored = condition(rb, "SecretsRestored")
    assert (restored["status"], restored["reason"]) == ("False", "PutBack"), restored
    check = next(v for v in rb["status"]["verification"] if v["kind"] == "TLS")
    assert check["outcome"] == "Failed" and "was put back" in check["detail"]
    step = next(r for r in rb["status"]["steps"] if r["name"] == "certificate/booking-tls/served")
    assert (step["state"], step["reason"]) == ("Failed", "CertificateNotServed"), step
    writes = audit_writes(cluster, namespace, "secrets", "booking-tls")
    # the swap, then the put-back: once each
    assert [w["verb"] for w in writes if w["objectRef"].get("name") == "booking-tls"] == ["patch", "patch"]
    assert "BEGIN" not in str(rb)
