"""`kubectl rewind leftovers` and `kubectl rewind cleanup NAME`: what database rollbacks kept
(the old live database `<db>_pre_<uid8>`, a staging database a failed run left, the pre-rollback
dump), with size and age, and their removal on a person's explicit command.

Nothing is ever removed by Rewind on its own. `cleanup` runs with the caller's own credentials:
it creates a Job (the caller needs `create jobs`) that drops exactly the databases this Rollback
named and deletes exactly the dump it recorded, never another name. It refuses while the Rollback
runs, while another unfinished Rollback in the namespace uses the same connection Secret (it may
still need them, e.g. to undo), while the Rollback is annotated `rewind.dev/keep`, and without
`--yes`.
"""

from __future__ import annotations

import datetime
import time

from rewind.adapters.kube import JOBS, MERGE_PATCH, ROLLBACKS, KubeError
from rewind.api.v1alpha1 import Rollback
from rewind.commands import common as c
from rewind.commands.common import CommandError

KEEP_ANNOTATION = "rewind.dev/keep"
CLEANED_ANNOTATION = "rewind.dev/cleaned-up"


def _items(rb: Rollback) -> list[tuple[str, str, int | None, datetime.datetime | None]]:
    """(what, name, bytes, since) of everything this Rollback kept."""
    st, out = rb.status, []
    d = st.database
    if d is None:
        return out
    finished = st.completed_at
    if d.pre_rollback_database and d.swapped_at:
        out.append(("database", d.pre_rollback_database, None, d.swapped_at))
    if d.staging_database and not d.swapped_at:
        out.append(("staging database", d.staging_database, None, finished))
    if d.pre_rollback_backup:
        started = next((r.finished_at for r in st.steps if r.name == "database/backup"), None)
        out.append(("dump", d.pre_rollback_backup, d.pre_rollback_backup_bytes, started or finished))
    return out


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_leftovers(args) -> int:
    s = c.connect(args)
    path = ROLLBACKS.path(None if args.all_namespaces else s.namespace)
    items = s.kube.request("GET", path).get("items", [])
    rows = []
    now = c.utcnow()
    for obj in sorted(items, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])):
        rb = Rollback.model_validate(obj)
        cleaned = (obj["metadata"].get("annotations") or {}).get(CLEANED_ANNOTATION)
        keep = (obj["metadata"].get("annotations") or {}).get(KEEP_ANNOTATION)
        for what, name, size, since in _items(rb):
            state = "removed" if cleaned else ("kept (rewind.dev/keep)" if keep else "kept")
            row = [obj["metadata"]["name"], what, name, _size(size),
                   c.human_duration(now - since) if since else "-", state]
            rows.append(([obj["metadata"]["namespace"]] if args.all_namespaces else []) + row)
    if not rows:
        print("No database rollback kept anything." if args.all_namespaces
              else f"No database rollback in namespace {s.namespace} kept anything.")
        return c.OK
    headers = (["NAMESPACE"] if args.all_namespaces else []) + ["ROLLBACK", "KIND", "NAME", "SIZE", "AGE", "STATE"]
    print(c.format_table(headers, rows))
    return c.OK


def _why_not(s: c.Session, obj: dict) -> str | None:
    rb = Rollback.model_validate(obj)
    meta = obj["metadata"]
    if not c.ended(obj):
        return f"rollback {meta['namespace']}/{meta['name']} has not ended ({c.phase(obj)})"
    if (meta.get("annotations") or {}).get(KEEP_ANNOTATION):
        return f"rollback {meta['name']} is annotated {KEEP_ANNOTATION}; remove the annotation first"
    if (meta.get("annotations") or {}).get(CLEANED_ANNOTATION):
        return f"what rollback {meta['name']} kept was already removed ({meta['annotations'][CLEANED_ANNOTATION]})"
    if rb.spec.database is None or not _items(rb):
        return f"rollback {meta['name']} kept nothing"
    ref = rb.spec.database.connection.secret_ref.name
    for other in s.kube.request("GET", ROLLBACKS.path(meta["namespace"])).get("items", []):
        if other["metadata"]["uid"] == meta["uid"] or c.ended(other):
            continue
        db = (other.get("spec") or {}).get("database") or {}
        if ((db.get("connection") or {}).get("secretRef") or {}).get("name") == ref:
            return (f"rollback {other['metadata']['name']} ({c.phase(other) or 'Pending'}) uses the same "
                    f"database (Secret {ref}) and has not ended: it may still need what {meta['name']} kept")
    return None


CLEANUP_SCRIPT = """\
set -eu
for db in $DROP_DATABASES; do
  psql --no-password --dbname="$DATABASE_URL" -v ON_ERROR_STOP=1 -q \\
    -c "DROP DATABASE IF EXISTS \\"$db\\"" 2> /tmp/err \\
    || { printf 'DROP DATABASE %s failed: %s' "$db" "$(head -c 300 /tmp/err)" > /dev/termination-log; exit 30; }
done
if [ -n "${DUMP_PATH:-}" ]; then rm -f -- "$DUMP_PATH" "$DUMP_PATH.partial"; fi
printf 'removed' > /dev/termination-log
"""


def run_cleanup(args) -> int:
    from rewind.steps import jobs
    from rewind.steps.database import names

    s = c.connect(args)
    obj = c.get_rollback(s.kube, s.namespace, args.name)
    why = _why_not(s, obj)
    if why:
        raise CommandError(c.FAILED, f"error: refusing to remove anything: {why}. Nothing was removed.")
    rb = Rollback.model_validate(obj)
    uid = obj["metadata"]["uid"]
    d = rb.status.database
    live = d.live_database
    # Only the names this Rollback derives from its own UID: never a name read from elsewhere.
    allowed = {names.pre_name(live, uid), names.staging_name(live, uid)}
    kept = _items(rb)
    drop = [n for what, n, _, _ in kept if what != "dump" and n in allowed]
    dump = next((n for what, n, _, _ in kept if what == "dump"), None)
    in_store = bool(dump and dump.startswith("s3://"))   # never deleted by Rewind: the store's own tools do it
    claim, dump_path = (dump.split(":", 1) if dump and not in_store else (None, None))
    if dump_path and (dump_path.startswith("/") or ".." in dump_path.split("/")):
        raise CommandError(c.FAILED, f"error: the recorded dump path {dump_path!r} is not a plain relative "
                                     "path; nothing was removed")
    print(f"rollback {args.name} kept:")
    for what, n, size, _ in kept:
        print(f"  {what} {n}" + (f" ({_size(size)})" if size else ""))
    if not args.yes:
        raise CommandError(c.FAILED, "error: add --yes to remove them (this cannot be undone, and neither "
                                     "can the rollback afterwards). Nothing was removed.")
    if in_store:
        print(f"  (the dump {dump} is in object storage: Rewind does not delete objects; remove it with "
              "the store's own tools once nothing needs it)")
    spec = rb.spec.database
    claim = claim or names.backup_to(spec, s.namespace, args.name, uid).claim
    env = [jobs.secret_env("DATABASE_URL", spec.connection.secret_ref.name, spec.connection.secret_ref.key),
           {"name": "DROP_DATABASES", "value": " ".join(drop)}]
    if dump_path:
        env.append({"name": "DUMP_PATH", "value": f"{jobs.MOUNT}/{dump_path}"})
    from rewind import authz
    job_name = names.job_name(uid, "cleanup")
    manifest = jobs.build_job(name=job_name, rollback=obj, step="cleanup", image=authz.job_image(spec),
                              script=CLEANUP_SCRIPT, env=env, claim_name=claim,
                              deadline_seconds=args.timeout_seconds, read_only_backups=False)
    try:
        s.kube.create(JOBS, s.namespace, manifest)
    except KubeError as e:
        if not (e.conflict and e.reason == "AlreadyExists"):
            raise
    print(f"job.batch/{job_name} created (as you); waiting for it")
    deadline = time.monotonic() + args.timeout_seconds + 30
    while True:
        outcome = jobs.job_outcome(s.kube, s.namespace, job_name)
        if outcome.state in ("succeeded", "failed"):
            break
        if time.monotonic() > deadline:
            raise CommandError(c.TIMEOUT, f"error: job {job_name} did not finish in time")
        time.sleep(0.5)
    if outcome.state != "succeeded":
        raise CommandError(c.FAILED, f"error: the cleanup job failed: {outcome.message}; look at it "
                                     f"(kubectl describe job {job_name} -n {s.namespace})")
    who = c.whoami(s.kube) or "kubectl rewind"
    stamp = f"by {who} at {c.utcnow():%Y-%m-%dT%H:%M:%SZ}: " + ", ".join(n for _, n, _, _ in kept)
    s.kube.patch(ROLLBACKS, s.namespace, args.name,
                 {"metadata": {"annotations": {CLEANED_ANNOTATION: stamp[:1024]}}}, MERGE_PATCH)
    jobs.delete_job(s.kube, s.namespace, job_name)
    print(f"removed: {', '.join(n for _, n, _, _ in kept)}")
    return c.OK


def register(sub, guarded, fill, epilog) -> None:
    p = sub.add_parser(
        "leftovers", help="what database rollbacks kept (old databases, staging databases, dumps), with size and age",
        description=fill("List what database rollbacks kept: the previous live database (<db>_pre_<uid8>), a "
                         "staging database a failed run left, and the pre-rollback dump (claim:path), with "
                         "size (dumps) and age. Rewind never removes them by itself: see `cleanup`."),
        epilog=epilog("For leftovers: 0 listed, 1 an API error."))
    p.add_argument("-A", "--all-namespaces", action="store_true")
    c.add_connection_flags(p)
    p.set_defaults(func=guarded(run_leftovers))

    p = sub.add_parser(
        "cleanup", help="remove what one database rollback kept (asks for --yes; refuses while it may be needed)",
        description=fill("Remove what the Rollback NAME kept: drop its <db>_pre_<uid8> and staging databases and "
                         "delete its pre-rollback dump, through a Job created with YOUR credentials (it needs "
                         "create jobs; the Job reads the connection Secret). Refuses while the Rollback runs, "
                         "while another unfinished Rollback uses the same database, while it is annotated "
                         "rewind.dev/keep, and without --yes. Marks the Rollback rewind.dev/cleaned-up."),
        epilog=epilog("For cleanup: 0 removed, 1 refused or failed (nothing or not everything removed), "
                      "3 no such Rollback, 4 timeout."))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--yes", action="store_true", help="really remove them")
    p.add_argument("--timeout", dest="timeout_seconds", type=lambda v: int(c.parse_timeout(v)), default=300,
                   help="how long the Job may take (default 5m)")
    c.add_connection_flags(p)
    p.set_defaults(func=guarded(run_cleanup))
