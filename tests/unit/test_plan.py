"""Planning without a cluster: each step module's preflight is pure given what it read, and
plan.order owns the runbook's order. The objects preflight reads come from `Objects`, a plain
dictionary in the shape the API server returns (this is the input of a pure function, not a
stand-in for the API server's behaviour: that is tested against the real one in tests/operator)."""

from __future__ import annotations

import datetime

import pytest

from rewind import plan, registry
from rewind.adapters.kube import KubeError, merge_diff
from rewind.api import conditions as C
from rewind.api.v1alpha1 import PlanStep, RollbackSpec, StepKind, StepRecord, StepState, TargetRef
from rewind.context import Context, Request, StepFailed
from rewind.steps import consumers, maintenance, monitoring, secrets, verification, workload

NS = "shop"


class Objects:
    """What preflight reads: objects by (plural, name) in one namespace, as the API returns them."""

    def __init__(self, *objs: tuple[str, dict]):
        self.objs = {(plural, o["metadata"]["name"]): o for plural, o in objs}
        self.reads: list[str] = []

    def get(self, res, namespace, name):
        self.reads.append(f"get {res.plural}/{name}")
        if namespace != NS or (res.plural, name) not in self.objs:
            raise KubeError(404, "NotFound", f"{res.plural} {name} not found")
        return self.objs[(res.plural, name)]

    def list(self, res, namespace, label_selector=None):
        self.reads.append(f"list {res.plural}")
        items = [o for (plural, _), o in self.objs.items() if plural == res.plural]
        if label_selector:
            key, _, value = label_selector.partition("=")
            items = [o for o in items if (o["metadata"].get("labels") or {}).get(key) == value]
        return items

    def can_i(self, namespace, verb, res):
        return True


def _template(image: str, secret: str | None = None) -> dict:
    c = {"name": "app", "image": image}
    if secret:
        c["envFrom"] = [{"secretRef": {"name": secret}}]
    return {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [c]}}


def _deployment(name: str, image: str, uid: str, paused: bool = False, secret: str | None = None) -> dict:
    return {"metadata": {"name": name, "namespace": NS, "uid": uid, "resourceVersion": "7", "generation": 3},
            "spec": {"replicas": 2, "paused": paused, "template": _template(image, secret)}}


def _replicaset(owner: str, uid: str, revision: int, image: str) -> dict:
    t = _template(image)
    t["metadata"]["labels"]["pod-template-hash"] = f"h{revision}"
    return {"metadata": {"name": f"{owner}-h{revision}", "namespace": NS,
                         "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                         "ownerReferences": [{"uid": uid, "controller": True}]},
            "spec": {"template": t}}


def _web(paused: bool = False) -> Objects:
    return Objects(("deployments", _deployment("web", "web:3", "d-1", paused)),
                   *(("replicasets", _replicaset("web", "d-1", r, f"web:{r}")) for r in (1, 2, 3)))


def _request(**spec) -> Request:
    return Request(NS, "rb", "0123456789abcdef", RollbackSpec.model_validate(
        {"severity": "High", "reason": "bad release", **spec}))


# --- plan.order ------------------------------------------------------------------------------


def _step(name: str, kind: StepKind, cleanup: bool = False) -> PlanStep:
    return PlanStep(name=name, kind=kind, target=TargetRef(kind="x", name=name), action="Restore", cleanup=cleanup)


def test_order_is_the_runbooks_whatever_order_the_preflights_found_them_in():
    found = [
        _step("verify/http/health", StepKind.HTTP_CHECK),
        _step("deployment/web", StepKind.WORKLOAD_REVISION),
        _step("deployment/api", StepKind.WORKLOAD_REVISION),
        _step("maintenance/exit", StepKind.MAINTENANCE_EXIT, cleanup=True),
        _step("secrets", StepKind.SECRETS_RESTORE),
        _step("database/check", StepKind.DATABASE_CHECK),
        _step("database/restore", StepKind.DATABASE_RESTORE),
        _step("database/swap", StepKind.DATABASE_SWAP),
        _step("monitoring/resume", StepKind.MONITORING_RESUME, cleanup=True),
        _step("monitoring/suspend", StepKind.MONITORING_SUSPEND),
        _step("maintenance/enter", StepKind.MAINTENANCE_ENTER),
        _step("restart-consumers", StepKind.CONSUMERS_RESTART),
        _step("certificate/tls/served", StepKind.TLS_VERIFY),
    ]
    assert [s.name for s in plan.order(found)] == [
        "maintenance/enter", "monitoring/suspend",
        "database/check", "database/restore", "database/swap",
        "secrets", "restart-consumers",
        "deployment/web", "deployment/api",          # the spec's order, kept
        "certificate/tls/served", "verify/http/health",
        "maintenance/exit", "monitoring/resume",
    ]


def test_every_step_kind_has_one_advance_and_one_rank():
    assert set(registry.ADVANCE) == set(StepKind)
    assert set(plan.RANK) == set(StepKind)


def test_two_steps_with_one_name_are_a_planning_bug_not_a_silent_overwrite():
    with pytest.raises(ValueError, match="deployment/web"):
        plan.order([_step("deployment/web", StepKind.WORKLOAD_REVISION)] * 2)


# --- workloads -------------------------------------------------------------------------------


def test_workload_preflight_resolves_previous_and_points_at_its_spec_entry():
    found = workload.preflight(_web(), _request(application=[{"name": "web"}]))
    [step] = found.steps
    assert (step.name, step.kind, step.spec_key) == ("deployment/web", "WorkloadRevision", "Deployment/web")
    assert (step.current_revision, step.to_revision, step.action) == (3, 2, "Restore")
    assert "-  - image: web:3" in step.diff and "+  - image: web:2" in step.diff
    assert step.from_template_hash == workload.template_hash(_template("web:3"))
    assert step.template_hash == workload.template_hash(_template("web:2"))


def test_workload_already_at_the_wanted_template_is_a_no_op():
    objs = _web()
    objs.objs[("deployments", "web")]["spec"]["template"] = _template("web:1")
    [step] = workload.preflight(objs, _request(application=[{"name": "web", "toRevision": 1}])).steps
    assert step.action == "NoOp" and step.diff is None


def test_workload_preflight_reports_every_problem_at_once():
    with pytest.raises(StepFailed) as e:
        workload.preflight(_web(), _request(application=[
            {"name": "web", "toRevision": 9}, {"name": "gone"}, {"name": "web", "kind": "StatefulSet"}]))
    assert e.value.reason == C.REVISION_NOT_FOUND
    assert "revision 9 not found (revisions kept: 1, 2, 3)" in e.value.message
    assert "Deployment shop/gone does not exist" in e.value.message
    assert "StatefulSet shop/web does not exist" in e.value.message


def test_a_paused_deployment_is_refused_as_kubectl_refuses_it():
    with pytest.raises(StepFailed) as e:
        workload.preflight(_web(paused=True), _request(application=[{"name": "web"}]))
    assert e.value.reason == C.WORKLOAD_PAUSED and "kubectl rollout resume deployment/web" in e.value.message


def test_another_namespace_is_refused_before_anything_is_read():
    objs = _web()
    with pytest.raises(StepFailed) as e:
        workload.preflight(objs, _request(application=[{"name": "web", "namespace": "other"}]))
    assert e.value.reason == C.NAMESPACE_NOT_ALLOWED and objs.reads == []


# --- hooks, checks, consumers ----------------------------------------------------------------


def test_hooks_plan_an_entry_and_a_cleanup_step_each():
    objs = Objects(("services", {"metadata": {"name": "web", "namespace": NS}, "spec": {}}),
                   ("deployments", _deployment("watcher", "w:1", "d-2")))
    req = _request(application=[{"name": "web"}],
                   maintenance={"service": {"name": "web", "selector": {"app": "maintenance"}}},
                   monitoring={"scaleDown": [{"name": "watcher"}]})
    m, w = maintenance.preflight(objs, req).steps, monitoring.preflight(objs, req).steps
    assert [(s.name, s.cleanup) for s in m] == [("maintenance/enter", False), ("maintenance/exit", True)]
    assert [(s.name, s.cleanup) for s in w] == [("monitoring/suspend", False), ("monitoring/resume", True)]


def test_a_missing_maintenance_service_refuses_the_rollback():
    with pytest.raises(StepFailed) as e:
        maintenance.preflight(Objects(), _request(application=[{"name": "web"}], maintenance={
            "service": {"name": "web", "selector": {"app": "maintenance"}}}))
    assert e.value.reason == C.TARGET_NOT_FOUND and "maintenance Service shop/web" in e.value.message


def test_checks_are_found_by_their_spec_key_not_by_parsing_step_names():
    req = _request(application=[{"name": "web"}], verification={"http": [
        {"name": "health", "url": "http://web.shop.svc/health"},
        {"name": "login", "url": "http://web.shop.svc/login"}]})
    steps = verification.preflight(Objects(), req).steps
    assert [(s.name, s.spec_key) for s in steps] == [("verify/http/health", "health"), ("verify/http/login", "login")]
    assert verification._check(req.spec, steps[1]).url == "http://web.shop.svc/login"


def test_consumers_of_a_restored_secret_are_restarted_except_those_rolled_back():
    objs = Objects(("deployments", _deployment("web", "web:3", "d-1", secret="oauth")),
                   ("deployments", _deployment("worker", "w:1", "d-2", secret="oauth")),
                   ("deployments", _deployment("other", "o:1", "d-3", secret="unrelated")))
    step = consumers.resolve(objs, NS, ["oauth"], excluded={("Deployment", "web")})
    assert step.kind == "ConsumersRestart" and step.target.name == "Deployment/worker"
    assert consumers.resolve(objs, NS, ["nothing-uses-me"], excluded=set()) is None


def test_secrets_preflight_refuses_a_secret_without_history():
    objs = Objects(("secrets", {"metadata": {"name": "oauth", "namespace": NS}, "type": "Opaque",
                                "data": {"id": "eA=="}}))
    with pytest.raises(StepFailed) as e:
        secrets.preflight(objs, _request(secrets=[{"name": "oauth"}]))
    assert e.value.reason == "RevisionNotFound" and "rewind.dev/track=true" in e.value.message


# --- status saves and the ledger -------------------------------------------------------------


def test_a_status_save_clears_what_was_removed_and_skips_what_did_not_change():
    old = {"phase": "Running", "database": {"stagingDatabase": "app_restore_1", "liveDatabase": "app"}}
    new = {"phase": "Running", "database": {"liveDatabase": "app", "preRollbackDatabase": "app_pre_1"}}
    assert merge_diff(old, new) == {"database": {"stagingDatabase": None, "preRollbackDatabase": "app_pre_1"}}
    assert merge_diff(new, new) == {}


T0 = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.timezone.utc)


def _ledger_ctx(now: list[datetime.datetime]):
    obj = {"apiVersion": "rewind.dev/v1alpha1", "kind": "Rollback",
           "metadata": {"name": "rb", "namespace": NS, "uid": "u-1", "resourceVersion": "1", "generation": 1},
           "spec": {"severity": "High", "reason": "bad", "application": [{"name": "web"}]},
           "status": {"phase": "Running"}}
    writes = []

    def save(status):
        writes.append(status)
        obj["status"] = status
        return obj

    return Context(kube=None, obj=obj, save_status=save, emit=lambda *e: None, clock=lambda: now[0]), writes


def test_a_wait_is_written_once_bounded_by_its_deadline_and_then_fails():
    now = [T0]
    ctx, writes = _ledger_ctx(now)
    step, rec = _step("deployment/web", StepKind.WORKLOAD_REVISION), StepRecord(name="deployment/web", state=StepState.PENDING)
    ctx.status.steps = [rec]
    assert ctx.begin(step, rec, "Restoring.") is True and len(writes) == 1
    assert ctx.begin(step, rec, "Restoring.") is False and len(writes) == 1   # intent once
    deadline = T0 + datetime.timedelta(minutes=11)
    w = ctx.waiting(step, rec, "1 of 2 updated", deadline, look_again=30, state=StepState.WAITING.value)
    assert len(writes) == 2 and rec.deadline == deadline and w.at == T0 + datetime.timedelta(seconds=30)
    ctx.waiting(step, rec, "1 of 2 updated", deadline, look_again=30, state=StepState.WAITING.value)
    assert len(writes) == 2                                   # nothing changed: nothing written
    now[0] = deadline
    with pytest.raises(StepFailed) as e:
        ctx.waiting(step, rec, "1 of 2 updated", deadline, look_again=30)
    assert e.value.reason == C.WAIT_TIMED_OUT and "10:11:00Z" in e.value.message
