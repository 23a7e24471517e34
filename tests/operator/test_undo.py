"""`kubectl rewind undo`: a full rollback (Deployment, OAuth Secrets, database), then its undo;
afterwards the Deployment's template, the Secrets' data and the database's tables are exactly as
before the first rollback, and the two reports link each other. A target changed since the
rollback refuses the undo, naming it, and nothing is created or changed."""

from __future__ import annotations

import base64
import secrets as pysecrets
import subprocess
import sys

import pytest
from kubernetes import client

from dbhelpers import CLAIM, add_rows, checksums, database_names, db_rollback, db_secret, make_dump
from helpers import (
    deploy_revisions, deployment_dict, get_rollback, kubectl_apply, rolled_out, set_image, wait_for, wait_phase,
)
from rewind import incident
from rewind.history import data_hash

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]

IMAGES = ["registry.example/web:1.0", "registry.example/web:1.1-bad"]
SECRETS = ("google-oauth", "microsoft-oauth")


def rewind(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rewind.cli", *args, "--kubeconfig", str(cluster.kubeconfig)],
                          capture_output=True, text=True, timeout=180)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_hashes(core, ns) -> dict[str, str]:
    return {n: data_hash(client.ApiClient().sanitize_for_serialization(core.read_namespaced_secret(n, ns)))
            for n in SECRETS}


def template(apps, ns) -> dict:
    t = deployment_dict(apps, ns, "web")["spec"]["template"]
    t["metadata"].get("annotations", {}).pop("rewind.dev/restored-by", None)
    return t


def revisions(core, ns, name) -> int:
    return len(core.list_namespaced_secret(ns, label_selector=f"rewind.dev/history-of={name}").items)


def test_undo_puts_back_workload_secrets_and_database(cluster, api_client, namespace, postgres, booking_db,
                                                      job_runner, operator):
    ns = namespace
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    # Known good: release 1.0, OAuth credentials v1, the nightly backup.
    deploy_revisions(apps, ns, "web", IMAGES[:1])
    for name in SECRETS:
        core.create_namespaced_secret(ns, {"metadata": {"name": name, "labels": {"rewind.dev/track": "true"}},
                                           "data": {"client-secret": b64(f"v1-{pysecrets.token_hex(8)}")}})
        wait_for(f"{name} revision 1", lambda: revisions(core, ns, name) == 1, timeout=30)
    make_dump(postgres, booking_db, job_runner.create_pvc(ns, CLAIM) / "nightly" / "backup.dump")
    db_secret(api_client, ns, postgres.dsn(booking_db))
    # The bad release: a new image, rotated credentials, rows written since the backup.
    set_image(apps, ns, "web", IMAGES[1])
    wait_for("web revision 2", lambda: (lambda d: d and d.metadata.annotations.get(
        "deployment.kubernetes.io/revision") == "2" and d)(rolled_out(apps, ns, "web")))
    for name in SECRETS:
        core.patch_namespaced_secret(name, ns, {"data": {"client-secret": b64(f"v2-{pysecrets.token_hex(8)}")}})
        wait_for(f"{name} revision 2", lambda: revisions(core, ns, name) == 2, timeout=30)
    add_rows(postgres, booking_db, 1000, 7)
    before = {"template": template(apps, ns), "secrets": secret_hashes(core, ns),
              "tables": checksums(postgres, booking_db)}

    # The rollback: all three back.
    rb = db_rollback("outage")
    rb["spec"]["application"] = [{"kind": "Deployment", "name": "web", "toRevision": "previous"}]
    rb["spec"]["secrets"] = [{"name": n, "toRevision": "previous"} for n in SECRETS]
    kubectl_apply(cluster, ns, rb)
    done = wait_phase(api_client, ns, "outage", {"Succeeded", "Failed", "Interrupted"}, timeout=240)
    assert done["status"]["phase"] == "Succeeded", (done["status"], operator.output()[-4000:])
    kept = done["status"]["database"]["preRollbackDatabase"]
    assert template(apps, ns) != before["template"]
    assert secret_hashes(core, ns) != before["secrets"]
    assert checksums(postgres, booking_db) != before["tables"]

    # Someone changes a Secret after the rollback: the undo refuses, naming it, and creates nothing.
    original = core.read_namespaced_secret("microsoft-oauth", ns).data
    core.patch_namespaced_secret("microsoft-oauth", ns, {"data": {"client-secret": b64("hand-edited")}})
    out = rewind(cluster, "undo", "outage", "-n", ns)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Secret microsoft-oauth changed since the rollback" in out.stdout, out.stdout
    assert "hand-edited" not in out.stdout + out.stderr
    with pytest.raises(client.ApiException):
        get_rollback(api_client, ns, "outage-undo")
    assert "rewind.dev/undone-by" not in (get_rollback(api_client, ns, "outage")["metadata"].get("annotations") or {})
    core.patch_namespaced_secret("microsoft-oauth", ns, {"data": original})   # back as the rollback left it

    # The undo: planned, created with the caller's credentials, run by the operator.
    out = rewind(cluster, "undo", "outage", "-n", ns)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "outage-undo created" in out.stdout and "database/swap" in out.stdout, out.stdout
    undo = wait_phase(api_client, ns, "outage-undo", {"Succeeded", "Failed", "Interrupted"}, timeout=240)
    assert undo["status"]["phase"] == "Succeeded", (undo["status"], operator.output()[-4000:])
    assert [s["name"] for s in undo["status"]["steps"]] == [
        "database/backup", "database/verify", "database/swap", "secrets", "deployment/web"]
    assert undo["spec"]["undoOf"] == {"name": "outage", "uid": done["metadata"]["uid"]}
    assert undo["spec"]["requester"]["username"]            # stamped by the API server

    # Exactly as before the first rollback.
    assert template(apps, ns) == before["template"]
    assert secret_hashes(core, ns) == before["secrets"]
    assert checksums(postgres, booking_db) == before["tables"]
    assert kept not in database_names(postgres)               # it is live again
    assert undo["status"]["database"]["preRollbackDatabase"] in database_names(postgres)   # the rollback's, kept

    # The reports link each other.
    original = get_rollback(api_client, ns, "outage")
    assert original["metadata"]["annotations"]["rewind.dev/undone-by"] == "outage-undo"
    assert f"**Undone by:** {ns}/outage-undo" in incident.render(original)
    assert f"**Undo of:** {ns}/outage (uid {done['metadata']['uid']})" in incident.render(undo)
    report = rewind(cluster, "report", "outage", "-n", ns).stdout
    assert "**Undone by:**" in report
    # Undone once: a second undo of the same rollback is refused.
    again = rewind(cluster, "undo", "outage", "-n", ns)
    assert again.returncode == 1 and "already undone by outage-undo" in again.stderr
