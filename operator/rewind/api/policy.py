"""Who may roll back, and under which rules: rewind.dev/v1alpha1 `RollbackPolicy` (namespaced),
`ClusterRollbackPolicy` (the cluster default) and `RollbackApproval`.

A Rollback runs under the policy of its namespace: the `RollbackPolicy` named `default` there,
else the `ClusterRollbackPolicy` named `default`, else `SEED_POLICY` (the seed's decision matrix,
with no egress allowed). The platform team writes policies; a Rollback's author cannot loosen one.

Identities (`Requester`) are never declared: the API server stamps them at create from
`request.userInfo` (the MutatingAdmissionPolicy `rewind-requester`) and keeps them immutable (the
ValidatingAdmissionPolicy of the same name). Role membership is an RBAC question: an approval by
`alice` for the role `security` counts only if the API server answers that alice may `approve`
`rollbackapprovals` with the resource name `security` in the Rollback's namespace.
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rewind.api.v1alpha1 import DNS_LABEL, DNS_SUBDOMAIN, GitOpsMode, Requester, Severity, _cel, _Model

POLICY_KIND, POLICY_PLURAL = "RollbackPolicy", "rollbackpolicies"
CLUSTER_POLICY_KIND, CLUSTER_POLICY_PLURAL = "ClusterRollbackPolicy", "clusterrollbackpolicies"
APPROVAL_KIND, APPROVAL_PLURAL = "RollbackApproval", "rollbackapprovals"
POLICY_NAME = "default"
# The admission policies (and their bindings) that stamp and guard identities.
ADMISSION_POLICY = "rewind-requester"
# The RBAC verb and resource an approver needs for a role (resource name = the role).
APPROVE_VERB = "approve"
HOSTNAME_PATTERN = r"^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"


class ApprovalRule(_Model):
    role: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL,
                      description="RBAC: approvers need verb approve on rollbackapprovals with this "
                                  "resource name, e.g. devops-lead, security, devops-team.")
    count: int = Field(1, ge=1, le=10, description="Distinct approvers with this role needed.")


class SeverityRule(_Model):
    severity: Severity
    approvals: list[ApprovalRule] = Field(default_factory=list, max_length=8,
                                          description="All of these, before any change. Empty: none.")
    deadline_minutes: int | None = Field(None, ge=1, le=1440,
                                         description="Time to restore target. Default: Critical 5, "
                                                     "High 15, Medium 30, Low 120.")
    break_glass: bool = Field(False, description="A Rollback with spec.breakGlass starts at once, "
                                                 "is loudly notified, and collects its approvals afterwards.")


class Concurrency(str, Enum):
    WAIT = "Wait"
    REFUSE = "Refuse"


class EgressRule(_Model):
    """Where the operator may connect: an address range or a host name, and optionally ports.
    Loopback, link-local (cloud metadata) and unspecified addresses pass only a `cidr` rule that
    lies inside them (0.0.0.0/0 does not open them)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("has(self.cidr) != has(self.host)", "an egress rule names either cidr or host")]})

    cidr: str | None = Field(None, max_length=64, description="e.g. 10.0.0.0/8, 127.0.0.1/32.")
    host: str | None = Field(None, max_length=253, pattern=HOSTNAME_PATTERN,
                             description="A name (checked again after it resolves): "
                                         "api.example.com, or *.example.com for its subdomains.")
    ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = Field(None, max_length=32,
                                                                    description="Default: any port.")

    @field_validator("cidr")
    @classmethod
    def _network(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.ip_network(v, strict=False)
        return v


class MissingPermission(str, Enum):
    REFUSE = "Refuse"
    WARN = "Warn"


class GitOpsPolicy(_Model):
    mode: GitOpsMode = Field(GitOpsMode.SUSPEND, description="For targets Argo CD or Flux manages, "
                             "unless the Rollback says otherwise: Suspend the owner's automated sync "
                             "(default), Refuse, or Ignore.")
    missing_permission: MissingPermission = Field(
        MissingPermission.REFUSE, description="A requester who may not patch the owner (to suspend "
        "it): Refuse the rollback (default), or Warn and roll back without suspending.")


class RollbackPolicySpec(_Model):
    severities: list[SeverityRule] = Field(
        default_factory=list, max_length=4,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["severity"]},
        description="Per severity; a severity not listed needs no approval.")
    self_approval: bool = Field(False, description="Whether a requester's own approval counts.")
    approval_valid_minutes: int = Field(60, ge=1, le=10080,
                                        description="An approval older than this no longer counts.")
    concurrency: Concurrency = Field(Concurrency.WAIT, description="A Rollback whose target another "
                                     "running Rollback holds: Wait for it (default) or Refuse.")
    egress: list[EgressRule] = Field(default_factory=list, max_length=64,
                                     description="Where checks, hooks and notifications may connect. "
                                                 "Empty: nowhere.")
    job_images: list[Annotated[str, Field(min_length=1, max_length=512)]] | None = Field(
        None, max_length=32, description="Images database Jobs may run (exact, or a prefix ending in "
                                         "'@sha256:' or ':'). Default: the operator's --job-image.")

    gitops: GitOpsPolicy = Field(default_factory=GitOpsPolicy,
                                 description="Targets that Argo CD or Flux manages.")

    def rule(self, severity: str) -> SeverityRule:
        for r in self.severities:
            if r.severity == severity:
                return r
        return SeverityRule(severity=severity)


class ApprovalDecision(str, Enum):
    APPROVE = "Approve"
    DENY = "Deny"


class RollbackApprovalSpec(_Model):
    rollback: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                          description="The Rollback (same namespace).")
    rollback_uid: str | None = Field(None, max_length=64, description="Its UID: an approval never "
                                     "carries over to a re-created Rollback of the same name.")
    role: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    decision: ApprovalDecision = ApprovalDecision.APPROVE
    comment: str | None = Field(None, max_length=1024)
    approver: Requester | None = Field(None, description="Stamped by the API server; never set by hand.")


# The seed's decision matrix (seed/production-rollback-plan.md), when no policy object exists.
SEED_POLICY = RollbackPolicySpec(severities=[
    SeverityRule(severity="Critical", approvals=[ApprovalRule(role="devops-lead"),
                                                 ApprovalRule(role="security")], break_glass=True),
    SeverityRule(severity="High", approvals=[ApprovalRule(role="devops-lead")]),
    SeverityRule(severity="Medium", approvals=[ApprovalRule(role="devops-lead")]),
    SeverityRule(severity="Low", approvals=[ApprovalRule(role="devops-team")]),
])


class _Object(BaseModel):
    model_config = ConfigDict(extra="allow")
    metadata: dict[str, Any]


class RollbackPolicy(_Object):
    spec: RollbackPolicySpec


class RollbackApproval(_Object):
    spec: RollbackApprovalSpec

def image_allowed(image: str, allowed: list[str]) -> bool:
    """An exact entry, or a prefix entry ending in ':' or '@sha256:' (e.g. 'postgres:')."""
    return any(image == a or (a.endswith((":", "@sha256:")) and image.startswith(a)) for a in allowed)
