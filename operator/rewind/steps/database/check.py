"""Check the backup before anything changes: a missing, empty or foreign file must stop the
rollback while production is still untouched. Its SHA-256 goes to status so a person can tell
later which file was restored, and its optional manifest gives verify the row counts to expect.
"""

from __future__ import annotations

import base64
import json

from rewind import authz
from rewind.api import conditions as C
from rewind.api.v1alpha1 import PlanStep, StepRecord
from rewind.context import Context, StepFailed, Wait
from rewind.steps import jobs
from rewind.steps.database import job, state

# The check script's exit codes (scripts/check.sh).
EXIT_REASONS = {10: "BackupNotFound", 11: "BackupEmpty", 12: "BackupCorrupt"}


def advance_check(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = state.spec(ctx)
    src = spec.restore_from.persistent_volume_claim
    ref = f"{src.claim_name}:{src.path}"
    ctx.begin(step, rec, f"Checking the backup {ref}.", C.DATABASE_RESTORED)
    outcome = job.run(ctx, step, rec, lambda: jobs.build_job(
        name=step.job_name, rollback=ctx.obj, step="check", image=authz.job_image(spec), script=job.CHECK_SCRIPT,
        env=job.env(spec, src.path, ref), claim_name=src.claim_name,
        deadline_seconds=spec.job_deadline_seconds, read_only_backups=True), f"checking {ref}")
    if isinstance(outcome, Wait):
        return outcome
    if outcome.state == "failed":
        raise StepFailed(EXIT_REASONS.get(outcome.exit_code, "BackupCheckFailed"),
                         f"{outcome.message or 'the backup check Job failed'}; nothing was changed")
    result = outcome.result()
    if "sha256" not in result:
        raise StepFailed("BackupCheckFailed", "the backup check Job reported no result; nothing was changed")
    live = step.target.name
    if result.get("dbname") and result["dbname"] != live:
        raise StepFailed("BackupMismatch", f"the backup {ref} is a dump of database "
                                           f"{result['dbname']!r}, not of {live!r}; nothing was changed")
    st = state.status(ctx)
    st.live_database, st.backup_source, st.backup_source_sha256 = live, ref, result.get("sha256")
    st.backup_row_counts = _manifest_counts(result.get("manifest") or "", ref)
    ctx.succeed(step, rec, f"The backup {ref} is a pg_dump archive of {live} "
                f"({result.get('bytes')} bytes, sha256 {str(result.get('sha256'))[:12]}...).", "BackupChecked")
    jobs.delete_job(ctx.kube, ctx.namespace, step.job_name)   # after the outcome is recorded
    return None


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
