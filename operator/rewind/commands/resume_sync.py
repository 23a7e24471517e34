"""`kubectl rewind resume-sync NAME`: puts back the automated sync of the Argo CD Applications and
Flux Kustomizations/HelmReleases that the Rollback suspended, exactly as `status.gitops` recorded
it, with the caller's own credentials. The operator never does this by itself: resuming sync
before Git holds what the rollback restored puts the broken state back. The Rollback keeps who
resumed what in its annotation `rewind.dev/sync-resumed` (JSON: owner -> user and time)."""

from __future__ import annotations

import json

from rewind.adapters.kube import JSON_PATCH, MERGE_PATCH, ROLLBACKS
from rewind.commands import common as c
from rewind.commands.common import CommandError
from rewind.steps import gitops

RESUMED_ANNOTATION = "rewind.dev/sync-resumed"


def _owner_id(r: dict) -> str:
    return f"{r['kind']}/{r['namespace']}/{r['name']}"


def run(args) -> int:
    s = c.connect(args)
    obj = c.get_rollback(s.kube, s.namespace, args.name)
    if not c.ended(obj) and not args.force:
        raise CommandError(c.FAILED, f"error: rollback {s.namespace}/{args.name} is still {c.phase(obj)}: "
                                     "resuming sync now would undo it; wait until it ends (or --force)")
    marks = json.loads((obj["metadata"].get("annotations") or {}).get(RESUMED_ANNOTATION) or "{}")
    records = [r for r in c.status(obj).get("gitops") or []
               if r.get("suspendedAt") and _owner_id(r) not in marks
               and (not args.owner or args.owner in (_owner_id(r), f"{r['kind']}/{r['name']}"))]
    if not records:
        raise CommandError(c.FAILED, f"error: rollback {s.namespace}/{args.name} holds no suspended GitOps "
                                     "owner" + (f" {args.owner}" if args.owner else "") + " to resume")
    who = c.whoami(s.kube) or "unknown"
    for r in records:
        owner = s.kube.get(gitops.RESOURCES[r["kind"]], r["namespace"], r["name"])
        what = f"{r['kind']} {r['namespace']}/{r['name']}"
        if gitops.sync_on(r["kind"], owner):
            print(f"{what}: its automated sync is already on; nothing to change")
        else:
            previous = json.loads(r["previous"])
            s.kube.patch(gitops.RESOURCES[r["kind"]], r["namespace"], r["name"],
                         gitops.resume_patch(r["kind"], owner, previous), JSON_PATCH)
            print(f"{what}: automated sync resumed as it was before the rollback ({r['previous']}); "
                  f"Git must hold: {r.get('mustChangeInGit') or 'what the rollback restored'}")
        marks[_owner_id(r)] = {"by": who, "at": c.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")}
    s.kube.patch(ROLLBACKS, s.namespace, args.name,
                 {"metadata": {"annotations": {RESUMED_ANNOTATION: json.dumps(marks, sort_keys=True)}}},
                 MERGE_PATCH)
    return c.OK


def register(sub, guarded, fill, epilog) -> None:
    p = sub.add_parser(
        "resume-sync", help="resume the GitOps sync a Rollback suspended (once Git holds what it restored)",
        description=fill("Puts back the automated sync of the Argo CD Applications and Flux "
                         "Kustomizations/HelmReleases that the Rollback NAME suspended, exactly as "
                         "recorded in its status, with your own credentials, and records it on the "
                         "Rollback (annotation rewind.dev/sync-resumed). Do it only once Git holds what "
                         "the rollback restored (status.gitops[].mustChangeInGit): the tool applies "
                         "Git's state at once."),
        epilog=epilog("For resume-sync: 0 resumed, 1 refused (still running, nothing suspended, or the "
                      "API server refused), 3 no such Rollback."))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--owner", help="only this owner: Kind/name or Kind/namespace/name")
    p.add_argument("--force", action="store_true", help="even while the rollback still runs")
    c.add_connection_flags(p)
    p.set_defaults(func=guarded(run))
