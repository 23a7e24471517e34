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
import traceback

import kopf

from rewind import engine
from rewind.steps import secrets
from rewind.adapters.kube import MERGE_PATCH, ROLLBACKS, Kube, KubeError, Resource, load_api_client
from rewind.api.errors import ReasonedError
from rewind.api.v1alpha1 import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

EVENTS = Resource("", "v1", "events")
MAX_CONSECUTIVE_ERRORS = 12   # with backoff 2, 4, ... 30 s: about five minutes
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


# Consecutive unexpected errors per Rollback UID, reset whenever the engine gets through a call.
# (kopf's own `retry` counts every TemporaryError, waiting included, so it cannot be used here.)
_errors: dict[str, int] = {}


def _describe(e: Exception) -> str:
    """What went wrong, for status. Only Rewind's own errors carry their message (written never to
    hold a secret); any other exception is named by its type alone, since its text may quote a URL
    or a server's answer that came from a Secret."""
    if isinstance(e, KubeError):
        return f"the Kubernetes API answered {e.status} {e.reason}".strip()
    if isinstance(e, ReasonedError):
        return e.message.splitlines()[0][:300]
    return f"{type(e).__name__} (details in the operator's log)"


def _read(k: Kube, namespace: str, name: str) -> dict | None:
    """The Rollback as it is now; None when it is gone."""
    try:
        return k.get(ROLLBACKS, namespace, name)
    except KubeError as e:
        if e.not_found:
            return None
        raise kopf.TemporaryError(f"cannot read the Rollback: {_describe(e)}", delay=2) from None


@kopf.on.resume(GROUP, VERSION, PLURAL, id="rollback-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, id="rollback")
def drive(namespace: str, name: str, **_) -> None:
    k = kube()
    obj = _read(k, namespace, name)
    if obj is None:
        return
    uid = obj["metadata"]["uid"]
    ctx = engine.Context(k, obj, _saver(k, namespace, name, obj), _emitter(k, obj))
    try:
        delay = engine.advance(ctx)
    except kopf.TemporaryError:
        raise
    except Exception as e:  # noqa: BLE001 - any other failure is retried, then recorded
        count = _errors[uid] = _errors.get(uid, 0) + 1
        what = _describe(e)
        log.warning("rollback %s/%s: error %d of %d: %s", namespace, name, count,
                    MAX_CONSECUTIVE_ERRORS, what)
        # Where it happened, without the exception's text (it may quote a URL from a Secret).
        log.debug("where: %s", "".join(traceback.format_tb(e.__traceback__)))
        if count < MAX_CONSECUTIVE_ERRORS:
            raise kopf.TemporaryError(f"{what}; retrying", delay=min(2 ** count, 30)) from None
        _errors.pop(uid, None)
        if _give_up(k, namespace, name, f"Stopped after {count} consecutive errors, the last: {what}."):
            raise kopf.TemporaryError("undoing the maintenance and monitoring hooks", delay=1) from None
        return
    _errors.pop(uid, None)
    if delay is not None:
        raise kopf.TemporaryError("waiting for the rollout", delay=delay)


@kopf.on.delete(GROUP, VERSION, PLURAL, id="rollback-delete")
def on_delete(namespace: str, name: str, **_) -> None:
    """A Rollback deleted while it runs still exits maintenance and resumes monitoring (kopf's
    finalizer holds the deletion until then). A finished one is let go at once."""
    k = kube()
    obj = _read(k, namespace, name)
    if obj is None:
        return
    uid = obj["metadata"]["uid"]
    try:
        delay = engine.abandon(engine.Context(k, obj, _saver(k, namespace, name, obj), _emitter(k, obj)))
    except kopf.TemporaryError:
        raise
    except Exception as e:  # noqa: BLE001 - retried, then the deletion goes ahead
        count = _errors[uid] = _errors.get(uid, 0) + 1
        log.warning("rollback %s/%s (being deleted): error %d of %d: %s", namespace, name, count,
                    MAX_CONSECUTIVE_ERRORS, _describe(e))
        if count < MAX_CONSECUTIVE_ERRORS:
            raise kopf.TemporaryError("retrying the cleanup", delay=min(2 ** count, 30)) from None
        log.error("rollback %s/%s: deleted without its cleanup: check the maintenance and monitoring "
                  "hooks by hand", namespace, name)
        _errors.pop(uid, None)
        return
    _errors.pop(uid, None)
    if delay is not None:
        raise kopf.TemporaryError("undoing the hooks before the Rollback goes", delay=delay)


@kopf.on.event("v1", "secrets", labels={secrets.TRACK_LABEL: "true"})
def track_secret(body, type: str | None, **_) -> None:
    """Secret history: every change of a tracked Secret is kept as an immutable copy. (An event
    handler keeps no state on the Secret: kopf's diff-base annotation would hold its data.)"""
    if type not in (None, "ADDED", "MODIFIED") or body["metadata"].get("deletionTimestamp"):
        return
    try:
        revision = secrets.record(kube(), dict(body))
    except KubeError as e:
        log.warning("could not record the history of Secret %s/%s: %s", body["metadata"]["namespace"],
                    body["metadata"]["name"], _describe(e))
        return
    if revision:
        log.info("Secret %s/%s: recorded revision %d", body["metadata"]["namespace"],
                 body["metadata"]["name"], revision)


def _give_up(k: Kube, namespace: str, name: str, message: str) -> bool:
    """Records that the rollback stopped; True when its cleanup steps are still to run."""
    try:
        fresh = k.get(ROLLBACKS, namespace, name)
        return engine.give_up(engine.Context(k, fresh, _saver(k, namespace, name, fresh), _emitter(k, fresh)),
                              message)
    except Exception as e:  # noqa: BLE001 - the status itself cannot be written: say so, retry slowly
        log.error("rollback %s/%s: cannot record that it stopped (%s); %s", namespace, name,
                  _describe(e), message)
        raise kopf.TemporaryError("cannot record the rollback's failure", delay=60) from None
