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

from rewind.adapters import alertmanager, http
from rewind.adapters.kube import JSON_PATCH, MERGE_PATCH, Kube, KubeError, Resource
from rewind.api import conditions as C
from rewind.api.v1alpha1 import (
    HookStatus, HttpCall, PlanStep, RollbackSpec, StepAction, StepKind, StepRecord, StepState, TargetRef,
)
from rewind.context import Context, StepFailed
from rewind.steps.secrets import read_key

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
    return TargetRef(kind="AlertmanagerSilence", name=m.alertmanager.url)


def resolve(kube: Kube, namespace: str, spec: RollbackSpec) -> None:
    """Preflight: what the hooks touch exists. Reads only; raises StepFailed."""
    m = spec.maintenance
    if m and m.service:
        _get(kube, SERVICES, namespace, m.service.name, "maintenance Service")
    for call in ([m.http.enter, m.http.exit] if m and m.http else []):
        if call.url_secret_ref:
            read_key(kube, namespace, call.url_secret_ref.name, call.url_secret_ref.key,
                     "the maintenance hook's URL Secret")
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
    try:
        done = {ENTER: _enter, EXIT: _exit, SUSPEND: _suspend, RESUME: _resume}[step.name](ctx)
    except StepFailed as e:
        if not e.retryable or rec.attempts >= ATTEMPTS[step.name]:
            raise StepFailed(e.reason, f"{e.message} (after {rec.attempts} attempt(s))") from None
        rec.message = f"attempt {rec.attempts} of {ATTEMPTS[step.name]} failed: {e.message}; retrying"
        rec.next_attempt_at = now + datetime.timedelta(seconds=2 ** rec.attempts)
        ctx.save()
        return float(2 ** rec.attempts)
    rec.state, rec.finished_at, rec.message, rec.next_attempt_at = StepState.SUCCEEDED.value, ctx.clock(), done, None
    ctx.save()
    ctx.emit("Normal", "HookDone", f"{step.name}: {done}")
    return None


class HookFailed(StepFailed):
    def __init__(self, reason: str, message: str, retryable: bool = True):
        super().__init__(reason, message)
        self.retryable = retryable


def _call(ctx: Context, call: HttpCall, label: str) -> str:
    url = call.url
    if call.url_secret_ref:
        url = read_key(ctx.kube, ctx.namespace, call.url_secret_ref.name, call.url_secret_ref.key,
                       f"the URL Secret of {label}")
    ok, retry, detail = http.call(url, call.method, call.body, timeout=call.timeout_seconds,
                                  verify=not call.insecure_skip_tls_verify, label=label)
    if not ok:
        raise HookFailed("HookFailed", detail, retryable=retry)
    return detail


def _patch_selector(ctx: Context, name: str, selector: dict) -> None:
    try:
        ctx.kube.patch(SERVICES, ctx.namespace, name, [{"op": "replace", "path": "/spec/selector",
                                                        "value": selector}], JSON_PATCH)
    except KubeError as e:
        raise HookFailed("HookFailed", f"could not switch Service {name}'s selector: the API answered "
                         f"{e.status} {e.reason}", retryable=not (e.not_found or e.forbidden)) from None


def _enter(ctx: Context) -> str:
    m, hooks, done = ctx.rollback.spec.maintenance, ctx.status.hooks, []
    if m.http:
        done.append(_call(ctx, m.http.enter, "the maintenance enter hook"))
    if m.service:
        if hooks.service_selector is None:
            svc = _get(ctx.kube, SERVICES, ctx.namespace, m.service.name, "maintenance Service")
            hooks.service_selector = dict(svc["spec"].get("selector") or {})
            ctx.save()   # the selector to put back is recorded before it is changed
        _patch_selector(ctx, m.service.name, dict(m.service.selector))
        done.append(f"Service {m.service.name} points at the maintenance backend "
                    f"({_labels(m.service.selector)})")
    return "; ".join(done) + "."


def _exit(ctx: Context) -> str:
    m, hooks, done = ctx.rollback.spec.maintenance, ctx.status.hooks or HookStatus(), []
    if m.service and hooks.service_selector is not None:
        _patch_selector(ctx, m.service.name, hooks.service_selector)
        done.append(f"Service {m.service.name} points at its own pods again ({_labels(hooks.service_selector)})")
    if m.http:
        done.append(_call(ctx, m.http.exit, "the maintenance exit hook"))
    return "; ".join(done) + "."


def _labels(selector: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "no selector"


def _scale(ctx: Context, kind: str, name: str, replicas: int) -> None:
    try:
        ctx.kube.patch(WORKLOADS[kind], ctx.namespace, name, {"spec": {"replicas": replicas}},
                       MERGE_PATCH, sub="scale")
    except KubeError as e:
        raise HookFailed("HookFailed", f"could not scale {kind} {name} to {replicas}: the API answered "
                         f"{e.status} {e.reason}", retryable=not (e.not_found or e.forbidden)) from None


def _marker(ctx: Context) -> str:
    return f"rewind.dev/rollback-uid={ctx.uid}"


def _suspend(ctx: Context) -> str:
    m, hooks, done = ctx.rollback.spec.monitoring, ctx.status.hooks, []
    if m.scale_down:
        if hooks.scaled_replicas is None:
            hooks.scaled_replicas = {}
            for w in m.scale_down:
                obj = _get(ctx.kube, WORKLOADS[w.kind], ctx.namespace, w.name, f"monitoring {w.kind}")
                hooks.scaled_replicas[f"{w.kind}/{w.name}"] = int(obj["spec"].get("replicas", 1))
            ctx.save()   # the replicas to put back are recorded before they are changed
        for w in m.scale_down:
            _scale(ctx, w.kind, w.name, 0)
        done.append("scaled to 0: " + ", ".join(f"{k} (was {v})" for k, v in hooks.scaled_replicas.items()))
    if m.alertmanager:
        done.append(_silence(ctx))
    return "; ".join(done) + "."


def _silence(ctx: Context) -> str:
    am, hooks = ctx.rollback.spec.monitoring.alertmanager, ctx.status.hooks
    verify = not am.insecure_skip_tls_verify
    try:
        sid = hooks.silence_id or alertmanager.find_silence(am.url, _marker(ctx), verify=verify)
        adopted = sid is not None
        if sid is None:
            ends = ctx.clock() + datetime.timedelta(minutes=am.max_duration_minutes)
            sid = alertmanager.create_silence(
                am.url, [mt.dump() for mt in am.matchers], ends_at=ends, created_by="rewind",
                comment=f"Rollback {ctx.namespace}/{ctx.name} ({ctx.rollback.spec.severity}): "
                        f"{ctx.rollback.spec.reason[:200]} [{_marker(ctx)}]", verify=verify)
            hooks.silence_ends_at = ends
    except alertmanager.AlertmanagerError as e:
        raise HookFailed(e.reason, f"Alertmanager: {e.message}") from None
    hooks.silence_id = sid
    ctx.save()
    return f"Alertmanager silence {sid} {'adopted' if adopted else 'created'}"


def _resume(ctx: Context) -> str:
    m, hooks, done = ctx.rollback.spec.monitoring, ctx.status.hooks or HookStatus(), []
    for key, replicas in (hooks.scaled_replicas or {}).items():
        kind, name = key.split("/", 1)
        current = _get(ctx.kube, WORKLOADS[kind], ctx.namespace, name, f"monitoring {kind}")
        if int(current["spec"].get("replicas", 1)) != 0:
            done.append(f"{key} left at {current['spec'].get('replicas')} replicas (someone scaled it meanwhile)")
            continue
        _scale(ctx, kind, name, replicas)
        done.append(f"{key} back to {replicas} replica(s)")
    if m.alertmanager:
        am = m.alertmanager
        verify = not am.insecure_skip_tls_verify
        try:
            sid = hooks.silence_id or alertmanager.find_silence(am.url, _marker(ctx), verify=verify)
            if sid:
                alertmanager.expire_silence(am.url, sid, verify=verify)
        except alertmanager.AlertmanagerError as e:
            raise HookFailed(e.reason, f"Alertmanager: {e.message}") from None
        done.append(f"Alertmanager silence {sid} expired" if sid else "no Alertmanager silence to expire")
    return "; ".join(done) + "."
