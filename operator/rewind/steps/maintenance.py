"""The seed's maintenance window: before the rollback a Service is pointed at a maintenance
backend and/or an HTTP hook is called; after it (also after a failure) both are undone. A hook call
carries an Idempotency-Key derived from the Rollback's UID, so a retried call is the same call."""

from __future__ import annotations

import hashlib

from rewind import egress
from rewind.adapters import http
from rewind.adapters.kube import JSON_PATCH, SERVICES, Kube, KubeError, Resource
from rewind.api import conditions as C
from rewind.api.v1alpha1 import (
    HttpCall, PlanStep, StepAction, StepKind, StepRecord, TargetRef,
)
from rewind.context import Context, Found, Request, StepFailed, Wait
from rewind.adapters.secrets import read_key
from rewind.steps import hooks
from rewind.steps.hooks import ENTER, EXIT, HookFailed



def preflight(kube: Kube, req: Request) -> Found:
    """What the maintenance hooks touch exists and their URLs are usable. Reads only."""
    m = req.spec.maintenance
    if not m:
        return Found()
    if m.service:
        get_checked(kube, SERVICES, req.namespace, m.service.name, "maintenance Service")
    for which, call in ([("enter", m.http.enter), ("exit", m.http.exit)] if m.http else []):
        what = f"the maintenance {which} hook's URL"
        url = call.url
        if call.url_secret_ref:
            ref = call.url_secret_ref
            url = read_key(kube, req.namespace, ref.name, ref.key, f"{what} Secret")
            what += f" (Secret {req.namespace}/{ref.name} key {ref.key!r})"
        http.check_url(url, what)
    what = TargetRef(kind="Service" if m.service else "HTTP", name=m.service.name if m.service else "maintenance hook")
    return Found(steps=[
        PlanStep(name=ENTER, kind=StepKind.MAINTENANCE_ENTER, target=what, action=StepAction.RESTORE),
        PlanStep(name=EXIT, kind=StepKind.MAINTENANCE_EXIT, target=what, action=StepAction.RESTORE, cleanup=True)])


def get_checked(kube: Kube, res: Resource, namespace: str, name: str, what: str) -> dict:
    try:
        return kube.get(res, namespace, name)
    except KubeError as e:
        if e.not_found:
            raise StepFailed(C.TARGET_NOT_FOUND, f"the {what} {namespace}/{name} does not exist") from None
        if e.forbidden:
            raise StepFailed(C.FORBIDDEN, f"the operator may not read the {what} {namespace}/{name}") from None
        raise


def advance(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    return hooks.run(ctx, step, rec, _enter if step.name == ENTER else _exit)


def _call(ctx: Context, call: HttpCall, label: str, key: str) -> str:
    url, secret = call.url, None
    if call.url_secret_ref:
        ref = call.url_secret_ref
        url = read_key(ctx.kube, ctx.namespace, ref.name, ref.key, f"the URL Secret of {label}")
        secret = f"Secret {ref.name} key {ref.key}"
    ok, retry, detail = http.call(url, call.method, call.body, timeout=call.timeout_seconds,
                                  verify=not call.insecure_skip_tls_verify, label=label,
                                  rules=egress.rules_of(ctx.policy), secret=secret,
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


