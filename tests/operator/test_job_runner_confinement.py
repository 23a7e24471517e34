"""The test bed's Job runner holds a database Job's container to what its spec says, as a kubelet
would: a `readOnly` volume mount cannot be written, and the process runs as `runAsUser` with
`fsGroup` owning the volumes. Otherwise the check Job's read-only backup mount is never tested."""

from __future__ import annotations

import os

import pytest
from kubernetes import client

from helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.test_bed_only, pytest.mark.skipif(os.geteuid() != 0, reason="the runner confines only as root")]

SCRIPT = ("id -u > /out/uid; id -G > /out/groups; "
          "if touch /in/written 2> /out/err; then echo wrote > /out/ro; else echo refused > /out/ro; fi; "
          "touch /out/rw-ok")


def test_read_only_mounts_and_the_user_are_enforced(cluster, api_client, namespace, job_runner):
    ro = job_runner.create_pvc(namespace, "ro-claim")
    rw = job_runner.create_pvc(namespace, "rw-claim")
    (ro / "backup.dump").write_bytes(b"x")
    client.BatchV1Api(api_client).create_namespaced_job(namespace, {
        "metadata": {"name": "confined", "labels": {"rewind.dev/component": "database-job"}},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {"rewind.dev/component": "database-job"}},
            "spec": {"restartPolicy": "Never",
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999,
                                         "fsGroup": 2000},
                     "containers": [{"name": "c", "image": "postgres:16", "command": ["sh", "-c", SCRIPT],
                                     "volumeMounts": [{"name": "in", "mountPath": "/in", "readOnly": True},
                                                      {"name": "out", "mountPath": "/out"}]}],
                     "volumes": [{"name": "in", "persistentVolumeClaim": {"claimName": "ro-claim"}},
                                 {"name": "out", "persistentVolumeClaim": {"claimName": "rw-claim"}}]}}}})
    wait_for("the Job finished", lambda: (rw / "rw-ok").exists(), timeout=120)
    assert (rw / "uid").read_text().split() == ["999"]
    assert "2000" in (rw / "groups").read_text().split()
    assert (rw / "ro").read_text().strip() == "refused"
    assert "Read-only file system" in (rw / "err").read_text()
    assert not (ro / "written").exists()
    assert (rw / "rw-ok").stat().st_uid == 999 and (rw / "rw-ok").stat().st_gid == 2000
