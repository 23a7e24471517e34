"""The pre-rollback dump of the live database, taken before anything changes, so that the
rollback itself can be undone. On by default; waiving it takes a reason in the spec (CEL)."""

from __future__ import annotations

from rewind import authz
from rewind.api import conditions as C
from rewind.api.v1alpha1 import PlanStep, StepRecord
from rewind.context import Context, StepFailed, Wait
from rewind.steps import jobs
from rewind.steps.database import job, state
from rewind.steps.database.names import backup_to


def advance_backup(ctx: Context, step: PlanStep, rec: StepRecord) -> Wait | None:
    spec = state.spec(ctx)
    claim, path = backup_to(spec, ctx.namespace, ctx.name, ctx.uid)
    ref = f"{claim}:{path}"
    ctx.begin(step, rec, f"Dumping the live database {step.target.name} to {ref} before anything changes.", C.DATABASE_RESTORED)
    outcome = job.run(ctx, step, rec, lambda: jobs.build_job(
        name=step.job_name, rollback=ctx.obj, step="backup", image=authz.job_image(spec), script=job.BACKUP_SCRIPT,
        env=job.env(spec, path, ref), claim_name=claim,
        deadline_seconds=spec.job_deadline_seconds, read_only_backups=False), f"pg_dump to {ref}")
    if isinstance(outcome, Wait):
        return outcome
    if outcome.state == "failed":
        raise StepFailed("PreRollbackBackupFailed",
                         f"{outcome.message or 'the pre-rollback backup Job failed'}; nothing was changed")
    result = outcome.result()
    st = state.status(ctx)
    st.pre_rollback_backup, st.pre_rollback_backup_sha256 = ref, result.get("sha256")
    st.pre_rollback_backup_bytes = result.get("bytes")
    ctx.succeed(step, rec, f"The live database {step.target.name} is saved to {ref} "
                f"({result.get('bytes')} bytes).", "PreRollbackBackupTaken")
    jobs.delete_job(ctx.kube, ctx.namespace, step.job_name)   # after the outcome is recorded
    return None
