"""Writes the incident report (rewind.incident) into a ConfigMap owned by the Rollback, and keeps it
current: once the rollback is over, and again whenever what it reports changes afterwards (a
notification sent late)."""

from __future__ import annotations

import datetime
import hashlib
import logging

from rewind import incident
from rewind.adapters.kube import CONFIG_MAPS, Kube, KubeError, owner_reference
from rewind.api.v1alpha1 import ReportRef
from rewind.context import Context, Wait

log = logging.getLogger(__name__)

KEY = "report.md"


def name_for(rollback: str) -> str:
    name = f"{rollback}-report"
    if len(name) <= 253:
        return name
    return f"{rollback[:230]}-{hashlib.sha256(rollback.encode()).hexdigest()[:8]}-report"


RETRY_EVERY = datetime.timedelta(seconds=10)
RETRY_FOR = datetime.timedelta(minutes=5)


def sync(ctx: Context, save: bool = True) -> Wait | None:
    """Writes the report when it changed. After a failure it is tried again every few seconds until
    a deadline (in status.report), then given up with the reason: `kubectl rewind report` still
    renders it from status. With save=False the caller saves status.report with its own write
    (the rollback's end: the report and the terminal status go in one status write)."""
    text = incident.render(ctx.obj | {"status": ctx.status.dump()})
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    if ctx.status.report and (ctx.status.report.sha256 == digest or gave_up(ctx.status.report, ctx.clock())):
        return None
    name = name_for(ctx.name)
    body = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ctx.namespace,
                     "labels": {"rewind.dev/rollback-uid": ctx.uid,
                                "rewind.dev/component": "incident-report"},
                     "ownerReferences": [owner_reference(ctx.obj)]},
        "data": {KEY: text},
    }
    try:
        _write(ctx.kube, ctx.namespace, name, body)
    except KubeError as e:
        log.warning("%s/%s: could not write the incident report %s: %s %s", ctx.namespace, ctx.name,
                    name, e.status, e.reason)
        now = ctx.clock()
        current = ctx.status.report or ReportRef()
        deadline = current.deadline or now + RETRY_FOR
        why = (f"ConfigMap {name} cannot be written ({e.status} {e.reason}"
               f"{': the name belongs to another object' if e.conflict else ''})")
        if e.forbidden or now >= deadline:
            current.message = f"{why}; gave up. `kubectl rewind report {ctx.name}` renders the report from status."
            current.deadline = min(deadline, now)
            ctx.status.report = current
            if save:
                ctx.save()
            ctx.emit("Warning", "ReportNotWritten", current.message)
            return None
        if current.message is None:
            current.message, current.deadline = f"{why}; retrying until {deadline:%H:%M:%S}Z.", deadline
            ctx.status.report = current
            if save:
                ctx.save()
        return Wait(at=min(deadline, now + RETRY_EVERY), reason=current.message)
    ctx.status.report = ReportRef(config_map_ref=name, sha256=digest)
    if save:
        ctx.save()
    return None


def gave_up(ref: ReportRef, now: datetime.datetime) -> bool:
    return ref.config_map_ref is None and ref.deadline is not None and now >= ref.deadline


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
