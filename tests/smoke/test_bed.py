"""Smoke tests proving the test bed is real: each asserts on the cluster's (or the database's) own
state, as produced by the real API server, the real controllers and the real PostgreSQL."""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client

from helpers import wait_for

pytestmark = pytest.mark.cluster



WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.rewind.dev"},
    "spec": {
        "group": "smoke.rewind.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1},
                        "colour": {"type": "string", "enum": ["red", "blue"]},
                    },
                    "x-kubernetes-validations": [
                        {"rule": "self.colour != 'red' || self.size < 10",
                         "message": "red widgets must be smaller than 10"}],
                }},
            }},
        }],
    },
}


def test_crd_is_served_and_validates(api_client, namespace):
    ext = client.ApiextensionsV1Api(api_client)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except client.ApiException as e:
        assert e.status == 409
    wait_for("CRD Established", lambda: any(
        c.type == "Established" and c.status == "True"
        for c in (ext.read_custom_resource_definition("widgets.smoke.rewind.dev").status.conditions or [])))
    objs = client.CustomObjectsApi(api_client)
    args = ("smoke.rewind.dev", "v1", namespace, "widgets")

    def widget(name, spec):
        return {"apiVersion": "smoke.rewind.dev/v1", "kind": "Widget",
                "metadata": {"name": name}, "spec": spec}

    # The CRD may be Established a moment before its discovery/storage serves the new kind.
    wait_for("Widget kind served", lambda: _try_create(objs, args, widget("ok", {"size": 3, "colour": "blue"})))
    assert objs.get_namespaced_custom_object(*args, "ok")["spec"] == {"size": 3, "colour": "blue"}

    for name, spec, expected in [
        ("negative", {"size": 0}, "should be greater than or equal to 1"),
        ("colour", {"size": 2, "colour": "green"}, 'supported values: "red", "blue"'),
        ("cel", {"size": 12, "colour": "red"}, "red widgets must be smaller than 10"),
        ("missing", {"colour": "blue"}, "Required value"),
    ]:
        with pytest.raises(client.ApiException) as err:
            objs.create_namespaced_custom_object(*args, widget(name, spec))
        assert err.value.status == 422, name
        message = json.loads(err.value.body)["message"]
        assert expected in message, (name, message)
    names = [o["metadata"]["name"] for o in objs.list_namespaced_custom_object(*args)["items"]]
    assert names == ["ok"]


def _try_create(objs, args, body):
    try:
        objs.create_namespaced_custom_object(*args, body)
        return True
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise


def _deployment(image: str) -> dict:
    labels = {"app": "web"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "web", "image": image}]}},
        },
    }


def _rolled_out(apps, namespace, generation=None):
    d = apps.read_namespaced_deployment("web", namespace)
    s = d.status
    done = (s.observed_generation or 0) >= d.metadata.generation \
        and (s.updated_replicas or 0) == d.spec.replicas \
        and (s.available_replicas or 0) == d.spec.replicas \
        and (s.replicas or 0) == d.spec.replicas
    return d if done else None


def test_deployment_rolls_out_and_template_change_makes_revision_2(api_client, namespace):
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _deployment("registry.local/web:1.0"))
    d = wait_for("first rollout", lambda: _rolled_out(apps, namespace))
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "1"

    apps.patch_namespaced_deployment("web", namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "web", "image": "registry.local/web:2.0"}]}}}})
    wait_for("second rollout", lambda: (lambda d: d and d.metadata.generation == 2 and d)(
        _rolled_out(apps, namespace)))

    rs = apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
    by_revision = {r.metadata.annotations["deployment.kubernetes.io/revision"]: r for r in rs}
    assert set(by_revision) == {"1", "2"}
    assert by_revision["2"].spec.template.spec.containers[0].image == "registry.local/web:2.0"
    assert by_revision["1"].spec.template.spec.containers[0].image == "registry.local/web:1.0"
    assert by_revision["2"].spec.replicas == 2 and by_revision["1"].spec.replicas == 0
    owner = by_revision["2"].metadata.owner_references[0]
    assert (owner.kind, owner.name) == ("Deployment", "web")
    pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector="app=web").items
    running = [p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]
    assert len(running) == 2
    assert all(p.spec.node_name and p.spec.node_name.startswith("kwok-node-") for p in running)


def test_job_completes(api_client, namespace):
    batch = client.BatchV1Api(api_client)
    batch.create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "registry.local/true:1", "command": ["true"]}]}}},
    })
    job = wait_for("Job Complete", lambda: (lambda j: j if any(
        c.type == "Complete" and c.status == "True" for c in (j.status.conditions or [])) else None)(
        batch.read_namespaced_job("once", namespace)))
    assert job.status.succeeded == 1
    assert job.status.completion_time is not None


def test_deleted_namespace_disappears(api_client):
    core = client.CoreV1Api(api_client)
    name = f"t-ns-delete-{int(time.time() * 1000) % 100000}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="content"), data={"k": "v"}))
    core.delete_namespace(name)

    def gone():
        try:
            core.read_namespace(name)
            return False
        except client.ApiException as e:
            return e.status == 404

    wait_for("namespace deleted", gone, timeout=120)
    assert not [n for n in core.list_namespace().items if n.metadata.name == name]


def test_rbac_denies_service_account_what_it_was_not_granted(api_client, cluster, namespace):
    from kubernetes import config

    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}).status.token

    admin_cfg = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=admin_cfg)
    sa_cfg = client.Configuration()
    sa_cfg.host = admin_cfg.host
    sa_cfg.ssl_ca_cert = admin_cfg.ssl_ca_cert
    sa_cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(sa_cfg) as sa_api:
        sa_core = client.CoreV1Api(sa_api)
        assert sa_core.list_namespaced_pod(namespace).items == []  # granted
        for call in (lambda: sa_core.list_namespaced_secret(namespace),
                     lambda: sa_core.list_namespaced_pod("default"),
                     lambda: sa_core.create_namespaced_config_map(
                         namespace, {"metadata": {"name": "nope"}})):
            with pytest.raises(client.ApiException) as err:
                call()
            assert err.value.status == 403
            assert f"system:serviceaccount:{namespace}:reader" in err.value.body
    assert [c.metadata.name for c in core.list_namespaced_config_map(namespace).items
            if c.metadata.name == "nope"] == []
