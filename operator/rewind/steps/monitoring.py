"""Quiet monitoring during the rollback: workloads scaled to 0 (their replicas recorded first)
and/or an Alertmanager silence confined to the Rollback's namespace. The silence carries the
Rollback's UID in its comment: after a crash it is adopted, not created twice, and it ends by
itself after `maxDurationMinutes` should Rewind never get to expire it."""

from __future__ import annotations

import datetime

from rewind import egress
from rewind.adapters import alertmanager, http
from rewind.adapters.kube import DEPLOYMENTS, MERGE_PATCH, STATEFULSETS, Kube, KubeError
from rewind.api import conditions as C
from rewind.api.v1alpha1 import (
    PlanStep, StepAction, StepKind, StepRecord, TargetRef,
)
from rewind.context import Context, Found, Request, StepFailed, Wait
from rewind.adapters.secrets import read_key, read_secret
from rewind.steps import hooks
from rewind.steps.hooks import RESUME, SUSPEND, HookFailed
from rewind.steps.maintenance import get_checked

WORKLOADS = {"Deployment": DEPLOYMENTS, "StatefulSet": STATEFULSETS}


def preflight(kube: Kube, req: Request) -> Found:
    """What the monitoring hooks touch exists, the silence stays in the namespace. Reads only."""
    spec, namespace = req.spec, req.namespace
    if not spec.monitoring:
        return Found()
    am = spec.monitoring.alertmanager
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
    for w in spec.monitoring.scale_down or []:
        if (w.kind, w.name) in restored:
            raise StepFailed(C.INVALID_SPEC, f"{w.kind} {w.name} is both restored (spec.application) "
                             "and scaled down by spec.monitoring.scaleDown")
        get_checked(kube, WORKLOADS[w.kind], namespace, w.name, f"monitoring {w.kind}")
    m = spec.monitoring
    if m.scale_down:
        what = TargetRef(kind=m.scale_down[0].kind, name=", ".join(w.name for w in m.scale_down))
    else:
        what = TargetRef(kind="AlertmanagerSilence", name=http.redact(m.alertmanager.url))
    return Found(steps=[
        PlanStep(name=SUSPEND, kind=StepKind.MONITORING_SUSPEND, target=what, action=StepAction.RESTORE),
        PlanStep(name=RESUME, kind=StepKind.MONITORING_RESUME, target=what, action=StepAction.RESTORE, cleanup=True)])


def advance(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    return hooks.run(ctx, step, rec, _suspend if step.name == SUSPEND else _resume)


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
    rules = egress.rules_of(ctx.policy)
    try:
        sid = hooks.silence_id or alertmanager.find_silence(am.url, _marker(ctx), verify=verify, auth=auth,
                                                            rules=rules)
        adopted = sid is not None
        if sid is None:
            ends = ctx.clock() + datetime.timedelta(minutes=am.max_duration_minutes)
            sid = alertmanager.create_silence(
                am.url, matchers(am.matchers, ctx.namespace), ends_at=ends, created_by="rewind",
                comment=f"Rollback {ctx.namespace}/{ctx.name} ({ctx.rollback.spec.severity}): "
                        f"{ctx.rollback.spec.reason[:200]} [{_marker(ctx)}]", verify=verify, auth=auth,
                rules=rules)
            hooks.silence_ends_at = ends
    except alertmanager.AlertmanagerError as e:
        raise HookFailed(e.reason, f"Alertmanager: {e.message}") from None
    except egress.EgressDenied as e:
        raise HookFailed(e.reason, f"Alertmanager: {e.message}", retryable=False) from None
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
            rules = egress.rules_of(ctx.policy)
            try:
                sid = hooks.silence_id or alertmanager.find_silence(am.url, _marker(ctx), verify=verify,
                                                                    auth=auth, rules=rules)
                if sid:
                    alertmanager.expire_silence(am.url, sid, verify=verify, auth=auth, rules=rules)
            except alertmanager.AlertmanagerError as e:
                raise HookFailed(e.reason, f"Alertmanager: {e.message}") from None
            except egress.EgressDenied as e:
                raise HookFailed(e.reason, f"Alertmanager: {e.message}", retryable=False) from None
            return f"Alertmanager silence {sid} expired" if sid else "no Alertmanager silence to expire"
        actions.append(("resume/silence", expire))
    return actions
