"""Certificate validation before a swap: each way a TLS Secret's content can be unfit is refused
with its own reason."""

import datetime

import pytest

from rewind_testbed.certs import NOW, issue, pki
from rewind.adapters import tls

HOST = "www.instylehairboutique.co.za"
WEEK = datetime.timedelta(days=7)


def test_a_good_chain_passes_and_reports_the_leaf():
    root, inter = pki()
    leaf = issue(HOST, inter, hosts=[HOST, "instylehairboutique.co.za"])
    out = tls.check_pair(leaf.cert_pem + inter.cert_pem, leaf.key_pem, hosts=[HOST], min_valid=WEEK,
                         trust=tls.Trust.of_pem(root.cert_pem, "the test CA"))
    assert out.fingerprint == tls.fingerprint(leaf.cert)
    assert HOST in out.names


def test_wildcards_cover_one_label_only():
    assert tls.covers(["*.instylehairboutique.co.za"], HOST)
    assert not tls.covers(["*.instylehairboutique.co.za"], "a.b.instylehairboutique.co.za")
    assert not tls.covers(["*.instylehairboutique.co.za"], "instylehairboutique.co.za")


@pytest.mark.parametrize("case,reason,fragment", [
    ("not-pem", "CertificateInvalid", "not PEM-encoded"),
    ("bad-key", "CertificateInvalid", "tls.key is not"),
    ("key-mismatch", "KeyMismatch", "does not belong"),
    ("missing-intermediate", "CertificateUntrusted", "does not lead to the test CA"),
    ("wrong-intermediate", "CertificateUntrusted", "does not lead to the test CA"),
    ("intermediate-first", "ChainOrder", "lists CN=Test Intermediate before the leaf; put the leaf first"),
    ("expired", "CertificateExpired", "expired on"),
    ("not-yet", "CertificateNotYetValid", "valid only from"),
    ("expires-soon", "CertificateExpiresSoon", "within the required 7 day(s)"),
    ("other-hosts", "CertificateHostMismatch", "do not cover www.instylehairboutique.co.za"),
])
def test_unfit_certificates_are_refused(case, reason, fragment):
    root, inter = pki()
    leaf = issue(HOST, inter, hosts=[HOST])
    crt, key, ca = leaf.cert_pem + inter.cert_pem, leaf.key_pem, tls.Trust.of_pem(root.cert_pem, "the test CA")
    if case == "not-pem":
        crt = b"definitely not a certificate"
    elif case == "bad-key":
        key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    elif case == "key-mismatch":
        key = issue(HOST, inter, hosts=[HOST]).key_pem
    elif case == "missing-intermediate":
        crt = leaf.cert_pem
    elif case == "wrong-intermediate":
        other = issue("Other Intermediate", root, ca=True)
        crt = leaf.cert_pem + other.cert_pem
    elif case == "intermediate-first":
        crt = inter.cert_pem + leaf.cert_pem
    elif case == "expired":
        old = issue(HOST, inter, hosts=[HOST], not_before=NOW - datetime.timedelta(days=100), days=90)
        crt, key = old.cert_pem + inter.cert_pem, old.key_pem
    elif case == "not-yet":
        future = issue(HOST, inter, hosts=[HOST], not_before=NOW + datetime.timedelta(days=2))
        crt, key = future.cert_pem + inter.cert_pem, future.key_pem
    elif case == "expires-soon":
        short = issue(HOST, inter, hosts=[HOST], days=4)
        crt, key = short.cert_pem + inter.cert_pem, short.key_pem
    elif case == "other-hosts":
        elsewhere = issue("example.org", inter, hosts=["example.org"])
        crt, key = elsewhere.cert_pem + inter.cert_pem, elsewhere.key_pem
    with pytest.raises(tls.CertificateError) as err:
        tls.check_pair(crt, key, hosts=[HOST], min_valid=WEEK, trust=ca)
    assert err.value.reason == reason
    assert fragment in err.value.message, err.value.message
    assert b"PRIVATE" not in err.value.message.encode()


def test_secrets_owned_by_controllers_are_recognised():
    from rewind.steps.certificates import managed_by
    plain = {"metadata": {"name": "s"}}
    assert managed_by(plain) is None
    assert managed_by({"metadata": {"name": "s", "annotations": {"cert-manager.io/certificate-name": "web"}}}) \
        == "cert-manager (Certificate web)"
    owned = {"metadata": {"name": "s", "ownerReferences": [
        {"apiVersion": "external-secrets.io/v1beta1", "kind": "ExternalSecret", "name": "oauth"}]}}
    assert managed_by(owned) == "external-secrets (ExternalSecret oauth)"
    labelled = {"metadata": {"name": "s", "labels": {"reconcile.external-secrets.io/created-by": "x"}}}
    assert managed_by(labelled) == "external-secrets"
