"""Writes the incident report (rewind.report) into a ConfigMap owned by the Rollback, and keeps it
current: once the rollback is over, and again whenever what it reports changes afterwards (a
notification sent late)."""

from __future__ import annotations

import hashlib
import logging

from rewind import report
from rewind.adapters.kube import Kube, KubeError, Resource
from rewind.api.v1alpha1 import GROUP, VERSION, ReportRef
from rewind.context import Context

log = logging.getLogger(__name__)

CONFIG_MAPS = Resource("", "v1", "configmaps")
KEY = "report.md"


def name_for(rollback: str) -> str:
    name = f"{rollback}-report"
    if len(name) <= 253:
        return name
    return f"{rollback[:230]}-{hashlib.sha256(rollback.encode()).hexdigest()[:8]}-report"


def sync(ctx: Context) -> float | None:
    """Writes the report when it changed; returns a delay to try again after a failure."""
    text = report.render(ctx.obj | {"status": ctx.status.dump()})
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    if ctx.status.report and ctx.status.report.sha256 == digest:
        return None
    name = name_for(ctx.name)
    body = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ctx.namespace,
                     "labels": {"rewind.dev/rollback-uid": ctx.uid,
                                "rewind.dev/component": "incident-report"},
                     "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollback",
                                          "name": ctx.name, "uid": ctx.uid}]},
        "data": {KEY: text},
    }
    try:
        _write(ctx.kube, ctx.namespace, name, body)
    except KubeError as e:
        log.warning("%s/%s: could not write the incident report %s: %s %s", ctx.namespace, ctx.name,
                    name, e.status, e.reason)
        return 10.0 if not e.forbidden else None
    first = ctx.status.report is None
    ctx.status.report = ReportRef(config_map_ref=name, sha256=digest)
    ctx.save()
    if first:
        ctx.emit("Normal", "ReportWritten", f"Incident report in ConfigMap {name}: "
                 f"kubectl rewind report {ctx.name} -n {ctx.namespace}")
    return None


def _write(kube: Kube, namespace: str, name: str, body: dict) -> None:
    try:
        kube.create(CONFIG_MAPS, namespace, body)
        return
    except KubeError as e:
        if not e.conflict:
            raise
    current = kube.get(CONFIG_MAPS, namespace, name)
    owners = current["metadata"].get("ownerReferences") or []
    if not any(o.get("uid") == body["metadata"]["ownerReferences"][0]["uid"] for o in owners):
        raise KubeError(409, "AlreadyExists", f"ConfigMap {name} exists and belongs to something else")
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    kube.request("PUT", CONFIG_MAPS.path(namespace, name), body=body)
