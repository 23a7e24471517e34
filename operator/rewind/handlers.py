"""The kopf layer: thin handlers that read the Rollback fresh, call the engine, write status.

Handlers are plain `def`s (kopf runs them in its thread pool) because the official Kubernetes
client is synchronous. They never sleep: waiting is a `kopf.TemporaryError` with a delay.
Handler ids are explicit and must never change (kopf keeps progress under them).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket

import kopf

from rewind import engine
from rewind.adapters.kube import MERGE_PATCH, ROLLBACKS, Kube, KubeError, Resource, load_api_client
from rewind.api import conditions as C
from rewind.api.v1alpha1 import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

EVENTS = Resource("", "v1", "events")
MAX_API_RETRIES = 20
_state: dict[str, Kube] = {}


def kube() -> Kube:
    if "kube" not in _state:
        _state["kube"] = Kube(load_api_client(os.environ.get("REWIND_KUBECONFIG")))
    return _state["kube"]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="rewind.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="rewind.dev", key="last-handled-configuration")
    settings.persistence.finalizer = "rewind.dev/finalizer"
    # Events are Rewind's own, one per step outcome; kopf's log-to-Event mirroring would double them.
    settings.posting.enabled = False
    settings.networking.error_backoffs = [0.5, 1, 2, 5]
    settings.watching.inactivity_timeout = float(os.environ.get("REWIND_WATCH_INACTIVITY_TIMEOUT", 300))
    kube()


@kopf.on.login()
def login(**kwargs):
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _emitter(k: Kube, obj: dict):
    meta = obj["metadata"]
    host = socket.gethostname()

    def emit(type_: str, reason: str, message: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollback",
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": "rewind"}, "reportingComponent": "rewind.dev/operator",
            "reportingInstance": host[:128], "firstTimestamp": now, "lastTimestamp": now,
            "count": 1,
        }
        try:
            k.create(EVENTS, meta["namespace"], event)
        except KubeError as e:
            log.warning("could not post Event %s for %s/%s: %s", reason, meta["namespace"],
                        meta["name"], e)
        log.info("%s/%s: %s: %s", meta["namespace"], meta["name"], reason, message)

    return emit


def _saver(k: Kube, namespace: str, name: str, obj: dict):
    current = {"obj": obj}

    def save(status: dict) -> dict:
        rv = current["obj"]["metadata"]["resourceVersion"]
        body = {"metadata": {"resourceVersion": rv}, "status": status}
        try:
            current["obj"] = k.patch(ROLLBACKS, namespace, name, body, MERGE_PATCH, sub="status")
        except KubeError as e:
            if e.conflict:
                raise kopf.TemporaryError("the Rollback changed while it was being written; "
                                          "re-reading it", delay=0.5) from None
            raise
        return current["obj"]

    return save


@kopf.on.resume(GROUP, VERSION, PLURAL, id="rollback-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, id="rollback")
def drive(namespace: str, name: str, retry: int, **_) -> None:
    k = kube()
    try:
        obj = k.get(ROLLBACKS, namespace, name)
    except KubeError as e:
        if e.not_found:
            return
        raise kopf.TemporaryError(f"cannot read the Rollback: {e}", delay=2) from None
    ctx = engine.Context(k, obj, _saver(k, namespace, name, obj), _emitter(k, obj))
    try:
        delay = engine.advance(ctx)
    except kopf.TemporaryError:
        raise
    except KubeError as e:
        _give_up_or_retry(ctx, retry, f"the Kubernetes API answered {e}")
        return
    except Exception as e:  # noqa: BLE001 - any other failure is retried, then recorded
        log.exception("rollback %s/%s: unexpected error", namespace, name)
        _give_up_or_retry(ctx, retry, f"{type(e).__name__}: {e}")
        return
    if delay is not None:
        raise kopf.TemporaryError("waiting for the rollout", delay=delay)


def _give_up_or_retry(ctx: engine.Context, retry: int, what: str) -> None:
    if retry < MAX_API_RETRIES:
        raise kopf.TemporaryError(f"{what}; retrying", delay=min(2 ** retry, 30))
    # The ledger still says where the run stopped; a person must look.
    k = ctx.kube
    fresh = k.get(ROLLBACKS, ctx.namespace, ctx.name)
    engine.fail(engine.Context(k, fresh, _saver(k, ctx.namespace, ctx.name, fresh), _emitter(k, fresh)),
                C.API_ERROR, f"Stopped after {retry} attempts: {what}. The step ledger in status "
                             "shows how far the rollback got.")
