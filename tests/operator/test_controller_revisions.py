"""StatefulSets and DaemonSets keep their history in ControllerRevisions; Rewind restores them the
way `kubectl rollout undo` does (the revision's data as a strategic merge patch), guarded."""

from __future__ import annotations

import pytest
from kubernetes import client

from helpers import audit_writes, condition, kubectl_apply, rollback, wait_for, wait_phase

pytestmark = pytest.mark.cluster


def _workload(kind: str, name: str, image: str) -> dict:
    labels = {"app": name}
    spec = {"selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "app", "image": image}]}}}
    if kind == "StatefulSet":
        spec.update(replicas=2, serviceName=name)
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def _read(apps, kind, namespace, name):
    fn = apps.read_namespaced_stateful_set if kind == "StatefulSet" else apps.read_namespaced_daemon_set
    return fn(name, namespace)


def _settled(apps, kind, namespace, name):
    o = _read(apps, kind, namespace, name)
    s = o.status
    if (s.observed_generation or 0) < o.metadata.generation:
        return None
    if kind == "StatefulSet":
        ok = s.ready_replicas == o.spec.replicas and s.current_revision == s.update_revision
    else:
        ok = s.desired_number_scheduled and s.updated_number_scheduled == s.desired_number_scheduled \
            and s.number_available == s.desired_number_scheduled
    return o if ok else None


def _revisions(apps, namespace, owner_uid):
    crs = apps.list_namespaced_controller_revision(namespace).items
    return {c.revision: c for c in crs
            if any(r.uid == owner_uid for r in c.metadata.owner_references or [])}


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
def test_controller_revision_rollback(cluster, api_client, namespace, operator, kind):
    apps = client.AppsV1Api(api_client)
    create = apps.create_namespaced_stateful_set if kind == "StatefulSet" else apps.create_namespaced_daemon_set
    patch = apps.patch_namespaced_stateful_set if kind == "StatefulSet" else apps.patch_namespaced_daemon_set
    create(namespace, _workload(kind, "db", "registry.local/db:1"))
    wait_for(f"{kind} revision 1", lambda: _settled(apps, kind, namespace, "db"))
    for image in ("registry.local/db:2", "registry.local/db:3-bad"):
        patch("db", namespace, {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})
        wait_for(f"{kind} at {image}", lambda: (lambda o: o and o.spec.template.spec.containers[0].image == image
                                                and o)(_settled(apps, kind, namespace, "db")), timeout=120)
    uid = _read(apps, kind, namespace, "db").metadata.uid
    assert sorted(_revisions(apps, namespace, uid)) == [1, 2, 3]

    kubectl_apply(cluster, namespace, rollback("undo-db", [{"kind": kind, "name": "db"}]))
    rb = wait_phase(api_client, namespace, "undo-db", {"Succeeded", "Failed"}, timeout=120)
    assert rb["status"]["phase"] == "Succeeded", (rb["status"], operator.output()[-3000:])
    assert condition(rb, "Ready")["status"] == "True"
    settled = wait_for("settled", lambda: _settled(apps, kind, namespace, "db"))
    assert settled.spec.template.spec.containers[0].image == "registry.local/db:2"
    # As with Deployments, the restored template becomes the newest revision.
    assert rb["status"]["steps"][0]["restoredRevision"] == 4
    assert rb["status"]["plan"][0]["toRevision"] == 2
    writes = audit_writes(cluster, namespace, kind.lower() + "s", "db")
    assert [w["verb"] for w in writes] == ["patch"]
