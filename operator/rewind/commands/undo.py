"""`kubectl rewind undo NAME`: a new Rollback that puts back what NAME changed, with the caller's
own credentials, through the same operator path (identity stamping, SubjectAccessReview,
approvals per policy, leases).

What NAME changed is in its status, recorded before each change: each workload's template before
(`fromTemplateHash`, held by revision `currentRevision`) and after (`templateHash`); each Secret's
data before (`fromHash`, kept in its history by the step before the write) and after (`toHash`);
the database kept aside (`status.database.preRollbackDatabase`). The undo targets are built from
that, planned like `kubectl rewind plan` (a server-side dry run, then every preflight), and
compared with it: a target whose current state is not what NAME left (someone changed it since),
or whose source no longer holds what NAME found, refuses the undo by name and nothing is created.
"""

from __future__ import annotations

from rewind.adapters.kube import MERGE_PATCH, ROLLBACKS
from rewind.api.v1alpha1 import GROUP, KIND, VERSION, Rollback, StepAction, StepKind
from rewind.commands import common as c, planning
from rewind.commands.common import CommandError
from rewind.history import HASH_ANNOTATION, history, revision_of
from rewind.incident import UNDONE_BY
from rewind.steps.database import names

# What a run changes, and so what an undo puts back; hooks (maintenance, monitoring, GitOps
# suspension) are undone by the run itself, or by a person (resume-sync).
UNDOABLE = {StepKind.WORKLOAD_REVISION.value, StepKind.SECRETS_RESTORE.value, StepKind.DATABASE_SWAP.value}


def changed_steps(rb: Rollback) -> list:
    """The plan steps that changed something: a Restore step that succeeded. A step that failed
    mid-way put back what it had written (Secrets: all or none; the swap: one transaction) or
    left a workload whose rollout failed, which the template comparison below finds."""
    state = {r.name: r.state for r in rb.status.steps}
    return [s for s in rb.status.plan if s.kind in UNDOABLE and s.action == StepAction.RESTORE.value
            and state.get(s.name) == "Succeeded"]


def build(s: c.Session, obj: dict, name: str, severity: str | None, reason: str | None) -> tuple[dict, dict]:
    """The undo Rollback and what its plan must say: {step name: expectations}."""
    rb = Rollback.model_validate(obj)
    ns = obj["metadata"]["namespace"]
    steps = changed_steps(rb)
    if not steps:
        raise CommandError(c.FAILED, f"error: rollback {ns}/{rb.metadata['name']} changed nothing that can "
                                     "be put back (no workload, Secret or database step succeeded)")
    orig = rb.spec
    spec: dict = {"severity": severity or orig.severity,
                  "reason": f"undo of {rb.metadata['name']}: {reason or orig.reason}"[:1024],
                  "undoOf": {"name": rb.metadata["name"], "uid": rb.metadata["uid"]}}
    expect: dict = {}
    for step in steps:
        if step.kind == StepKind.WORKLOAD_REVISION.value:
            spec.setdefault("application", []).append(
                {"kind": step.target.kind, "name": step.target.name, "toRevision": step.current_revision})
            expect[step.name] = step
        elif step.kind == StepKind.SECRETS_RESTORE.value:
            for change in step.secrets:
                if change.from_hash == change.to_hash:
                    continue
                kept = [e for e in history(s.kube, ns, change.name)
                        if e["metadata"]["annotations"].get(HASH_ANNOTATION) == change.from_hash]
                if not kept:
                    raise CommandError(c.FAILED, f"error: Secret {change.name}: no entry of its history holds "
                                                 "its data from before the rollback any more (pruned); "
                                                 "nothing was created")
                spec.setdefault("secrets", []).append({"name": change.name, "toRevision": revision_of(kept[-1])})
                expect[f"secret/{change.name}"] = change
            if orig.restart_consumers:
                spec["restartConsumers"] = True
        elif step.kind == StepKind.DATABASE_SWAP.value:
            spec["database"] = _database(rb, name)
    for part in ("maintenance", "monitoring", "notifications", "gitops"):
        value = getattr(orig, part)
        if value:
            spec[part] = value.dump() if hasattr(value, "dump") else [v.dump() for v in value]
    doc = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
           "metadata": {"name": name, "namespace": ns, "labels": {"rewind.dev/undo-of": rb.metadata["name"][:63]}},
           "spec": spec}
    return doc, expect


def _database(rb: Rollback, name: str) -> dict:
    d, st = rb.spec.database, rb.status.database
    if not st or not st.pre_rollback_database:
        raise CommandError(c.FAILED, "error: the rollback swapped the database but recorded no kept "
                                     "database; nothing was created")
    ns, uid = rb.metadata["namespace"], rb.metadata["uid"]
    place = names.backup_to(d, ns, rb.metadata["name"], uid)
    undo_key = f"rewind/{ns}/{name}/pre-undo.dump"
    backup_to = {"s3": place.s3.model_copy(update={"key": undo_key}).dump()} if place.s3 else \
        {"claimName": place.claim, "path": undo_key}
    spec = {"connection": d.connection.dump(),
            "restoreFrom": {"keptDatabase": {"name": st.pre_rollback_database}},
            "preRollbackBackup": d.pre_rollback_backup,
            # The live database now (what the rollback restored, and anything written since) is
            # dumped first, and kept aside by the swap as <db>_pre_<undo uid8>: nothing is lost.
            "backupTo": backup_to,
            "terminateConnections": d.terminate_connections, "jobDeadlineSeconds": d.job_deadline_seconds}
    for key, value in (("waiveBackupReason", d.waive_backup_reason), ("image", d.image),
                       ("verify", d.verify.dump() if d.verify else None)):
        if value is not None:
            spec[key] = value
    return spec


def mismatches(planned: planning.Planned, expect: dict) -> list[str]:
    """Targets that are no longer as the rollback left them, or whose source no longer holds what
    the rollback found: each named, with the hashes."""
    problems = []
    by_name = {st.name: st for st in planned.steps}
    for key, was in expect.items():
        if key.startswith("secret/"):
            change = next((sc for st in planned.steps for sc in st.secrets if sc.name == was.name), None)
            if change is None:
                problems.append(f"Secret {was.name}: not in the undo's plan")
            elif change.from_hash != was.to_hash:
                problems.append(f"Secret {was.name} changed since the rollback: its data is "
                                f"{change.from_hash[:19]}, not the {was.to_hash[:19]} the rollback wrote")
            elif change.to_hash != was.from_hash:
                problems.append(f"Secret {was.name}: {change.source} does not hold its data from before "
                                f"the rollback ({was.from_hash[:19]})")
            continue
        step = by_name.get(key)
        what = f"{was.target.kind} {was.target.name}"
        if step is None:
            problems.append(f"{what}: not in the undo's plan")
        elif step.from_template_hash != was.template_hash:
            problems.append(f"{what} changed since the rollback: its pod template is "
                            f"{(step.from_template_hash or '?')[:12]}, not the {was.template_hash[:12]} "
                            "the rollback restored")
        elif step.template_hash != was.from_template_hash:
            problems.append(f"{what}: revision {was.current_revision} no longer holds the template it had "
                            f"before the rollback ({was.from_template_hash[:12]})")
    return problems


def run_undo(args) -> int:
    s = c.connect(args)
    obj = c.get_rollback(s.kube, s.namespace, args.name)
    phase = c.phase(obj)
    if phase not in ("Succeeded", "Failed", "Interrupted"):
        raise CommandError(c.FAILED, f"error: rollback {s.namespace}/{args.name} is {phase or 'Pending'}: "
                                     "only a rollback that ended (Succeeded, or Failed after changing "
                                     "something) can be undone")
    undone_by = (obj["metadata"].get("annotations") or {}).get(UNDONE_BY)
    if undone_by:
        raise CommandError(c.FAILED, f"error: rollback {s.namespace}/{args.name} was already undone by "
                                     f"{undone_by}; undo that one instead, or delete the annotation "
                                     f"{UNDONE_BY}")
    name = args.undo_name or f"{args.name[:248]}-undo"
    doc, expect = build(s, obj, name, args.severity, args.reason)
    planned = planning.evaluate(s, doc)
    if planned.server_error is not None:
        return planning._refused_by_server(args, planned.namespace, planned.name, planned.server_error)
    if planned.would_run:
        planned.problems += mismatches(planned, expect)
    hint = (f"rerun without --dry-run to create {name}." if args.dry_run else f"creating {name}.")
    code = planning._report(args, planned, hint)
    if code != c.OK or args.dry_run:
        return code
    created = s.kube.create(ROLLBACKS, s.namespace, doc)
    s.kube.patch(ROLLBACKS, s.namespace, args.name, {"metadata": {"annotations": {UNDONE_BY: name}}},
                 MERGE_PATCH)
    print(f"rollback.{GROUP}/{created['metadata']['name']} created (undo of {args.name}, uid "
          f"{created['metadata']['uid']}); {args.name} is annotated {UNDONE_BY}={name}. "
          f"Follow it with `kubectl rewind watch {name}`.")
    return c.OK


def register(sub, guarded, fill, epilog) -> None:
    p = sub.add_parser(
        "undo", help="create the Rollback that puts back what a finished Rollback changed",
        description=fill("Undo the Rollback NAME: builds a new Rollback (NAME-undo, or --name) whose targets "
                         "put back what NAME changed, as its status recorded: each workload to the revision "
                         "holding its template from before, each Secret to the history entry holding its "
                         "data from before, the database by swapping the kept <db>_pre_<uid8> back in (the "
                         "current one dumped and kept aside). Plans it first like `kubectl rewind plan`, "
                         "refuses, naming it, a target changed since NAME, then creates it with your "
                         "credentials (approvals as the policy says) and annotates NAME "
                         f"{UNDONE_BY}."),
        epilog=epilog("For undo: 0 created (with --dry-run: it would run), 1 refused (not ended, nothing "
                      "to undo, a target changed since, a preflight), 3 no such Rollback."))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--name", dest="undo_name", help="the undo Rollback's name (default NAME-undo)")
    p.add_argument("--severity", choices=("Critical", "High", "Medium", "Low"),
                   help="default: NAME's severity")
    p.add_argument("--reason", help="why (default: NAME's reason), after 'undo of NAME: '")
    p.add_argument("--dry-run", action="store_true", help="plan it and create nothing")
    p.add_argument("-o", "--output", choices=("yaml", "json"), help="print the plan as data")
    c.add_connection_flags(p)
    p.set_defaults(func=guarded(run_undo))
