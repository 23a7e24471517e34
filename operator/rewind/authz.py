"""Who may roll back: the requester's identity (stamped by the API server), the requester's own
rights (SubjectAccessReview before any write), the policy (approvals, break-glass, one rollback
per target, egress, Job images).

Rewind never lends its rights: before it writes anything, it asks the API server whether the
requester (user, UID and groups as the API server authenticated them at create) could do each of
the plan's writes himself. The operator's own RBAC is the ceiling, the requester's the limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rewind.adapters.kube import Kube, KubeError, Resource
from rewind.api import policy as P
from rewind.api.errors import ReasonedError
from rewind.api.v1alpha1 import GROUP, VERSION, PlanStep, Requester, RollbackSpec, StepKind

log = logging.getLogger(__name__)

POLICIES = Resource(GROUP, VERSION, P.POLICY_PLURAL)
CLUSTER_POLICIES = Resource(GROUP, VERSION, P.CLUSTER_POLICY_PLURAL)
APPROVALS = Resource(GROUP, VERSION, P.APPROVAL_PLURAL)
ADMISSION = [
    (Resource("admissionregistration.k8s.io", "v1", "mutatingadmissionpolicies"), P.ADMISSION_POLICY),
    (Resource("admissionregistration.k8s.io", "v1", "mutatingadmissionpolicybindings"), P.ADMISSION_POLICY),
    (Resource("admissionregistration.k8s.io", "v1", "mutatingadmissionpolicies"), "rewind-approver"),
    (Resource("admissionregistration.k8s.io", "v1", "mutatingadmissionpolicybindings"), "rewind-approver"),
    (Resource("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies"), P.ADMISSION_POLICY),
    (Resource("admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings"), P.ADMISSION_POLICY),
]
IDENTITY_UNVERIFIED = "IdentityUnverified"
REQUESTER_NOT_ALLOWED = "RequesterNotAllowed"
IMAGE_NOT_ALLOWED = "ImageNotAllowed"


@dataclass
class Settings:
    """The operator's own settings (`rewind run` arguments)."""

    job_image: str = "postgres:16"
    tool_image: str = "rewind:0.1.0"


SETTINGS = Settings()


def job_images(policy) -> tuple[str, ...]:
    policy = policy or P.SEED_POLICY
    return tuple(policy.job_images) if policy.job_images else (SETTINGS.job_image,)


# --- the policy ------------------------------------------------------------------------------


def load_policy(kube: Kube, namespace: str) -> tuple[str, P.RollbackPolicySpec]:
    """The RollbackPolicy `default` of the namespace, else the ClusterRollbackPolicy `default`,
    else the seed's matrix (approvals by role, no egress). A policy the operator may not read
    counts as absent only when it is absent: a 403 is an error (fail closed, never open)."""
    for res, ns, what in ((POLICIES, namespace, f"RollbackPolicy {namespace}/{P.POLICY_NAME}"),
                          (CLUSTER_POLICIES, None, f"ClusterRollbackPolicy {P.POLICY_NAME}")):
        try:
            obj = kube.get(res, ns, P.POLICY_NAME)
        except KubeError as e:
            if e.not_found:
                continue
            if e.transient:
                raise
            raise ReasonedError("PolicyUnreadable", f"The operator cannot read {what} ({e.status} "
                                f"{e.reason}); no Rollback runs until it can.") from None
        return what, P.RollbackPolicySpec.model_validate(obj.get("spec") or {})
    return "the seed's decision matrix (no RollbackPolicy or ClusterRollbackPolicy named default)", P.SEED_POLICY


# --- identity --------------------------------------------------------------------------------


def check_identity(kube: Kube, spec: RollbackSpec) -> Requester:
    """The requester, as the API server stamped it; refuses (fail closed) when the admission
    policies that stamp and guard it are not installed, or the Rollback carries no stamp."""
    missing = []
    for res, name in ADMISSION:
        try:
            kube.get(res, None, name)
        except KubeError as e:
            if e.transient:
                raise
            if not e.not_found:
                raise ReasonedError(IDENTITY_UNVERIFIED, f"The operator cannot read the admission policy "
                                    f"{res.plural}/{name} ({e.status} {e.reason}), so it cannot trust "
                                    "spec.requester; nothing was changed.") from None
            missing.append(f"{res.plural}/{name}")
    if missing:
        raise ReasonedError(IDENTITY_UNVERIFIED, "The admission policies that record who created a Rollback "
                            f"are not installed ({', '.join(missing)} missing), so spec.requester cannot "
                            "be trusted and no Rollback runs; nothing was changed. Install them "
                            "(kubectl apply -f manifests/admission.yaml, or the chart with "
                            "admissionPolicies.install=true), then create the Rollback again.")
    if spec.requester is None or not spec.requester.username:
        raise ReasonedError(IDENTITY_UNVERIFIED, "The Rollback has no spec.requester stamped by the API "
                            "server (it was created before the admission policies were installed); "
                            "nothing was changed. Create it again.")
    return spec.requester


# --- the requester's own rights ----------------------------------------------------------------


@dataclass(frozen=True)
class Permission:
    verb: str
    group: str
    resource: str
    name: str | None
    why: str
    subresource: str = ""
    namespace: str | None = None    # None: the Rollback's own

    def __str__(self) -> str:
        res = self.resource + (f"/{self.subresource}" if self.subresource else "")
        res = f"{res}.{self.group}" if self.group else res
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.verb} {res}{'/' + self.name if self.name else ''}{where} ({self.why})"


_WORKLOAD_PLURALS = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}


def consumers(step: PlanStep) -> list[tuple[str, str]]:
    """The workloads a ConsumersRestart step restarts: (kind, name), from its target "Kind/name,..."."""
    out = []
    for item in step.target.name.split(","):
        wkind, _, wname = item.strip().partition("/")
        if wname:
            out.append((wkind, wname))
    return out


def required(spec: RollbackSpec, plan: list[PlanStep]) -> list[Permission]:
    """Every action the rollback would take, as the requester would need it to do it himself."""
    perms: list[Permission] = []
    add = perms.append
    for step in plan:
        kind = StepKind(step.kind)
        if kind == StepKind.WORKLOAD_REVISION and step.action != "NoOp":
            add(Permission("patch", "apps", _WORKLOAD_PLURALS[step.target.kind], step.target.name,
                           f"step {step.name}"))
        elif kind == StepKind.CONSUMERS_RESTART:
            for wkind, wname in consumers(step):
                add(Permission("patch", "apps", _WORKLOAD_PLURALS[wkind], wname, f"step {step.name}"))
        elif kind == StepKind.GITOPS_SUSPEND:
            from rewind.steps.gitops import RESOURCES
            res = RESOURCES[step.owner.kind]
            add(Permission("patch", res.group, res.plural, step.owner.name,
                           f"suspend its sync, step {step.name}", namespace=step.owner.namespace))
        elif kind == StepKind.SECRETS_RESTORE:
            for change in step.secrets:
                add(Permission("update", "", "secrets", change.name, f"step {step.name}"))
                add(Permission("get", "", "secrets", change.name, f"step {step.name}"))
    for t in spec.secrets or []:
        if t.from_secret:
            add(Permission("get", "", "secrets", t.from_secret, f"source of secret {t.name}"))
    for c in spec.certificates or []:
        if c.from_secret:
            add(Permission("get", "", "secrets", c.from_secret, f"source of certificate {c.secret_name}"))
    if spec.database is not None:
        add(Permission("create", "batch", "jobs", None, "the database steps run Jobs"))
        add(Permission("get", "", "secrets", spec.database.connection.secret_ref.name,
                       "the database connection"))
        d = spec.database
        for where, obj in (("the backup in object storage", d.restore_from.s3),
                           ("the pre-rollback dump's object storage", d.backup_to.s3 if d.backup_to else None)):
            if obj is not None:
                add(Permission("get", "", "secrets", obj.credentials_secret_ref, f"credentials for {where}"))
                if obj.ca_bundle:
                    add(Permission("get", "", "configmaps", obj.ca_bundle.name, f"CA bundle for {where}"))
    for check in (spec.verification.sql or []) if spec.verification else []:
        if check.connection is not None:
            add(Permission("get", "", "secrets", check.connection.secret_ref.name, f"SQL check {check.name}"))
    m = spec.maintenance
    if m is not None:
        if m.service is not None:
            add(Permission("patch", "", "services", m.service.name, "maintenance switch"))
        if m.http is not None:
            for call in (m.http.enter, m.http.exit):
                if call.url_secret_ref is not None:
                    add(Permission("get", "", "secrets", call.url_secret_ref.name, "maintenance hook URL"))
    mon = spec.monitoring
    if mon is not None:
        for w in mon.scale_down or []:
            add(Permission("patch", "apps", _WORKLOAD_PLURALS[w.kind], w.name, "monitoring scale-down",
                           subresource="scale"))
        if mon.alertmanager is not None and mon.alertmanager.credentials_secret_ref:
            add(Permission("get", "", "secrets", mon.alertmanager.credentials_secret_ref,
                           "Alertmanager credentials"))
    for n in spec.notifications or []:
        refs = []
        if n.slack is not None:
            refs.append(n.slack.webhook_secret_ref.name)
        if n.webhook is not None:
            refs.append(n.webhook.url_secret_ref.name)
        if n.email is not None:
            if n.email.smtp.credentials_secret_ref:
                refs.append(n.email.smtp.credentials_secret_ref)
            if n.email.smtp.ca_secret_ref is not None:
                refs.append(n.email.smtp.ca_secret_ref.name)
        for ref in refs:
            add(Permission("get", "", "secrets", ref, f"notification {n.name}"))
    seen, out = set(), []
    for p in perms:
        key = (p.verb, p.group, p.resource, p.subresource, p.name, p.namespace)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def allowed(kube: Kube, who: Requester, namespace: str, verb: str, group: str, resource: str,
            name: str | None = None, subresource: str = "") -> bool:
    """SubjectAccessReview: could `who` do this himself?"""
    attrs = {"namespace": namespace, "verb": verb, "group": group, "resource": resource}
    if name:
        attrs["name"] = name
    if subresource:
        attrs["subresource"] = subresource
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": who.username, "groups": who.groups or [], "resourceAttributes": attrs}}
    if who.uid:
        review["spec"]["uid"] = who.uid
    try:
        out = kube.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=review)
    except KubeError as e:
        if e.transient:
            raise
        raise ReasonedError(REQUESTER_NOT_ALLOWED, "The operator cannot ask the API server what the "
                            f"requester may do (SubjectAccessReview: {e.status} {e.reason}); nothing "
                            "was changed.") from None
    return bool((out.get("status") or {}).get("allowed"))


def check_rights(kube: Kube, who: Requester, namespace: str, perms: list[Permission]) -> None:
    denied = [p for p in perms if not allowed(kube, who, p.namespace or namespace, p.verb, p.group,
                                              p.resource, p.name, p.subresource)]
    if denied:
        raise ReasonedError(REQUESTER_NOT_ALLOWED, f"{who.username} may not do what this rollback would "
                            f"do in namespace {namespace}, and Rewind acts only within the requester's "
                            f"own rights; missing: {'; '.join(str(p) for p in denied)}. Nothing was "
                            "changed.")


def job_image(database) -> str:
    """The image of a database Job: the spec's, else the operator's --job-image."""
    return database.image or SETTINGS.job_image


def check_images(spec: RollbackSpec, images: tuple[str, ...]) -> None:
    if spec.database is not None and not P.image_allowed(job_image(spec.database), list(images)):
        raise ReasonedError(IMAGE_NOT_ALLOWED, f"spec.database.image {job_image(spec.database)} is not one of "
                            f"the images the policy allows database Jobs to run ({', '.join(images)}); "
                            "nothing was changed.")


def target_time(policy, severity: str):
    """The time to restore target: the policy's, else the seed's."""
    import datetime

    from rewind import plan

    minutes = (policy or P.SEED_POLICY).rule(severity).deadline_minutes
    return datetime.timedelta(minutes=minutes) if minutes else plan.DEADLINES[severity]


def check_break_glass(policy, spec: RollbackSpec) -> None:
    rule = (policy or P.SEED_POLICY).rule(spec.severity)
    if spec.break_glass and rule.approvals and not rule.break_glass:
        raise ReasonedError("BreakGlassNotAllowed", f"spec.breakGlass is set, but the policy does not "
                            f"allow break-glass for a {spec.severity} rollback; nothing was changed. "
                            "Create it without breakGlass and ask for the approvals "
                            f"({', '.join(r.role for r in rule.approvals)}).")
