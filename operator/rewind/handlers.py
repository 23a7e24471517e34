"""The kopf layer: thin handlers that read the Rollback fresh, call the engine, write status.

Each unfinished Rollback has one daemon (a thread: the official Kubernetes client is
synchronous). It reads the Rollback, lets the engine move it on as far as it goes, and then
waits for what the engine says: a watch on the object the step waits for (a Deployment, a Job),
bounded by the step's own timer. Waiting writes nothing (no kopf retry, no progress annotation)
and wakes the moment the watched object changes. A finished Rollback costs no request at all: its
daemon sees that in the body kopf already has and ends.
Handler ids are explicit and must never change.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import socket
import threading
import time
import traceback

import kopf
import urllib3
from pydantic import ValidationError

from rewind import crashpoints, engine, history, metrics
from rewind.context import Wait, utcnow
from rewind.adapters.kube import (
    EVENTS, MERGE_PATCH, ROLLBACKS, Kube, KubeError, Resource, build_event, load_api_client, merge_diff,
)
from rewind.api.errors import ReasonedError
from rewind.api.v1alpha1 import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 12   # with backoff 2, 4, ... 30 s: about five minutes
GIVE_UP_ATTEMPTS = 5          # recording the failure itself, 60 s apart; then the log says it
WATCH_SLICE = 5.0             # a wait's watch is renewed this often, so a stop is seen soon
MIN_WAIT = 0.05
EVENT_ATTEMPTS = 3
PROBE_EVERY = 1.0             # while the API server cannot be reached: how often /readyz is asked
_state: dict[str, Kube] = {}


def kube() -> Kube:
    if "kube" not in _state:
        _state["kube"] = Kube(load_api_client(os.environ.get("REWIND_KUBECONFIG")))
    return _state["kube"]


class _NoDiffBase(kopf.DiffBaseStorage):
    def fetch(self, *, body):
        return None

    def store(self, *, body, patch, essence) -> None:
        pass


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="rewind.dev")
    # No create/update handlers, so no diff-base: kopf would otherwise write the whole spec into an
    # annotation of every Rollback (a write per Rollback that nothing reads).
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.persistence.finalizer = "rewind.dev/finalizer"
    lifetime = os.environ.get("REWIND_PEERING_LIFETIME")
    if lifetime:
        settings.peering.lifetime = int(lifetime)
        settings.peering.mandatory = True    # no peering object: fail, never run unguarded
        settings.peering.stealth = True      # keep-alives are not logged
        threading.Thread(target=_leadership, name="leadership", daemon=True).start()
    else:
        metrics.LEADER.set(1)   # standalone: this process drives every Rollback it watches
    # Events are Rewind's own, one per step outcome; kopf's log-to-Event mirroring would double them.
    settings.posting.enabled = False
    settings.networking.error_backoffs = [0.5, 1, 2, 5]
    # One daemon thread per unfinished Rollback (most of them waiting on a watch).
    settings.execution.max_workers = int(os.environ.get("REWIND_MAX_WORKERS", 200))
    # Only tracked Secrets are listed and watched, filtered by the API server, not by kopf.
    settings.watching.label_selectors["v1", "secrets"] = f"{history.TRACK_LABEL}=true"
    settings.watching.inactivity_timeout = float(os.environ.get("REWIND_WATCH_INACTIVITY_TIMEOUT", 300))
    kube()


CLUSTER_PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings")
NAMESPACED_PEERINGS = Resource("kopf.dev", "v1", "kopfpeerings")


def _leadership() -> None:
    """Keeps the `rewind_leader` gauge true to kopf's peering: 1 while no live replica has a
    higher priority than this one (so kopf lets this one drive), 0 while it stands by."""
    name, mine = os.environ["REWIND_PEERING"], int(os.environ["REWIND_PEERING_PRIORITY"])
    namespace = os.environ.get("REWIND_PEERING_NAMESPACE") or None
    lifetime = int(os.environ["REWIND_PEERING_LIFETIME"])
    while True:
        try:
            obj = kube().get(NAMESPACED_PEERINGS if namespace else CLUSTER_PEERINGS, namespace, name)
            now = datetime.datetime.now(datetime.timezone.utc)
            live = [p for p in (obj.get("status") or {}).values() if isinstance(p, dict) and p.get("lastseen")
                    and datetime.datetime.fromisoformat(p["lastseen"]) + datetime.timedelta(
                        seconds=p.get("lifetime", 60)) > now]
            metrics.LEADER.set(int(any(p.get("priority") == mine for p in live)
                                   and all(p.get("priority", 0) <= mine for p in live)))
        except Exception as e:  # noqa: BLE001 - the gauge waits for the next look
            log.debug("cannot read the peering %s: %s", name, _describe(e))
        time.sleep(max(1, lifetime / 2))


@kopf.on.login()
def login(**kwargs):
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _emitter(k: Kube, obj: dict):
    meta = obj["metadata"]
    host = socket.gethostname()

    def emit(type_: str, reason: str, message: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollback", "metadata": meta}
        event = build_event(involved, type_, reason, message, host, now)
        # An Event is told, not recorded (status is the record): a throttled or lost request is
        # tried again twice, then given up with a warning; it never fails the pass that emits it.
        for attempt in range(EVENT_ATTEMPTS):
            try:
                k.create(EVENTS, meta["namespace"], event)
                break
            except (KubeError, urllib3.exceptions.HTTPError, OSError) as e:
                if attempt + 1 < EVENT_ATTEMPTS and (not isinstance(e, KubeError) or e.transient):
                    time.sleep(0.3 * (attempt + 1))
                    continue
                log.warning("could not post Event %s for %s/%s: %s", reason, meta["namespace"],
                            meta["name"], _describe(e))
                break
        log.info("%s/%s: %s: %s", meta["namespace"], meta["name"], reason, message)

    return emit


class Conflict(Exception):
    """The Rollback changed since it was read (another writer, or our own earlier write seen
    late): the engine's call is dropped and the Rollback read again."""


def _saver(k: Kube, namespace: str, name: str, obj: dict):
    current = {"obj": obj}

    def save(status: dict) -> dict:
        """Writes what changed in status since the last read or write (a merge patch in which a
        removed field is null, so fields can be cleared), guarded by resourceVersion; writes
        nothing when nothing changed. A conflict caused by a change outside status (kopf's
        finalizer or annotations) is retried on the fresh resourceVersion; a change of status by
        someone else raises Conflict."""
        diff = merge_diff(current["obj"].get("status") or {}, status)
        if not diff:
            return current["obj"]
        log.debug("%s/%s: status write of %s", namespace, name, ", ".join(sorted(diff)))
        for _ in range(3):
            body = {"metadata": {"resourceVersion": current["obj"]["metadata"]["resourceVersion"]},
                    "status": diff}
            try:
                current["obj"] = k.patch(ROLLBACKS, namespace, name, body, MERGE_PATCH, sub="status")
                return current["obj"]
            except KubeError as e:
                if not e.conflict:
                    raise
            fresh = _read(k, namespace, name)
            if fresh is None or (fresh.get("status") or {}) != (current["obj"].get("status") or {}) \
                    or fresh["metadata"].get("generation") != current["obj"]["metadata"].get("generation"):
                raise Conflict()     # someone else's status, or a new spec: the pass starts over
            current["obj"] = fresh
        raise Conflict()

    return save


# Consecutive errors of the deletion handler per Rollback UID, reset when it gets through a call.
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
        raise


def _context(k: Kube, obj: dict) -> engine.Context:
    meta = obj["metadata"]
    return engine.Context(k, obj, _saver(k, meta["namespace"], meta["name"], obj), _emitter(k, obj))


# One pass of the engine at a time per Rollback in this process: the deletion handler waits for
# the daemon's pass in flight (kopf runs it while the daemon is still being stopped), so the two
# never act on the same step at once (a swap closing production after the deletion reopened it).
_passes: dict[str, threading.Lock] = {}
_passes_guard = threading.Lock()


def _pass_lock(uid: str) -> threading.Lock:
    with _passes_guard:
        return _passes.setdefault(uid, threading.Lock())


@kopf.daemon(GROUP, VERSION, PLURAL, id="rollback", cancellation_timeout=WATCH_SLICE * 3)
def run(stopped, body, namespace: str, name: str, **_) -> None:
    """Drives one Rollback until it is over: engine, wait, engine... A finished Rollback (after a
    restart of the operator, say) ends here without a single request."""
    if not engine.pending(body):
        return
    k = kube()
    errors = give_up_failures = 0
    lock = _pass_lock(body["metadata"]["uid"])
    last = None   # the Rollback as our last write returned it
    while not stopped:
        obj = back = None
        try:
            with lock:
                # When kopf's live body is at the version of our own last write, nobody else wrote
                # since: that object is current, no read needed. Else (or a new spec) read it.
                fresh = last is not None and body["metadata"].get("resourceVersion") == \
                    last["metadata"]["resourceVersion"] and not body["metadata"].get("deletionTimestamp")
                obj = last if fresh else _read(k, namespace, name)
                if obj is None or obj["metadata"].get("deletionTimestamp"):
                    return            # gone, or going: the deletion handler takes over
                try:
                    ctx = _context(k, obj)
                except ValidationError as e:
                    # The API server stored what the operator cannot read (a CRD older or looser
                    # than this operator): no retry makes it readable. Say so, once, and stop.
                    _unreadable(k, obj, e)
                    return
                wait = engine.advance(ctx)
                last = ctx.obj
            metrics.track(ctx.uid, ctx.status.phase if wait is not None else None, ctx.rollback.spec.severity,
                          ctx.status.deadline if ctx.status.phase not in engine.TERMINAL_PHASES else None)
            errors = 0
        except Conflict:
            last = None
            wait = Wait(at=utcnow(), reason="the Rollback changed while it was being written; re-reading it")
        except Exception as e:  # noqa: BLE001 - any other failure is retried with backoff, then recorded
            last = None
            errors += 1
            metrics.ERRORS.inc()
            what = _describe(e)
            log.warning("rollback %s/%s: error %d of %d: %s", namespace, name, errors,
                        MAX_CONSECUTIVE_ERRORS, what)
            # Where it happened, without the exception's text (it may quote a URL from a Secret).
            log.debug("where: %s", "".join(traceback.format_tb(e.__traceback__)))
            delay = min(2 ** errors, 30)
            if errors >= MAX_CONSECUTIVE_ERRORS:
                errors = 0
                try:
                    with lock:
                        more = _give_up(k, namespace, name, f"Stopped after {MAX_CONSECUTIVE_ERRORS} "
                                                            f"consecutive errors, the last: {what}.")
                    give_up_failures = 0
                    if not more:
                        return
                    delay = 1
                except Exception as e2:  # noqa: BLE001 - the status itself cannot be written
                    give_up_failures += 1
                    log.error("rollback %s/%s: cannot record that it stopped (%s), attempt %d of %d",
                              namespace, name, _describe(e2), give_up_failures, GIVE_UP_ATTEMPTS)
                    if give_up_failures >= GIVE_UP_ATTEMPTS:
                        log.error("rollback %s/%s: left as it is; its status does not say that it "
                                  "stopped. Restarting the operator tries again.", namespace, name)
                        return
                    delay = 60
            wait = Wait(at=utcnow() + datetime.timedelta(seconds=delay), reason=f"retrying after: {what}")
            back = _api_return.lost(k) if _unreachable(e) else None
        if wait is None:
            return
        _wait(k, namespace, wait, stopped, aborted=lambda: bool(engine.abort_requested(body))
              and not engine.abort_requested(obj or body), back=back)


def _unreachable(e: Exception) -> bool:
    """The API server could not be reached, or said it cannot serve yet: not a fault of the pass."""
    return isinstance(e, (urllib3.exceptions.HTTPError, OSError)) or (
        isinstance(e, KubeError) and e.status in (502, 503, 504))


class _ApiReturn:
    """One prober per process: while passes fail because the API server cannot be reached, it
    asks GET /readyz once a second (not once per Rollback); when the API server answers, every
    Rollback in its error backoff wakes at once (spread over a second) instead of sleeping out a
    backoff of up to 30 s. The prober stops once it is answered, or a little after the last such
    failure."""

    def __init__(self):
        self._lock = threading.Lock()
        self._back = threading.Event()
        self._until = 0.0
        self._probing = False

    def lost(self, k: Kube) -> threading.Event:
        with self._lock:
            self._until = time.monotonic() + 35     # longer than the longest backoff (30 s)
            if not self._probing:
                self._probing, self._back = True, threading.Event()
                threading.Thread(target=self._probe, args=(k, self._back), name="api-return",
                                 daemon=True).start()
            return self._back

    def _probe(self, k: Kube, back: threading.Event) -> None:
        missed = False      # woken only if the API server was seen gone: a failure that came from
        while True:         # elsewhere (with the API server there all along) keeps its backoff
            if k.answers():
                if missed:
                    log.info("the API server answers again; Rollbacks in backoff resume now")
                    back.set()
                break
            missed = True
            with self._lock:
                if time.monotonic() > self._until:
                    break
            time.sleep(PROBE_EVERY)
        with self._lock:
            self._probing = False


_api_return = _ApiReturn()


def _wait(k: Kube, namespace: str, wait: Wait, stopped, aborted=lambda: False,
          back: threading.Event | None = None) -> None:
    """Until `wait.at`, or until its watched object changes, an abort is asked for, the daemon
    is stopped, or (`back`) the API server that could not be reached answers again. Only reads:
    a watch request every WATCH_SLICE seconds at most."""
    first = True
    while not stopped and not aborted():
        if back is not None and back.is_set():
            stopped.wait(random.uniform(0, 1.0))     # not every waiting Rollback in one instant
            return
        remaining = (wait.at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        if remaining <= 0:
            if first:
                stopped.wait(MIN_WAIT)
            return
        first = False
        if wait.watch is not None:
            w = wait.watch
            try:
                if k.watch_one(w.resource, namespace, w.name, w.resource_version, min(remaining, WATCH_SLICE),
                               w.label_selector):
                    return
                continue
            except Exception as e:  # noqa: BLE001 - a failed watch falls back to the timer
                log.debug("watch of %s %s failed (%s); waiting on the timer", w.resource.plural, w.name,
                          _describe(e))
                wait = Wait(at=wait.at, reason=wait.reason)
                if back is None and _unreachable(e):
                    back = _api_return.lost(k)     # and on the API server's return
        stopped.wait(min(remaining, PROBE_EVERY if back is not None else WATCH_SLICE))


@kopf.on.delete(GROUP, VERSION, PLURAL, id="rollback-delete")
def on_delete(body, namespace: str, name: str, **_) -> None:
    """A Rollback deleted while it runs still exits maintenance and resumes monitoring (kopf's
    finalizer holds the deletion until then). A finished one is let go at once."""
    if not engine.pending(body):
        return
    k = kube()
    uid = body["metadata"]["uid"]
    try:
        with _pass_lock(uid):     # after the daemon's pass in flight, if any
            obj = _read(k, namespace, name)
            if obj is None:
                return
            try:
                ctx = _context(k, obj)
            except ValidationError:
                return            # never acted on (see _unreadable): nothing to undo
            wait = engine.abandon(ctx)
    except Conflict:
        raise kopf.TemporaryError("the Rollback changed while it was being written", delay=0.5) from None
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
    if wait is not None:
        # Rare (a Rollback deleted mid-run whose hook retries are due later): kopf's retry holds the
        # deletion until then.
        raise kopf.TemporaryError("undoing the hooks before the Rollback goes",
                                  delay=max(MIN_WAIT, wait.seconds(utcnow())))
    crashpoints.reach("Delete:before-finalizer-removed")


@kopf.on.event("v1", "secrets", labels={history.TRACK_LABEL: "true"})
def track_secret(body, type: str | None, **_) -> None:
    """Secret history: every change of a tracked Secret is kept as an immutable copy. (An event
    handler keeps no state on the Secret: kopf's diff-base annotation would hold its data.)"""
    if type not in (None, "ADDED", "MODIFIED") or body["metadata"].get("deletionTimestamp"):
        return
    try:
        revision = history.record(kube(), dict(body))
    except KubeError as e:
        log.warning("could not record the history of Secret %s/%s: %s", body["metadata"]["namespace"],
                    body["metadata"]["name"], _describe(e))
        return
    if revision:
        log.info("Secret %s/%s: recorded revision %d", body["metadata"]["namespace"],
                 body["metadata"]["name"], revision)


def _unreadable(k: Kube, obj: dict, error: ValidationError) -> None:
    """Failed with InvalidSpec, written as a raw status patch (the model cannot hold this object);
    nothing of the spec was acted on. The message names the fields, never their values."""
    where = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
                      for err in error.errors()[:5])
    message = ("The operator cannot read this Rollback as stored (its CRD accepts what this operator's "
               f"schema refuses): {where}. Nothing was done; fix the spec in a new Rollback, and "
               "update the CRD to the operator's (kubectl apply -f crds/).")[:4000]
    meta, now = obj["metadata"], utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [{"type": t, "status": v, "reason": "InvalidSpec", "message": message,
                   "lastTransitionTime": now, "observedGeneration": meta.get("generation", 1)}
                  for t, v in (("Ready", "False"), ("Stalled", "True"))]
    body = {"metadata": {"resourceVersion": meta["resourceVersion"]},
            "status": {"phase": "Failed", "completedAt": now, "observedGeneration": meta.get("generation", 1),
                       "conditions": conditions}}
    log.error("rollback %s/%s: %s", meta["namespace"], meta["name"], message)
    k.patch(ROLLBACKS, meta["namespace"], meta["name"], body, MERGE_PATCH, sub="status")
    emit = _emitter(k, obj)
    emit("Warning", "InvalidSpec", message)


def _give_up(k: Kube, namespace: str, name: str, message: str) -> bool:
    """Records that the rollback stopped; True when something (its cleanup steps, the Failed
    notification, the report) is still to run. Raises when the status cannot be written."""
    fresh = _read(k, namespace, name)
    return fresh is not None and engine.give_up(_context(k, fresh), message)
