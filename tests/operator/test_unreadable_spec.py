"""A Rollback the API server stored but the operator cannot read (a CRD older or looser than the
operator) ends at once, Failed with InvalidSpec naming the field, and is let go when deleted:
no retries, no silence. The session's CRD is loosened for the test and put back after."""

from __future__ import annotations

import pytest
import yaml

from helpers import audit_writes, condition, events_for, wait_phase

pytestmark = pytest.mark.cluster

URL_PATTERN = ("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/verification/"
               "properties/http/items/properties/url/pattern")


def test_a_stored_spec_the_operator_cannot_read_fails_clearly(cluster, api_client, namespace, operator):
    from rewind_testbed.install import PERMISSIVE, install

    cluster.kubectl("patch", "crd", "rollbacks.rewind.dev", "--type=json",
                    "-p", f'[{{"op": "remove", "path": "{URL_PATTERN}"}}]')
    try:
        rb = {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback", "metadata": {"name": "loose"},
              "spec": {"severity": "High", "reason": "r", "dryRun": True, "application": [{"name": "web"}],
                       "verification": {"http": [{"name": "a", "url": "not a url at all"}]}}}
        for _ in range(50):     # the admission policies re-type-check against the changed CRD
            out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(rb), check=False)
            if out.returncode == 0:
                break
        assert out.returncode == 0, out.stderr
    finally:
        install(cluster.kubectl, PERMISSIVE)        # the committed CRD again
    got = wait_phase(api_client, namespace, "loose", {"Failed", "Succeeded", "Planned"}, timeout=60)
    ready = condition(got, "Ready")
    assert got["status"]["phase"] == "Failed" and ready["reason"] == "InvalidSpec", got["status"]
    assert "verification.http.0.url" in ready["message"]
    assert "not a url at all" not in ready["message"]             # fields named, values not
    assert any(e.reason == "InvalidSpec" for e in events_for(api_client, namespace, "loose"))
    writes = audit_writes(cluster, namespace, "rollbacks", "loose", subresource="status")
    # Said once, not retried: one write that landed. (The first may meet a 409, kopf's finalizer
    # patch landing first; that one changed nothing and is sent again.)
    assert len([w for w in writes if w["responseStatus"]["code"] < 400]) == 1, writes
    cluster.kubectl("delete", "rollback", "loose", "-n", namespace, "--wait=true", "--timeout=30s")
