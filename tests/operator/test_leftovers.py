"""What database rollbacks keep, listed (`kubectl rewind leftovers`) and removed only on a
person's explicit command (`kubectl rewind cleanup NAME --yes`), never while another Rollback of
the same database may still need it. Real PostgreSQL, real Jobs (run by the test bed's runner),
the operator as a ServiceAccount; the commands run with the test's admin credentials."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from rewind_testbed.install import PERMISSIVE

from dbhelpers import CLAIM, database_names, db_rollback, db_secret, make_dump
from helpers import get_rollback, kubectl_apply, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]


def rewind(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rewind.cli", *args, "--kubeconfig", str(cluster.kubeconfig)],
                          capture_output=True, text=True, timeout=300)


def test_kept_databases_and_dumps_are_listed_and_removed_only_when_asked(
        cluster, api_client, postgres, booking_db, job_runner, restricted, operator):
    ns = restricted
    backup = job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump"
    make_dump(postgres, booking_db, backup)
    db_secret(api_client, ns, postgres.dsn(booking_db))
    kubectl_apply(cluster, ns, db_rollback("first"))
    rb = wait_phase(api_client, ns, "first", {"Succeeded", "Failed", "Interrupted"}, timeout=180)
    assert rb["status"]["phase"] == "Succeeded", rb["status"]
    pre = rb["status"]["database"]["preRollbackDatabase"]
    dump_ref = rb["status"]["database"]["preRollbackBackup"]
    dump = job_runner.pvc_dir(ns, CLAIM) / dump_ref.split(":", 1)[1]
    assert pre in database_names(postgres) and dump.exists()

    listed = rewind(cluster, "leftovers", "-n", ns)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:] if line.strip()]
    assert ["first", "database", pre] == rows[0][:3] and rows[0][-1] == "kept"
    assert ["first", "dump", dump_ref] == rows[1][:3] and rows[1][-1] == "kept"
    assert "KiB" in listed.stdout or " B " in listed.stdout           # the dump's size

    # Another Rollback of the same database is waiting (for an approval): it may still need them.
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump({
        "apiVersion": "rewind.dev/v1alpha1", "kind": "RollbackPolicy", "metadata": {"name": "default"},
        "spec": {"severities": [{"severity": "High", "approvals": [{"role": "devops-lead"}]}],
                 "egress": PERMISSIVE["egress"]}}))
    kubectl_apply(cluster, ns, db_rollback("second"))
    wait_phase(api_client, ns, "second", {"AwaitingApproval"}, timeout=60)
    refused = rewind(cluster, "cleanup", "first", "-n", ns, "--yes")
    assert refused.returncode == 1
    assert "rollback second (AwaitingApproval) uses the same database" in refused.stderr
    assert pre in database_names(postgres) and dump.exists()

    cluster.kubectl("delete", "rollback", "second", "-n", ns, "--wait=true", "--timeout=60s")
    cluster.kubectl("annotate", "rollback", "first", "-n", ns, "rewind.dev/keep=legal hold")
    kept = rewind(cluster, "cleanup", "first", "-n", ns, "--yes")
    assert kept.returncode == 1 and "annotated rewind.dev/keep" in kept.stderr
    cluster.kubectl("annotate", "rollback", "first", "-n", ns, "rewind.dev/keep-")

    unconfirmed = rewind(cluster, "cleanup", "first", "-n", ns)
    assert unconfirmed.returncode == 1 and "add --yes" in unconfirmed.stderr
    assert f"database {pre}" in unconfirmed.stdout
    assert pre in database_names(postgres) and dump.exists()

    done = rewind(cluster, "cleanup", "first", "-n", ns, "--yes")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert pre not in database_names(postgres)
    assert booking_db in database_names(postgres)                  # production is not touched
    assert not dump.exists() and backup.exists()                   # the nightly backup stays
    stamp = get_rollback(api_client, ns, "first")["metadata"]["annotations"]["rewind.dev/cleaned-up"]
    assert stamp.startswith("by rewind-testbed-admin at ") and pre in stamp
    after = rewind(cluster, "leftovers", "-n", ns)
    states = [line.split()[-1] for line in after.stdout.splitlines()[1:] if line.strip()]
    assert states == ["removed", "removed"], after.stdout
    again = rewind(cluster, "cleanup", "first", "-n", ns, "--yes")
    assert again.returncode == 1 and "already removed" in again.stderr
    assert postgres.password not in done.stdout + done.stderr + listed.stdout
