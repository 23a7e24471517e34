"""Check the backup before anything changes: a missing, empty or foreign file must stop the
rollback while production is still untouched. Its SHA-256 goes to status so a person can tell
later which file was restored, and its optional manifest gives verify the row counts to expect.

Foreign means more than another database's name inside the dump: a dump of a different database
that happens to have the same name would pass that. The check Job lists the tables the dump
creates (names only; a custom-format archive's table of contents, or a plain-SQL dump's CREATE
TABLE statements), and this step compares them, and the manifest's tables, with the live
database's. A backup that does not match is refused unless the spec says why it is the right one
anyway (`acceptMismatchReason`, e.g. a migration added a table since).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

from rewind.adapters import db
from rewind.api import conditions as C
from rewind.api.v1alpha1 import PlanStep, StepRecord
from rewind.context import Context, StepFailed, Wait
from rewind.steps import jobs
from rewind.steps.database import connection, job, names, state

# The check script's exit codes (scripts/check.sh).
# 14-16: `rewind s3 get` (adapters/s3.py) could not fetch the object, or check its checksum.
EXIT_REASONS = {10: "BackupNotFound", 11: "BackupEmpty", 12: "BackupCorrupt", 14: "BackupAccessDenied",
                15: "BackupUnreachable", 16: "BackupChecksumMissing"}
# How many differing table names a message shows.
SHOWN = 5
FORMATS = {"custom": "a pg_dump archive", "plain": "a plain-SQL pg_dump"}


def advance_check(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = state.spec(ctx)
    place = names.source(spec)
    ref = place.ref
    ctx.begin(step, rec, f"Checking the backup {ref}.", C.DATABASE_RESTORED)
    outcome = job.run(ctx, step, rec, lambda seconds: job.build(
        ctx, step, place=place, script=job.CHECK_SCRIPT, seconds=seconds, read_only=True, extra_env={}),
        f"{'fetching and ' if place.s3 else ''}checking {ref}")
    if isinstance(outcome, Wait):
        return outcome
    if outcome.state == "failed":
        raise StepFailed(EXIT_REASONS.get(outcome.exit_code, "BackupCheckFailed"),
                         f"{outcome.message or 'the backup check Job failed'}; nothing was changed")
    result = outcome.result()
    if "sha256" not in result or not isinstance(result.get("tables"), dict):
        raise StepFailed("BackupCheckFailed", "the backup check Job reported no result; nothing was changed")
    live = step.target.name
    counts = _manifest_counts(result.get("manifest") or "", ref)
    with db.connect(connection.target(ctx.kube, ctx.namespace, spec), live) as conn:
        live_tables = db.table_names(conn)
    differences = mismatch(result, live, live_tables, counts)
    what = FORMATS.get(result.get("format"), "a dump")
    message = (f"The backup {ref} is {what} of {live} ({result.get('bytes')} bytes, "
               f"sha256 {str(result.get('sha256'))[:12]}..., {result['tables'].get('count')} tables).")
    if differences:
        found = f"the backup {ref} does not match the live database {live}: {'; '.join(differences)}"
        if not spec.accept_mismatch_reason:
            raise StepFailed("BackupMismatch", f"{found}; nothing was changed. If it is the backup to "
                             "restore all the same, say why in spec.database.acceptMismatchReason")
        message = (f"The backup {ref} is {what} ({result.get('bytes')} bytes, sha256 "
                   f"{str(result.get('sha256'))[:12]}...); accepted although {found}, because: "
                   f"{spec.accept_mismatch_reason}")
        ctx.emit("Warning", "BackupMismatchAccepted", message)
    st = state.status(ctx)
    st.live_database, st.backup_source, st.backup_source_sha256 = live, ref, result.get("sha256")
    st.backup_row_counts = counts
    ctx.succeed(step, rec, message, "BackupChecked")
    jobs.delete_job(ctx.kube, ctx.namespace, step.job_name)   # after the outcome is recorded
    return None


def canonical(name: str) -> str:
    """A table name in the check script's alphabet (scripts/check.sh: anything else is `?`)."""
    return re.sub(r"[^A-Za-z0-9_.$ -]", "?", name)


def mismatch(result: dict, live: str, live_tables: list[str],
             manifest: dict[str, int] | None) -> list[str]:
    """What differs between the dump (as the check Job reported it) and the live database: the
    name recorded in the dump, the set of tables, the manifest's tables. Empty when they match."""
    out = []
    if result.get("dbname") and result["dbname"] != live:
        out.append(f"it is a dump of database {result['dbname']!r}, not of {live!r}")
    tables = result["tables"]
    mine = sorted({canonical(t) for t in live_tables})
    listed = [n for n in str(tables.get("names") or "").split(",") if n]
    complete = len(listed) == tables.get("count")
    digest = hashlib.sha256("".join(f"{n}\n" for n in mine).encode()).hexdigest()
    if digest != tables.get("sha256"):
        only_backup = sorted(set(listed) - set(mine))
        only_live = sorted(set(mine) - set(listed)) if complete else []
        parts = [f"{len(names)} table(s) only in the {where}: {_few(names)}"
                 for names, where in ((only_backup, "backup"), (only_live, "live database")) if names]
        if not parts or not complete:
            parts.append(f"the backup has {tables.get('count')} tables, the live database {len(mine)}")
        out.append("its tables differ (" + "; ".join(parts) + ")")
    if manifest and complete:
        absent = sorted(t for t in manifest if canonical(t if "." in t else f"public.{t}") not in listed)
        if absent:
            out.append(f"its manifest names table(s) the dump does not have: {_few(absent)}")
    return out


def _few(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _manifest_counts(encoded: str, ref: str) -> dict[str, int] | None:
    """Row counts from the backup's optional manifest (`<dump>.manifest.json`:
    {"tables": {"appointments": 400, ...}}), which verification compares against."""
    if not encoded:
        return None
    try:
        manifest = json.loads(base64.b64decode(encoded))
        tables = manifest["tables"]
        if not isinstance(tables, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for k, v in tables.items()):
            raise ValueError
        return dict(tables)
    except (ValueError, KeyError, TypeError):
        raise StepFailed("BackupManifestInvalid", f"{ref}.manifest.json is not a manifest of the form "
                         '{"tables": {"<table>": <rows>, ...}}; nothing was changed') from None

