"""One HTTP measurement against real local servers: each way an endpoint can be wrong is a
failed measurement with a reason in fixed words (nothing the endpoint sent is shown); TLS is
verified; redirects are not followed; bodies are capped."""

from __future__ import annotations

import time

import pytest

import httpservers
from loopback import LOOPBACK
from rewind_testbed.certs import issue
from rewind.adapters import http
from rewind.api.v1alpha1 import HttpCheck


@pytest.fixture(scope="module")
def base():
    server, url = httpservers.start()
    yield url
    server.shutdown()


def check(url, **kw):
    return HttpCheck.model_validate({"name": "c", "url": url, **kw})


def measure(c: HttpCheck):
    return http.measure(c, LOOPBACK)


def test_healthy_endpoint_with_json_path(base):
    m = measure(check(f"{base}/api/health", jsonPath="$.status", jsonEquals="ok", bodyContains="db"))
    assert m.ok and "answered 200" in m.detail
    assert measure(check(f"{base}/api/health", jsonPath="$.checks[0].ok", jsonEquals="true")).ok


# `sent`: something the endpoint answered, which the detail must not show.
@pytest.mark.parametrize("path,kw,fragment,sent", [
    ("/error", {}, "answered 500, expected 200", "boom"),
    ("/slow", {"maxLatencyMs": 500}, "more than 500 ms", "late"),
    ("/slow", {"timeoutSeconds": 1}, "did not answer within 1s", None),
    ("/huge", {}, "body larger than 1024 KiB", "xxxx"),
    ("/forever", {"timeoutSeconds": 5}, "body larger than 1024 KiB", "yyyy"),
    ("/redirect", {}, "answered 302, expected 200 (a redirect, not followed)", "elsewhere.example.com"),
    ("/api/health", {"jsonPath": "$.status", "jsonEquals": "degraded"},
     "the JSON value at $.status differed from the expected value", "ok"),
    ("/api/health", {"jsonPath": "$.missing"}, "no JSON value at $.missing", "status"),
    ("/api/health", {"bodyContains": "everything fine"}, "does not contain the expected text", "status"),
    # Answers that lie about what they are: a content type, an encoding, a charset, a length.
    ("/lying-json", {"jsonPath": "$.status"}, "no JSON value at $.status", "session-page"),
    ("/false-gzip", {"jsonPath": "$.status"}, "connection failed", "not-gzip"),
    ("/gzip-bomb", {"jsonPath": "$.status"}, "body larger than 1024 KiB", None),
    ("/short-body", {"jsonPath": "$.status", "timeoutSeconds": 5}, "connection failed", '"o'),
    ("/not-utf8", {"jsonPath": "$.note", "jsonEquals": "caf\u00e9"},
     "the JSON value at $.note differed from the expected value", "caf"),
])
def test_unhealthy_answers_fail_with_a_reason(base, path, kw, fragment, sent):
    t0 = time.monotonic()
    m = measure(check(f"{base}{path}", **kw))
    assert not m.ok
    assert fragment in m.detail, m.detail
    assert sent is None or sent not in m.detail, m.detail
    assert time.monotonic() - t0 < 10


def test_a_json_answer_under_another_content_type_is_still_read_as_json(base):
    # The check is about the value; a wrong Content-Type is not a reason to fail it or to pass it.
    assert measure(check(f"{base}/json-as-html", jsonPath="$.status", jsonEquals="ok")).ok
    assert not measure(check(f"{base}/json-as-html", jsonPath="$.status", jsonEquals="down")).ok


def test_tls_is_verified_unless_the_check_says_otherwise(tmp_path):
    leaf = issue("localhost", hosts=["localhost"])          # self-signed: not trusted
    (tmp_path / "c.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "k.pem").write_bytes(leaf.key_pem)
    server, url = httpservers.start(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    try:
        refused = measure(check(f"{url}/api/health"))
        assert not refused.ok and "not trusted" in refused.detail
        assert measure(check(f"{url}/api/health", insecureSkipTlsVerify=True)).ok
    finally:
        server.shutdown()


def test_connection_refused():
    m = measure(check("http://127.0.0.1:1/api/health", timeoutSeconds=2))
    assert not m.ok and m.detail.endswith("connection failed: connection refused"), m.detail
