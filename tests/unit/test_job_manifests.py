"""Database Job manifests are built from names only: credentials reach the pod through
secretKeyRef, never as a value in the Job spec; the pod meets Pod Security `restricted`."""

import json

from rewind.api.v1alpha1 import DatabaseSpec
from rewind.steps import jobs
from rewind.steps.database import job, names

ROLLBACK = {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback",
            "metadata": {"name": "rb", "namespace": "booking", "uid": "0f1e2d3c-0000-4000-8000-000000000000"}}
SPEC = DatabaseSpec.model_validate({
    "connection": {"secretRef": {"name": "booking-db", "key": "DATABASE_URL"}},
    "restoreFrom": {"persistentVolumeClaim": {"claimName": "db-backups", "path": "nightly/x.dump"}}})


def _all_jobs():
    for name, script in (("check", job.CHECK_SCRIPT), ("backup", job.BACKUP_SCRIPT),
                         ("restore", job.RESTORE_SCRIPT)):
        yield jobs.build_job(name=names.job_name(ROLLBACK["metadata"]["uid"], name), rollback=ROLLBACK,
                             step=name, image=SPEC.image, script=script,
                             env=job.env(SPEC, "nightly/x.dump", "db-backups:nightly/x.dump",
                                         TARGET_DB="booking_restore_0f1e2d3c"),
                             claim_name="db-backups", deadline_seconds=600, read_only_backups=True)


def test_credentials_only_through_secret_key_refs():
    for job in _all_jobs():
        pod = job["spec"]["template"]["spec"]
        env = pod["containers"][0]["env"]
        url = next(e for e in env if e["name"] == "DATABASE_URL")
        assert url == {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "booking-db", "key": "DATABASE_URL"}}}
        assert "://" not in json.dumps(job)
        assert all("value" in e or "valueFrom" in e for e in env)


def test_restricted_pod_security_and_one_shot():
    for job in _all_jobs():
        spec = job["spec"]
        assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 600
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        sc = pod["containers"][0]["securityContext"]
        assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}
        assert job["metadata"]["ownerReferences"][0]["uid"] == ROLLBACK["metadata"]["uid"]
        assert job["metadata"]["labels"]["rewind.dev/component"] == "database-job"
