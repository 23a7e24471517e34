"""HTTP verification after a rollback, against a real local server: measurements counted, the
failure limit honoured, and the spec's choice on failure (Fail the rollback, or Warn)."""

from __future__ import annotations

import pytest
from kubernetes import client

import httpservers
from helpers import audit_writes, condition, deploy_revisions, kubectl_apply, rollback, wait_phase

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


def test_a_consecutive_failure_limit_stops_a_check_early(cluster, api_client, namespace, operator, base):
    before = httpservers.Handler.hits.get("/error", 0)
    rb = _run(cluster, api_client, namespace, "streak", [
        {"name": "errors", "url": f"{base}/error", "count": 10, "intervalSeconds": 0, "failureLimit": 5,
         "consecutiveFailureLimit": 1}])
    assert rb["status"]["phase"] == "Failed", rb["status"]
    result = rb["status"]["verification"][0]
    assert result["outcome"] == "Failed"
    assert result["detail"].startswith("2 of 10 measurement(s), 2 failed")   # 2 in a row > 1
    assert httpservers.Handler.hits["/error"] - before == 2


@pytest.mark.postgres
def test_sql_checks_pass_fail_and_are_inconclusive(cluster, api_client, namespace, operator, postgres, database):
    import base64
    with postgres.connect(database) as conn:
        conn.execute("CREATE TABLE appointments (id int PRIMARY KEY)")
        conn.execute("INSERT INTO appointments SELECT generate_series(1, 40)")
        conn.commit()
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, {"metadata": {"name": "checks-db"}, "data": {
        "url": base64.b64encode(postgres.dsn(database).encode()).decode()}})
    conn = {"secretRef": {"name": "checks-db", "key": "url"}}
    deploy_revisions(client.AppsV1Api(api_client), namespace, "web", ["registry.local/web:1", "registry.local/web:2"])
    kubectl_apply(cluster, namespace, rollback("sql", [{"name": "web"}], verification={"onFailure": "Warn", "sql": [
        {"name": "rows", "connection": conn, "query": "SELECT id FROM appointments", "minRows": 40, "count": 2,
         "intervalSeconds": 0},
        {"name": "count", "connection": conn, "query": "SELECT count(*) FROM appointments WHERE id > %(floor)s",
         "params": {"floor": "30"}, "equals": "10"},
        {"name": "too-few", "connection": conn, "query": "SELECT id FROM appointments", "minRows": 41},
        {"name": "slow", "connection": conn, "query": "SELECT pg_sleep(5)", "timeoutSeconds": 1},
        {"name": "sneaky-write", "connection": conn, "query": "WITH d AS (DELETE FROM appointments RETURNING 1) SELECT count(*) FROM d"},
    ]}))
    rb = wait_phase(api_client, namespace, "sql", {"Succeeded", "Failed", "Interrupted"}, timeout=120)
    st = rb["status"]
    assert st["phase"] == "Succeeded", st      # onFailure: Warn
    results = {v["name"]: v for v in st["verification"]}
    assert results["verify/sql/rows"]["outcome"] == "Passed"
    assert results["verify/sql/rows"]["detail"].startswith("2 of 2 measurement(s), 0 failed")
    assert results["verify/sql/count"]["outcome"] == "Passed"
    assert results["verify/sql/too-few"]["outcome"] == "Failed"
    assert "the query returned 40 row(s), fewer than minRows 41" in results["verify/sql/too-few"]["detail"]
    assert results["verify/sql/slow"]["outcome"] == "Inconclusive"
    assert "within 1s" in results["verify/sql/slow"]["detail"]
    assert results["verify/sql/sneaky-write"]["outcome"] == "Inconclusive"
    # The worst outcome sets Verified, whatever the order; the write never happened.
    verified = condition(rb, "Verified")
    assert verified["status"] == "False" and verified["reason"] == "VerificationFailed", verified
    assert "1 check(s) failed and 2 inconclusive" in verified["message"]
    assert "did not pass" in condition(rb, "Ready")["message"]
    with postgres.connect(database) as c:
        assert c.execute("SELECT count(*) FROM appointments").fetchone()[0] == 40
    assert postgres.password not in str(rb)


def test_an_sql_check_without_a_connection_is_refused_before_anything_changes(
        cluster, api_client, namespace, operator):
    deploy_revisions(client.AppsV1Api(api_client), namespace, "web", ["registry.local/web:1", "registry.local/web:2"])
    kubectl_apply(cluster, namespace, rollback("nowhere", [{"name": "web"}], verification={"sql": [
        {"name": "rows", "query": "SELECT 1"}]}))
    rb = wait_phase(api_client, namespace, "nowhere", {"Succeeded", "Failed", "Interrupted"}, timeout=60)
    assert rb["status"]["phase"] == "Failed"
    planned = condition(rb, "Planned")
    assert planned["status"] == "False" and planned["reason"] == "InvalidSpec"
    assert "SQL check rows has no connection" in planned["message"]
    assert audit_writes(cluster, namespace, "deployments") == []


def test_tls_checks_look_at_the_certificate_actually_served(cluster, api_client, namespace, operator, tmp_path):
    from rewind_testbed.certs import issue

    from rewind.adapters import tls

    ca = issue("Test CA", ca=True, days=30)
    good = issue("www.booking.test", ca, hosts=["www.booking.test"], days=60)
    short = issue("www.booking.test", ca, hosts=["www.booking.test"], days=4)
    servers = []
    for name, leaf in (("good", good), ("short", short)):
        (tmp_path / f"{name}.crt").write_bytes(leaf.cert_pem + ca.cert_pem)
        (tmp_path / f"{name}.key").write_bytes(leaf.key_pem)
        server, url = httpservers.start(str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key"))
        servers.append(server)
        port = int(url.rsplit(":", 1)[1])
        if name == "good":
            good_port = port
        else:
            short_port = port
    fp = tls.fingerprint(good.cert)
    base = {"host": "127.0.0.1", "serverName": "www.booking.test"}
    try:
        deploy_revisions(client.AppsV1Api(api_client), namespace, "web", ["registry.local/web:1", "registry.local/web:2"])
        kubectl_apply(cluster, namespace, rollback("tls", [{"name": "web"}], verification={"onFailure": "Warn", "tls": [
            {"name": "served", "port": good_port, "fingerprintSha256": fp, **base},
            {"name": "other-cert", "port": short_port, "fingerprintSha256": fp, **base},
            {"name": "wrong-name", "port": good_port, **base, "serverName": "admin.booking.test"},
            {"name": "expiring", "port": short_port, "minValidDays": 7, **base},
            {"name": "nothing-there", "host": "127.0.0.1", "port": 1, "serverName": "www.booking.test"},
        ]}))
        rb = wait_phase(api_client, namespace, "tls", {"Succeeded", "Failed", "Interrupted"}, timeout=120)
    finally:
        for s in servers:
            s.shutdown()
    results = {v["name"].split("/")[-1]: v for v in rb["status"]["verification"]}
    assert results["served"]["outcome"] == "Passed" and fp[:16] in results["served"]["detail"]
    assert results["other-cert"]["outcome"] == "Failed" and "not " + fp[:16] in results["other-cert"]["detail"]
    assert results["wrong-name"]["outcome"] == "Failed" and "does not cover admin.booking.test" in results["wrong-name"]["detail"]
    assert results["expiring"]["outcome"] == "Failed" and "under 7" in results["expiring"]["detail"]
    assert results["nothing-there"]["outcome"] == "Failed" and "no TLS handshake" in results["nothing-there"]["detail"]
    assert condition(rb, "Verified")["status"] == "False"
