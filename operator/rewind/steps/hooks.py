"""Hooks around the rollback: the seed's maintenance window and quiet monitoring.

`maintenance/enter` and `monitoring/suspend` run first; `maintenance/exit` and
`monitoring/resume` run last, and they run even when a step in between failed (they are the
plan's cleanup steps), as long as their counterpart started. What a hook changes is recorded in
status.hooks *before* it is changed (the Service's selector, the replicas), so exit and resume put
back exactly that, also after an operator restart. An Alertmanager silence carries the Rollback's
UID in its comment: after a crash it is adopted, not created twice, and it ends by itself after
`maxDurationMinutes` should Rewind never get to expire it.

Failing to enter maintenance or to silence monitoring fails the rollback before anything else
changed (what was entered is undone); failing to exit or resume is retried, then recorded, and
the rollback ends Failed with reason HookFailed so that a person puts it back by hand.
"""

from __future__ import annotations

import datetime
import hashlib

from rewind.adapters import alertmanager, http
from rewind.adapters.kube import JSON_PATCH, MERGE_PATCH, Kube, KubeError, Resource
from rewind.api import conditions as C
from rewind.api.v1alpha1 import (
    HookStatus, HttpCall, PlanStep, RollbackSpec, StepAction, StepKind, StepRecord, StepState, TargetRef,
)
from rewind.context import Context, StepFailed
from rewind.steps.secrets import read_key, read_secret

SERVICES = Resource("", "v1", "services")
WORKLOADS = {"Deployment": Resource("apps", "v1", "deployments"),
             "StatefulSet": Resource("apps", "v1", "statefulsets")}
ENTER, EXIT, SUSPEND, RESUME = "maintenance/enter", "maintenance/exit", "monitoring/suspend", "monitoring/resume"
COUNTERPART = {EXIT: ENTER, RESUME: SUSPEND}
ATTEMPTS = {ENTER: 3, SUSPEND: 3, EXIT: 6, RESUME: 6}


# --- planning --------------------------------------------------------------------------------


def plan(spec: RollbackSpec) -> tuple[list[PlanStep], list[PlanStep]]:
    """(steps before the rollback, cleanup steps after it)."""
    head, tail = [], []
    if spec.maintenance:
        what = _maintenance_target(spec)
        head.append(PlanStep(name=ENTER, kind=StepKind.MAINTENANCE_ENTER, target=what, action=StepAction.RESTORE))
        tail.append(PlanStep(name=EXIT, kind=StepKind.MAINTENANCE_EXIT, target=what, action=StepAction.RESTORE,
                             cleanup=True))
    if spec.monitoring:
        what = _monitoring_target(spec)
        head.append(PlanStep(name=SUSPEND, kind=StepKind.MONITORING_SUSPEND, target=what, action=StepAction.RESTORE))
        tail.append(PlanStep(name=RESUME, kind=StepKind.MONITORING_RESUME, target=what, action=StepAction.RESTORE,
                             cleanup=True))
    return head, tail


def _maintenance_target(spec: RollbackSpec) -> TargetRef:
    m = spec.maintenance
    return TargetRef(kind="Service" if m.service else "HTTP", name=m.service.name if m.service else "maintenance hook")


def _monitoring_target(spec: RollbackSpec) -> TargetRef:
    m = spec.monitoring
    if m.scale_down:
        return TargetRef(kind=m.scale_down[0].kind, name=", ".join(w.name for w in m.scale_down))
    return TargetRef(kind="AlertmanagerSilence", name=http.redact(m.alertmanager.url))


def resolve(kube: Kube, namespace: str, spec: RollbackSpec) -> None:
    """Preflight: what the hooks touch exists. Reads only; raises StepFailed."""
    m = spec.maintenance
    if m and m.service:
        _get(kube, SERVICES, namespace, m.service.name, "maintenance Service")
    for which, call in ([("enter", m.http.enter), ("exit", m.http.exit)] if m and m.http else []):
        what = f"the maintenance {which} hook's URL"
        url = call.url
        if call.url_secret_ref:
            ref = call.url_secret_ref
            url = read_key(kube, namespace, ref.name, ref.key, f"{what} Secret")
            what += f" (Secret {namespace}/{ref.name} key {ref.key!r})"
        http.check_url(url, what)
    am = spec.monitoring.alertmanager if spec.monitoring else None
    if am:
        http.check_url(am.url, "the Alertmanager URL")
        am_auth(kube, namespace, am)
        others = [x.value for x in am.matchers if x.name == "namespace" and (x.value != namespace or x.is_regex
                                                                               or not x.is_equal)]
        if others:
            raise StepFailed(C.NAMESPACE_NOT_ALLOWED, "the Alertmanager silence may only match alerts of "
                             f"namespace {namespace} (a Rollback touches only its own namespace); drop the "
                             "namespace matcher, Rewind adds it")
    restored = {(t.kind, t.name) for t in spec.application or []}
    for w in (spec.monitoring.scale_down or []) if spec.monitoring else []:
        if (w.kind, w.name) in restored:
            raise StepFailed(C.INVALID_SPEC, f"{w.kind} {w.name} is both restored (spec.application) "
                             "and scaled down by spec.monitoring.scaleDown")
        _get(kube, WORKLOADS[w.kind], namespace, w.name, f"monitoring {w.kind}")


def _get(kube: Kube, res: Resource, namespace: str, name: str, what: str) -> dict:
    try:
        return kube.get(res, namespace, name)
    except KubeError as e:
        if e.not_found:
            raise StepFailed(C.TARGET_NOT_FOUND, f"the {what} {namespace}/{name} does not exist") from None
        if e.forbidden:
            raise StepFailed(C.FORBIDDEN, f"the operator may not read the {what} {namespace}/{name}") from None
        raise


# --- execution -------------------------------------------------------------------------------


def counterpart_started(ctx: Context, step: PlanStep) -> bool:
    other = COUNTERPART.get(step.name)
    rec = next((r for r in ctx.status.steps if r.name == other), None)
    return rec is not None and rec.state not in (StepState.PENDING.value, StepState.SKIPPED.value)


def advance(ctx: Context, step: PlanStep, rec: StepRecord) -> float | None:
    now = ctx.clock()
    if step.cleanup and rec.state == StepState.PENDING.value and not counterpart_started(ctx, step):
        rec.state, rec.finished_at, rec.message = StepState.SKIPPED.value, now, \
            f"Nothing to undo: {COUNTERPART[step.name]} did not run."
        ctx.save()
        return None
    if rec.state == StepState.PENDING.value:
        rec.state, rec.started_at = StepState.RUNNING.value, now
        ctx.status.hooks = ctx.status.hooks or HookStatus()
        ctx.save()   # intent: a crash from here on leaves the cleanup step to undo it
    if rec.next_attempt_at and now < rec.next_attempt_at:
        return (rec.next_attempt_at - now).total_seconds()
    rec.attempts += 1
    actions = {ENTER: _enter, EXIT: _exit, SUSPEND: _suspend, RESUME: _resume}[step.name](ctx)
    messages, errors = [], []
    for key, action in actions:
        done = ctx.status.hooks.done
        if key not in done:
            try:
                done[key] = action()
            except StepFailed as e:
                errors.append(e)
                if not step.cleanup:
                    break        # entering stops at the first failure; undoing tries everything
                continue
            ctx.save()           # each action once: a retry or a restart skips what is done
        messages.append(done[key])
    if errors:
        message = "; ".join(e.message for e in errors)
        if not any(e.retryable for e in errors) or rec.attempts >= ATTEMPTS[step.name]:
            if messages:
                message += f" (done: {'; '.join(messages)})"
            raise StepFailed(errors[0].reason, f"{message} (after {rec.attempts} attempt(s))")
        rec.message = f"attempt {rec.attempts} of {ATTEMPTS[step.name]} failed: {message}; retrying"
        rec.next_attempt_at = now + datetime.timedelta(seconds=2 ** rec.attempts)
        ctx.save()
        return float(2 ** rec.attempts)
    text = "; ".join(messages) + "." if messages else "Nothing to do."
    rec.state, rec.finished_at, rec.message, rec.next_attempt_at = StepState.SUCCEEDED.value, ctx.clock(), text, None
    ctx.save()
    ctx.emit("Normal", "HookDone", f"{step.name}: {text}")
    return None


class HookFailed(StepFailed):
    def __init__(self, reason: str, message: str, retryable: bool = True):
        super().__init__(reason, message)
        self.retryable = retryable


def _call(ctx: Context, call: HttpCall, label: str, key: str) -> str:
    url = call.url
    if call.url_secret_ref:
        url = read_key(ctx.kube, ctx.namespace, call.url_secret_ref.name, call.url_secret_ref.key,
                       f"the URL Secret of {label}")
    ok, retry, detail = http.call(url, call.method, call.body, timeout=call.timeout_seconds,
                                  verify=not call.insecure_skip_tls_verify, label=label,
                                  headers={"Idempotency-Key": hashlib.sha256(f"{ctx.uid}/{key}".encode()).hexdigest()[:32]})
    if not ok:
        raise HookFailed(C.HOOK_FAILED, detail, retryable=retry)
    return detail


def _patch_selector(ctx: Context, name: str, selector: dict) -> None:
    try:
        ctx.kube.patch(SERVICES, ctx.namespace, name, [{"op": "replace", "path": "/spec/selector",
                                                        "value": selector}], JSON_PATCH)
    except KubeError as e:
        raise HookFailed(C.HOOK_FAILED, f"could not switch Service {name}'s selector: the API answered "
                         f"{e.status} {e.reason}", retryable=not (e.not_found or e.forbidden)) from None


def _selector(ctx: Context, name: str) -> dict:
    try:
        return dict(ctx.kube.get(SERVICES, ctx.namespace, name)["spec"].get("selector") or {})
    except KubeError as e:
        raise HookFailed(C.HOOK_FAILED, f"could not read Service {name}: the API answered {e.status} "
                         f"{e.reason}", retryable=not (e.not_found or e.forbidden)) from None


def _enter(ctx: Context):
    m = ctx.rollback.spec.maintenance
    actions = []
    if m.http:
        actions.append(("enter/http", lambda: _call(ctx, m.http.enter, "the maintenance enter hook", "maintenance/enter")))
    if m.service:
        def switch() -> str:
            hooks, wanted = ctx.status.hooks, dict(m.service.selector)
            if hooks.service_selector is None:
                current = _selector(ctx, m.service.name)
                if current == wanted:
                    raise HookFailed(C.HOOK_FAILED, f"Service {m.service.name} already points at the "
                                     f"maintenance backend ({_labels(wanted)}): an earlier rollback may have "
                                     "left it there; point it at its pods first", retryable=False)
                hooks.service_selector = current
                ctx.save()   # the selector to put back is recorded before it is changed
            _patch_selector(ctx, m.service.name, wanted)
            return f"Service {m.service.name} points at the maintenance backend ({_labels(wanted)})"
        actions.append(("enter/service", switch))
    return actions


def _exit(ctx: Context):
    m, hooks = ctx.rollback.spec.maintenance, ctx.status.hooks
    actions = []
    if m.service and hooks.service_selector is not None:
        def back() -> str:
            current = _selector(ctx, m.service.name)
            if current != dict(m.service.selector):
                return (f"Service {m.service.name} left as it is ({_labels(current)}): someone changed it "
                        "during the rollback")
            _patch_selector(ctx, m.service.name, hooks.service_selector)
            return f"Service {m.service.name} points at its own pods again ({_labels(hooks.service_selector)})"
        actions.append(("exit/service", back))
    if m.http:
        actions.append(("exit/http", lambda: _call(ctx, m.http.exit, "the maintenance exit hook", "maintenance/exit")))
    return actions


def _labels(selector: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "no selector"


def _scale(ctx: Context, kind: str, name: str, replicas: int) -> None:
    try:
        ctx.kube.patch(WORKLOADS[kind], ctx.namespace, name, {"spec": {"replicas": replicas}},
                       MERGE_PATCH, sub="scale")
    except KubeError as e:
        raise HookFailed(C.HOOK_FAILED, f"could not scale {kind} {name} to {replicas}: the API answered "
                         f"{e.status} {e.reason}", retryable=not (e.not_found or e.forbidden)) from None


def _replicas(ctx: Context, kind: str, name: str) -> int:
    try:
        return int(ctx.kube.get(WORKLOADS[kind], ctx.namespace, name)["spec"].get("replicas", 1))
    except KubeError as e:
        raise HookFailed(C.HOOK_FAILED, f"could not read {kind} {name}: the API answered {e.status} {e.reason}",
                         retryable=not (e.not_found or e.forbidden)) from None


def _marker(ctx: Context) -> str:
    return f"rewind.dev/rollback-uid={ctx.uid}"


def matchers(spec_matchers, namespace: str) -> list[dict]:
    """The silence's matchers, always confined to the Rollback's namespace."""
    out = [m.dump() for m in spec_matchers]
    if not any(m["name"] == "namespace" for m in out):
        out.append({"name": "namespace", "value": namespace, "isRegex": False, "isEqual": True})
    return out


def _suspend(ctx: Context):
    m = ctx.rollback.spec.monitoring
    actions = []
    if m.scale_down:
        def scale_down() -> str:
            hooks = ctx.status.hooks
            if hooks.scaled_replicas is None:
                hooks.scaled_replicas = {f"{w.kind}/{w.name}": _replicas(ctx, w.kind, w.name) for w in m.scale_down}
                ctx.save()   # the replicas to put back are recorded before they are changed
            for w in m.scale_down:
                _scale(ctx, w.kind, w.name, 0)
            return "scaled to 0: " + ", ".join(f"{k} (was {v})" for k, v in hooks.scaled_replicas.items())
        actions.append(("suspend/scale", scale_down))
    if m.alertmanager:
        actions.append(("suspend/silence", lambda: _silence(ctx)))
    return actions


def am_auth(kube: Kube, namespace: str, am) -> alertmanager.Auth:
    """Alertmanager's credentials from their Secret: a bearer `token`, or `username` + `password`."""
    if not am.credentials_secret_ref:
        return None
    name, what = am.credentials_secret_ref, "the Alertmanager credentials Secret"
    keys = (read_secret(kube, namespace, name, what).get("data") or {})
    if "token" in keys:
        return read_key(kube, namespace, name, "token", what)
    return (read_key(kube, namespace, name, "username", what), read_key(kube, namespace, name, "password", what))


def _silence(ctx: Context) -> str:
    am, hooks = ctx.rollback.spec.monitoring.alertmanager, ctx.status.hooks
    verify = not am.insecure_skip_tls_verify
    auth = am_auth(ctx.kube, ctx.namespace, am)
    try:
        sid = hooks.silence_id or alertmanager.find_silence(am.url, _marker(ctx), verify=verify, auth=auth)
        adopted = sid is not None
        if sid is None:
            ends = ctx.clock() + datetime.timedelta(minutes=am.max_duration_minutes)
            sid = alertmanager.create_silence(
                am.url, matchers(am.matchers, ctx.namespace), ends_at=ends, created_by="rewind",
                comment=f"Rollback {ctx.namespace}/{ctx.name} ({ctx.rollback.spec.severity}): "
                        f"{ctx.rollback.spec.reason[:200]} [{_marker(ctx)}]", verify=verify, auth=auth)
            hooks.silence_ends_at = ends
    except alertmanager.AlertmanagerError as e:
        raise HookFailed(e.reason, f"Alertmanager: {e.message}") from None
    hooks.silence_id = sid
    ctx.save()
    return f"Alertmanager silence {sid} {'adopted' if adopted else 'created'}"


def _resume(ctx: Context):
    m, hooks = ctx.rollback.spec.monitoring, ctx.status.hooks
    actions = []
    for key, replicas in (hooks.scaled_replicas or {}).items():
        def back(key=key, replicas=replicas) -> str:
            kind, name = key.split("/", 1)
            current = _replicas(ctx, kind, name)
            if current != 0:
                return f"{key} left at {current} replica(s): someone scaled it during the rollback"
            _scale(ctx, kind, name, replicas)
            return f"{key} back to {replicas} replica(s)"
        actions.append((f"resume/scale/{key}", back))
    if m.alertmanager:
        def expire() -> str:
            am = m.alertmanager
            verify = not am.insecure_skip_tls_verify
            auth = am_auth(ctx.kube, ctx.namespace, am)
            try:
                sid = hooks.silence_id or alertmanager.find_silence(am.url, _marker(ctx), verify=verify, auth=auth)
                if sid:
                    alertmanager.expire_silence(am.url, sid, verify=verify, auth=auth)
            except alertmanager.AlertmanagerError as e:
                raise HookFailed(e.reason, f"Alertmanager: {e.message}") from None
            return f"Alertmanager silence {sid} expired" if sid else "no Alertmanager silence to expire"
        actions.append(("resume/silence", expire))
    return actions
