"""The database's part of the plan, and the preflight that must pass before any of it runs: a
rollback that cannot finish (no Secret, a server that refuses us, a role that may not rename or
may not restore the owners, settings and grants, a staging name someone else took) is refused
while nothing has changed yet."""

from __future__ import annotations

from rewind import egress
from rewind.adapters import db, secrets
from rewind.adapters.kube import CONFIG_MAPS, Kube, KubeError
from rewind.api import conditions as C
from rewind.api.v1alpha1 import DatabaseSpec, PlanStep, S3Object, StepAction, StepKind, TargetRef
from rewind.context import Found, Request, StepFailed
from rewind.steps.database import connection
from rewind.steps.database.connection import MAINTENANCE_DB
from rewind.steps.database.names import is_kept, job_name, pre_name, staging_comment, staging_name


def preflight(kube: Kube, req: Request) -> Found:
    """The database's steps, when the spec has a database."""
    if not req.spec.database:
        return Found()
    return Found(steps=resolve(kube, req.namespace, req.uid, req.spec.database, egress.rules_of(req.policy)))


def resolve(kube: Kube, ns: str, uid: str, spec: DatabaseSpec, rules) -> list[PlanStep]:
    """Preflight: the Secret, the URL, the server (where the policy lets the operator connect),
    the names. Reads only; raises StepFailed (or EgressDenied, before any connection)."""
    target = connection.target(kube, ns, spec)
    ref = spec.connection.secret_ref
    if not target.host.startswith("/"):       # a Unix socket is not egress
        egress.resolve(target.host, int(target.port or 5432), rules, secret=f"Secret {ns}/{ref.name} key {ref.key}")
    for where, obj in (("restoreFrom.s3", spec.restore_from.s3),
                       ("backupTo.s3", spec.backup_to.s3 if spec.backup_to else None)):
        if obj is not None:
            _object_store(kube, ns, where, obj, rules)
    live = target.dbname
    with db.connect(target) as conn:
        # The restored database is the live one's twin: created like it, objects owned as in
        # the backup, settings and grants given back. A role that cannot do all of it would leave
        # the application locked out of its own tables after the swap.
        needs = db.missing_powers(conn)
    if needs:
        raise StepFailed(C.FORBIDDEN, f"role {target.user!r} cannot restore {live!r} as it is (its "
                         f"owners, settings and grants): it needs {'; '.join(needs)}. Connect as a "
                         "superuser, or as the owner of the database and of everything in it")
    with db.connect(target, MAINTENANCE_DB) as conn:
        db.check_ledger(conn)   # reads only: the restore step creates it
        if not db.can_swap(conn, live):
            raise StepFailed(C.FORBIDDEN, f"role {target.user!r} may not rename database {live!r}: "
                                          "it needs CREATEDB and to own the database (or be superuser)")
        kept = spec.restore_from.kept_database
        names = [(pre_name(live, uid), "pre-rollback")] + ([] if kept else [(staging_name(live, uid), "staging")])
        for name, what in names:
            exists, comment = db.database_comment(conn, name)
            if exists and comment != staging_comment(uid):
                raise StepFailed("StagingNameTaken", f"the {what} database name {name!r} is already "
                                                     "taken by a database Rewind did not create")
        if kept:
            exists, comment = db.database_comment(conn, kept.name)
            if not exists:
                raise StepFailed(C.KEPT_DATABASE_GONE, f"the kept database {kept.name!r} is gone (dropped "
                                 "by `kubectl rewind cleanup` or by hand); there is nothing to swap back in")
            if not is_kept(comment, live):
                raise StepFailed(C.KEPT_DATABASE_GONE, f"database {kept.name!r} is not one a rollback of "
                                 f"{live!r} kept aside (its comment is not Rewind's); it is not swapped in")
    target_ref = TargetRef(kind="Database", name=live)
    steps = [] if kept else [PlanStep(name="database/check", kind=StepKind.DATABASE_CHECK, target=target_ref,
                                      action=StepAction.RESTORE, job_name=job_name(uid, "check"))]
    if spec.pre_rollback_backup:
        steps.append(PlanStep(name="database/backup", kind=StepKind.DATABASE_BACKUP, target=target_ref,
                              action=StepAction.RESTORE, job_name=job_name(uid, "backup")))
    if not kept:
        steps.append(PlanStep(name="database/restore", kind=StepKind.DATABASE_RESTORE, target=target_ref,
                              action=StepAction.RESTORE, job_name=job_name(uid, "restore")))
    if spec.verify:
        steps.append(PlanStep(name="database/verify", kind=StepKind.DATABASE_VERIFY,
                              target=target_ref, action=StepAction.RESTORE))
    for action in [] if kept else spec.after_restore or []:   # the kept database goes back as it is
        steps.append(PlanStep(name=f"database/action/{action.name}", kind=StepKind.DATABASE_ACTION,
                              target=target_ref, action=StepAction.RESTORE, spec_key=action.name))
    steps.append(PlanStep(name="database/swap", kind=StepKind.DATABASE_SWAP, target=target_ref,
                          action=StepAction.RESTORE))
    return steps


def _object_store(kube: Kube, ns: str, where: str, obj: S3Object, rules) -> None:
    """Preflight of a backup in object storage, reading only: the policy lets the Jobs reach the
    endpoint, the credentials Secret has both keys, the CA bundle is there. The object itself is
    looked at by the check Job (the operator never holds the store's credentials' use)."""
    host, _, port = obj.endpoint.removeprefix("https://").rstrip("/").partition(":")
    egress.resolve(host, int(port or 443), rules)
    what = f"the {where} credentials Secret"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not secrets.read_key(kube, ns, obj.credentials_secret_ref, key, what):
            raise StepFailed("InvalidSecret", f"{what} {ns}/{obj.credentials_secret_ref} key {key!r} is empty")
    if obj.ca_bundle:
        try:
            cm = kube.get(CONFIG_MAPS, ns, obj.ca_bundle.name)
        except KubeError as e:
            if not e.not_found:
                raise
            raise StepFailed("CaBundleNotFound", f"the {where} CA bundle ConfigMap {ns}/{obj.ca_bundle.name} "
                                                 "does not exist; nothing was changed") from None
        if not (cm.get("data") or {}).get(obj.ca_bundle.key, "").strip():
            raise StepFailed("CaBundleNotFound", f"the {where} CA bundle ConfigMap {ns}/{obj.ca_bundle.name} "
                                                 f"has no key {obj.ca_bundle.key!r}; nothing was changed")
