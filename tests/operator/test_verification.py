"""HTTP verification after a rollback, against a real local server: measurements counted, the
failure limit honoured, and the spec's choice on failure (Fail the rollback, or Warn)."""

from __future__ import annotations

import pytest
from kubernetes import client

import httpservers
from helpers import condition, deploy_revisions, kubectl_apply, rollback, wait_phase

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def base():
    server, url = httpservers.start()
    yield url
    server.shutdown()


def _run(cluster, api_client, namespace, name, checks, on_failure="Fail"):
    deploy_revisions(client.AppsV1Api(api_client), namespace, "web", ["registry.local/web:1", "registry.local/web:2"])
    kubectl_apply(cluster, namespace, rollback(name, [{"name": "web"}],
                                               verification={"http": checks, "onFailure": on_failure}))
    return wait_phase(api_client, namespace, name, {"Succeeded", "Failed", "Interrupted"}, timeout=120)


def test_checks_pass_after_their_measurements(cluster, api_client, namespace, operator, base):
    before = httpservers.Handler.hits.get("/flaky", 0)
    rb = _run(cluster, api_client, namespace, "verified", [
        {"name": "health", "url": f"{base}/api/health", "jsonPath": "$.status", "jsonEquals": "ok",
         "count": 3, "intervalSeconds": 1},
        {"name": "flaky", "url": f"{base}/flaky", "count": 3, "intervalSeconds": 0, "failureLimit": 1}])
    assert rb["status"]["phase"] == "Succeeded", str(rb["status"])
    results = {v["name"]: v for v in rb["status"]["verification"]}
    assert results["verify/http/health"]["outcome"] == "Passed"
    assert results["verify/http/health"]["detail"].startswith("3 of 3 measurement(s), 0 failed")
    assert results["verify/http/flaky"]["detail"].startswith("3 of 3 measurement(s), 1 failed")
    assert httpservers.Handler.hits["/flaky"] - before == 3
    assert condition(rb, "Verified")["status"] == "True"
    assert rb["status"]["steps"][-1]["name"] == "verify/http/flaky"


@pytest.mark.parametrize("on_failure,phase", [("Fail", "Failed"), ("Warn", "Succeeded")])
def test_a_failing_check_does_what_the_spec_says(cluster, api_client, namespace, operator, base, on_failure, phase):
    rb = _run(cluster, api_client, namespace, "broken", [
        {"name": "errors", "url": f"{base}/error", "count": 5, "intervalSeconds": 0}], on_failure)
    assert rb["status"]["phase"] == phase, str(rb["status"])
    verified = condition(rb, "Verified")
    assert verified["status"] == "False" and verified["reason"] == "VerificationFailed"
    assert "answered 500, expected 200" in verified["message"]
    result = rb["status"]["verification"][0]
    assert result["outcome"] == "Failed"
    assert result["detail"].startswith("1 of 5 measurement(s), 1 failed")   # failed at the first
    if on_failure == "Fail":
        assert condition(rb, "Ready")["reason"] == "VerificationFailed"
    else:
        assert condition(rb, "Ready")["status"] == "True"
