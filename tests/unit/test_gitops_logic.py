"""The pure parts of the GitOps coordination: who owns a target, whether its sync is on, the
suspend and resume patches, what Git must hold, the idempotency key."""

from __future__ import annotations

from rewind import idempotency
from rewind.api.v1alpha1 import GitOpsOwner, PlanStep, RollbackSpec, SecretChange, StepKind, TargetRef
from rewind.steps import gitops


def _obj(labels=None, annotations=None) -> dict:
    return {"metadata": {"name": "web", "labels": labels or {}, "annotations": annotations or {}}}


def test_owner_of_reads_argo_and_flux_marks():
    assert gitops.owner_of(_obj(annotations={gitops.ARGO_TRACKING: "booking:apps/Deployment:prod/web"}),
                           "argocd") == ("Application", "argocd", "booking", True)
    # Argo CD's applications in any namespace: <ns>_<name>
    assert gitops.owner_of(_obj(annotations={gitops.ARGO_TRACKING: "team-a_booking:apps/Deployment:prod/web"}),
                           "argocd") == ("Application", "team-a", "booking", True)
    # The bare instance label (Helm sets it too) only counts if that Application exists.
    assert gitops.owner_of(_obj(labels={gitops.ARGO_INSTANCE: "booking"}), "argocd") == \
        ("Application", "argocd", "booking", False)
    assert gitops.owner_of(_obj(labels={"kustomize.toolkit.fluxcd.io/name": "apps",
                                        "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}), "argocd") == \
        ("Kustomization", "flux-system", "apps", True)
    assert gitops.owner_of(_obj(labels={"helm.toolkit.fluxcd.io/name": "booking",
                                        "helm.toolkit.fluxcd.io/namespace": "prod"}), "argocd") == \
        ("HelmRelease", "prod", "booking", True)
    assert gitops.owner_of(_obj(labels={"app": "web"}), "argocd") is None


def test_sync_on_and_the_patches():
    app = {"metadata": {"resourceVersion": "7"}, "spec": {"syncPolicy": {"automated": {"selfHeal": True}}}}
    assert gitops.sync_on("Application", app)
    assert gitops.suspend_patch("Application", app)[1] == {"op": "remove", "path": "/spec/syncPolicy/automated"}
    assert gitops.suspend_patch("Application", app)[0]["value"] == "7"    # guarded by resourceVersion
    off = {"metadata": {"resourceVersion": "8"}, "spec": {"syncPolicy": {}}}
    assert not gitops.sync_on("Application", off)
    assert gitops.resume_patch("Application", off, {"selfHeal": True})[1] == \
        {"op": "add", "path": "/spec/syncPolicy/automated", "value": {"selfHeal": True}}
    ks = {"metadata": {"resourceVersion": "3"}, "spec": {"interval": "1m"}}
    assert gitops.sync_on("Kustomization", ks) and gitops.sync_setting("Kustomization", ks) is False
    assert gitops.suspend_patch("Kustomization", ks)[1] == {"op": "add", "path": "/spec/suspend", "value": True}
    assert not gitops.sync_on("Kustomization", {"spec": {"suspend": True}})


def test_what_to_change_names_the_image_and_the_secret():
    owner = GitOpsOwner(kind="Application", namespace="argocd", name="booking",
                        manages=["Deployment/web", "Secret/oauth"])
    plan = [PlanStep(name="deployment/web", kind=StepKind.WORKLOAD_REVISION, target=TargetRef(kind="Deployment", name="web"),
                     action="Restore", to_revision=2, diff="-  - image: x:bad\n+  - image: x:good\n"),
            PlanStep(name="secrets", kind=StepKind.SECRETS_RESTORE, target=TargetRef(kind="Secrets", name="oauth"),
                     action="Restore", secrets=[SecretChange(name="oauth", source="oauth-rev-1", from_hash="a" * 64,
                                                             to_hash="b" * 64, keys=["id (4 bytes)"])])]
    text = gitops.what_to_change(owner, plan)
    assert "Deployment web: the pod template of revision 2 (image x:good)" in text
    assert "Secret oauth: the data restored from oauth-rev-1 (sha256 bbbbbbbbbbbb" in text


def test_the_idempotency_key():
    spec = RollbackSpec.model_validate({"severity": "High", "reason": "r", "application": [{"name": "web"}]})
    plain = {"metadata": {"name": "rb"}}
    assert idempotency.key_of(plain, spec) is None
    synced = {"metadata": {"name": "rb", "annotations": {"argocd.argoproj.io/tracking-id": "x:rewind.dev/Rollback:ns/rb"}}}
    assert idempotency.key_of(synced, spec) == "rollback/rb"
    keyed = spec.model_copy(update={"idempotency_key": "incident-42"})
    assert idempotency.key_of(plain, keyed) == "incident-42"
    assert idempotency.lease_name("incident-42") == idempotency.lease_name("incident-42")
    assert len(idempotency.lease_name("x" * 253)) <= 63
