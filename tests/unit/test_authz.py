"""The pure parts of authorization: which permissions a plan needs, lease names, image and
break-glass rules, the seed policy."""

import re

import pytest

from rewind import authz, gate
from rewind.api import policy as P
from rewind.api.errors import ReasonedError
from rewind.api.v1alpha1 import PlanStep, RollbackSpec, SecretChange, StepAction, StepKind, TargetRef


def _spec(**extra) -> RollbackSpec:
    return RollbackSpec.model_validate({"severity": "High", "reason": "r", **extra})


def test_every_write_of_the_plan_is_a_permission_to_ask_for():
    spec = _spec(
        application=[{"name": "web"}],
        database={"connection": {"secretRef": {"name": "db", "key": "url"}},
                  "restoreFrom": {"persistentVolumeClaim": {"claimName": "b", "path": "x.dump"}}},
        maintenance={"service": {"name": "public", "selector": {"app": "maint"}}},
        monitoring={"scaleDown": [{"kind": "StatefulSet", "name": "checker"}]},
        notifications=[{"name": "ops", "slack": {"webhookSecretRef": {"name": "slack", "key": "url"}}}],
    )
    plan = [
        PlanStep(name="deployment/web", kind=StepKind.WORKLOAD_REVISION, target=TargetRef(kind="Deployment", name="web"),
                 action=StepAction.RESTORE),
        PlanStep(name="secrets", kind=StepKind.SECRETS_RESTORE, target=TargetRef(kind="Secrets", name="oauth"),
                 action=StepAction.RESTORE, secrets=[SecretChange(name="oauth", source="h", from_hash="a", to_hash="b")]),
        PlanStep(name="restart-consumers", kind=StepKind.CONSUMERS_RESTART,
                 target=TargetRef(kind="Workloads", name="Deployment/api,StatefulSet/worker"), action=StepAction.RESTORE),
    ]
    got = {str(p).split(" (")[0] for p in authz.required(spec, plan)}
    assert got == {
        "patch deployments.apps/web", "update secrets/oauth", "get secrets/oauth",
        "patch deployments.apps/api", "patch statefulsets.apps/worker",
        "create jobs.batch", "get secrets/db", "patch services/public",
        "patch statefulsets/scale.apps/checker", "get secrets/slack",
    }


def test_a_no_op_workload_step_needs_no_patch():
    plan = [PlanStep(name="deployment/web", kind=StepKind.WORKLOAD_REVISION,
                     target=TargetRef(kind="Deployment", name="web"), action=StepAction.NO_OP)]
    assert authz.required(_spec(application=[{"name": "web"}]), plan) == []


@pytest.mark.parametrize("kind,name", [("Deployment", "web"), ("Database", "booking-db.DATABASE_URL"),
                                       ("Secret", "a_b"), ("Service", "x" * 250)])
def test_lease_names_are_valid_object_names(kind, name):
    lease = gate.lease_name(kind, name)
    assert len(lease) <= 253 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", lease)
    assert gate.lease_name(kind, name) == lease      # stable: every Rollback computes the same


def test_job_images_exact_or_prefix():
    assert P.image_allowed("postgres:16", ["postgres:16"])
    assert P.image_allowed("postgres:16.4", ["postgres:"])
    assert not P.image_allowed("postgres:16-evil", ["postgres:16"])
    assert not P.image_allowed("evil/postgres:16", ["postgres:"])
    with pytest.raises(ReasonedError) as e:
        authz.check_images(_spec(database={"connection": {"secretRef": {"name": "db", "key": "url"}},
                                           "restoreFrom": {"persistentVolumeClaim": {"claimName": "b", "path": "x"}},
                                           "image": "evil:1"}), ("postgres:16",))
    assert e.value.reason == "ImageNotAllowed"


def test_the_seed_matrix_and_break_glass():
    assert [r.role for r in P.SEED_POLICY.rule("Critical").approvals] == ["devops-lead", "security"]
    assert [r.role for r in P.SEED_POLICY.rule("Low").approvals] == ["devops-team"]
    authz.check_break_glass(P.SEED_POLICY, _spec(severity="Critical", breakGlass=True, application=[{"name": "w"}]))
    with pytest.raises(ReasonedError) as e:
        authz.check_break_glass(P.SEED_POLICY, _spec(severity="High", breakGlass=True, application=[{"name": "w"}]))
    assert e.value.reason == "BreakGlassNotAllowed"
    assert authz.target_time(P.RollbackPolicySpec(severities=[{"severity": "High", "deadlineMinutes": 7}]),
                             "High").total_seconds() == 420


def test_a_database_without_an_image_runs_the_operators_job_image():
    spec = _spec(database={"connection": {"secretRef": {"name": "db", "key": "url"}},
                           "restoreFrom": {"persistentVolumeClaim": {"claimName": "b", "path": "x"}}})
    assert spec.database.image is None
    assert authz.job_image(spec.database) == authz.SETTINGS.job_image
    authz.check_images(spec, authz.job_images(None))            # the default allows its own image
    with pytest.raises(ReasonedError):
        authz.check_images(spec, ("registry.example/pg@sha256:",))
