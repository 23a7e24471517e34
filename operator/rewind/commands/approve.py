"""`kubectl rewind approve | deny NAME --role ROLE`: a RollbackApproval, created with the caller's
own credentials. The API server stamps who created it (admission policy); the operator counts it
only if that person may `approve` `rollbackapprovals` named ROLE in the namespace (RBAC)."""

from __future__ import annotations

from rewind.adapters.kube import Resource
from rewind.api import policy as P
from rewind.api.v1alpha1 import GROUP, VERSION
from rewind.commands import common as c
from rewind.commands.common import CommandError

APPROVALS = Resource(GROUP, VERSION, P.APPROVAL_PLURAL)


def _may_approve(s: c.Session, role: str) -> bool | None:
    """SelfSubjectAccessReview: may the caller approve for `role` here? None if it cannot ask."""
    try:
        return s.kube.can_i(s.namespace, P.APPROVE_VERB, APPROVALS, name=role)
    except Exception:  # noqa: BLE001 - the operator's own check is what counts
        return None


def _decide(args, decision: str) -> int:
    s = c.connect(args)
    obj = c.get_rollback(s.kube, s.namespace, args.name)
    if c.ended(obj):
        raise CommandError(c.FAILED, f"error: rollback {s.namespace}/{args.name} already ended "
                                     f"({c.phase(obj)}); there is nothing to {decision.lower()}")
    if _may_approve(s, args.role) is False:
        raise CommandError(c.FAILED, f"error: you may not {decision.lower()} for role {args.role} in "
                                     f"namespace {s.namespace} (RBAC: verb approve on "
                                     f"{P.APPROVAL_PLURAL}.{GROUP} named {args.role}); the operator "
                                     "would not count it. Nothing was created.")
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": P.APPROVAL_KIND,
            "metadata": {"generateName": f"{args.name[:200]}-{args.role}-",
                         "labels": {"rewind.dev/rollback": args.name[:63]}},
            "spec": {"rollback": args.name, "rollbackUid": obj["metadata"]["uid"], "role": args.role,
                     "decision": decision}}
    if args.comment:
        body["spec"]["comment"] = args.comment
    created = s.kube.create(APPROVALS, s.namespace, body)
    who = ((created.get("spec") or {}).get("approver") or {}).get("username", "?")
    print(f"{P.APPROVAL_PLURAL[:-1]}.{GROUP}/{created['metadata']['name']} created: {decision} of "
          f"rollback {args.name} for role {args.role}, by {who}")
    return c.OK


def run_approve(args) -> int:
    return _decide(args, P.ApprovalDecision.APPROVE.value)


def run_deny(args) -> int:
    return _decide(args, P.ApprovalDecision.DENY.value)


def register(sub, guarded, fill, epilog) -> None:
    for verb, func, what in (("approve", run_approve, "Approve"), ("deny", run_deny, "Deny")):
        p = sub.add_parser(
            verb, help=f"{what.lower()} a Rollback for one role (a RollbackApproval, stamped with your identity)",
            description=fill(f"{what} the Rollback NAME for ROLE: creates a RollbackApproval with your own "
                             "credentials; the API server records who you are. The operator counts it only "
                             "if you hold the role (RBAC: verb approve on rollbackapprovals named ROLE in "
                             "the namespace) and, unless the policy allows it, you did not request the "
                             "rollback yourself." + (" A denial by a role holder ends the rollback "
                                                     "before any change." if verb == "deny" else "")),
            epilog=epilog(f"For {verb}: 0 recorded, 1 refused (ended, not your role, or the API "
                          "server refused), 3 no such Rollback."))
        p.add_argument("name", metavar="NAME")
        p.add_argument("--role", required=True, help="the approval role, e.g. devops-lead, security")
        p.add_argument("--comment", help="why (goes into the report)")
        c.add_connection_flags(p)
        p.set_defaults(func=guarded(func))

