"""What the three steps that run in a Job (check, backup, restore) share: the scripts, the
container's environment, get-or-create of the Job, and the wait for it.

The work is done in Jobs because pg_dump and pg_restore must run next to the backups' volume and
with the server's own client version; the operator only reads the outcome. The scripts are shell
files beside this module, so that shellcheck reads them as shell (tests/unit runs it on them) and
a person does too; each is loaded once, after scripts/common.sh, and goes whole into the Job as
`sh -c`'s argument.
"""

from __future__ import annotations

import datetime
from importlib import resources
from typing import Callable

from rewind import authz, crashpoints
from rewind.api.v1alpha1 import DatabaseSpec, PlanStep, S3Object, StepRecord
from rewind.context import Context, Wait, Watched
from rewind.steps import jobs
from rewind.steps.database import state
from rewind.steps.database.names import Place

# A watch on the Job's pods wakes the step when its pod ends (jobs.job_outcome takes the pod's end
# as the Job's); a pod that cannot start (a bad image) is seen at the next look, every few seconds.
LOOK_AGAIN_SECONDS = 5.0
DEADLINE_MARGIN_SECONDS = 60
# A Job gets what is left of the rollback's target time (the severity's), within the spec's
# jobDeadlineSeconds, and never less than this.
MIN_DEADLINE_SECONDS = 60


def _script(name: str) -> str:
    folder = resources.files(__package__) / "scripts"
    return "".join((folder / f).read_text(encoding="utf-8") for f in ("common.sh", f"{name}.sh"))


CHECK_SCRIPT = _script("check")
BACKUP_SCRIPT = _script("backup")
RESTORE_SCRIPT = _script("restore")


def env(spec: DatabaseSpec, dump_path: str, dump_ref: str, **extra: str) -> list[dict]:
    """The container's environment: the URL only as a secretKeyRef, never as a value."""
    ref = spec.connection.secret_ref
    out = [jobs.secret_env("DATABASE_URL", ref.name, ref.key),
           {"name": "DUMP_PATH", "value": f"{jobs.MOUNT}/{dump_path}"},
           {"name": "DUMP_REF", "value": dump_ref}]
    out += [{"name": k, "value": v} for k, v in extra.items()]
    return out


# The file a fetched (or about to be uploaded) dump has in the Job's scratch volume.
SCRATCH_FILE = "backup.dump"
CA_MOUNT = "/etc/rewind/s3-ca"


def build(ctx: Context, step: PlanStep, *, place: Place, script: str, seconds: int, read_only: bool,
          extra_env: dict[str, str], s3_env: dict[str, str] | None = None) -> dict:
    """The step's Job, for a dump on a PVC (mounted) or in object storage: then the Job fetches
    it into a scratch volume first (read_only: check, restore), or uploads what `pg` wrote there
    (not read_only: the backup). The store's credentials go only to the `s3` container."""
    spec = state.spec(ctx)
    path = SCRATCH_FILE if place.s3 else place.path
    manifest = dict(name=step.job_name, rollback=ctx.obj, step=step.name.split("/")[-1],
                    image=authz.job_image(spec), script=script, env=env(spec, path, place.ref, **extra_env),
                    claim_name=place.claim, deadline_seconds=seconds, read_only_backups=read_only)
    if place.s3:
        container, volumes = s3_container(place.s3, "get" if read_only else "put", s3_env or {})
        manifest.update(volumes=volumes, **({"fetch": container} if read_only else {"upload": container}))
    return jobs.build_job(**manifest)


def s3_container(obj: S3Object, action: str, extra: dict[str, str]) -> tuple[dict, list[dict]]:
    """`rewind s3 get|put` in the operator's own image (--tool-image), on the scratch volume."""
    values = {"S3_ENDPOINT": obj.endpoint.rstrip("/"), "S3_REGION": obj.region, "S3_BUCKET": obj.bucket,
              "S3_KEY": obj.key, "TERMINATION_LOG": "/dev/termination-log", **extra}
    if obj.sha256:
        values["S3_SHA256"] = obj.sha256
    mounts = [{"name": "backups", "mountPath": jobs.MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]
    volumes = []
    if obj.ca_bundle:
        values["S3_CA_FILE"] = f"{CA_MOUNT}/ca.crt"
        mounts.append({"name": "s3-ca", "mountPath": CA_MOUNT, "readOnly": True})
        volumes.append({"name": "s3-ca", "configMap": {"name": obj.ca_bundle.name,
                                                       "items": [{"key": obj.ca_bundle.key, "path": "ca.crt"}]}})
    container = {
        "name": "s3",
        "image": authz.SETTINGS.tool_image,
        "command": ["rewind", "s3", action, f"{jobs.MOUNT}/{SCRATCH_FILE}"],
        "env": [{"name": k, "value": v} for k, v in values.items()] + [
            jobs.secret_env(k, obj.credentials_secret_ref, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")],
        "volumeMounts": mounts,
        "terminationMessagePolicy": "File",
        "resources": jobs.RESOURCES,
        "securityContext": jobs.RESTRICTED_CONTAINER,
    }
    return container, volumes


def deadline_seconds(ctx: Context, rec: StepRecord) -> int:
    """The Job's activeDeadlineSeconds: the time left of the rollback's target when the step
    began (so a stuck Job ends near the severity's deadline, not at jobDeadlineSeconds past it),
    at most jobDeadlineSeconds. The same at every look: both ends are in status."""
    cap = state.spec(ctx).job_deadline_seconds
    if ctx.status.deadline is None or rec.started_at is None:
        return cap
    left = int((ctx.status.deadline - rec.started_at).total_seconds())
    return max(MIN_DEADLINE_SECONDS, min(cap, left))


def lock_wait_timeout(ctx: Context) -> str:
    """How long pg_dump waits for a table lock: a twentieth of the severity's target, within
    5 s..60 s (Critical 15 s, High 45 s), so that a held lock fails the step while there is time
    to act, instead of waiting blind until the Job's deadline."""
    target = (ctx.status.deadline - ctx.status.started_at).total_seconds() \
        if ctx.status.deadline and ctx.status.started_at else 900
    return f"{int(min(60, max(5, target / 20)))}s"


def wait(ctx: Context, step: PlanStep, rec: StepRecord, message: str,
         outcome: jobs.JobOutcome | None = None, seconds: int | None = None) -> Wait:
    """The step waits for its Job: woken by a watch on the Job, bounded by the Job's own deadline
    (`seconds`, its activeDeadlineSeconds; default jobDeadlineSeconds)."""
    deadline = rec.started_at + datetime.timedelta(
        seconds=(seconds or state.spec(ctx).job_deadline_seconds) + DEADLINE_MARGIN_SECONDS)
    watch = Watched(jobs.PODS, None, outcome.resource_version, jobs.pod_selector(step.job_name)) \
        if outcome and outcome.resource_version else Watched(jobs.JOBS, step.job_name)
    return ctx.waiting(step, rec, message, deadline, look_again=LOOK_AGAIN_SECONDS, watch=watch)


def run(ctx: Context, step: PlanStep, rec: StepRecord, manifest: Callable[[int], dict],
        what: str) -> jobs.JobOutcome | Wait:
    """Get-or-create the step's Job (`manifest(deadline_seconds)`); a Wait while it runs, else
    its outcome. For the steps whose Job is harmless to run again (check reads only; backup
    adopts its own dump and overwrites no other); the restore fences its Job in the ledger
    instead."""
    seconds = deadline_seconds(ctx, rec)
    outcome = jobs.job_outcome(ctx.kube, ctx.namespace, step.job_name)
    if outcome.state == "missing":
        how = jobs.ensure_job(ctx.kube, manifest(seconds))
        crashpoints.reach(f"{step.kind}:after-job-created")
        return wait(ctx, step, rec, f"Job {step.job_name} {how}: {what}.", seconds=seconds)
    if outcome.state == "running":
        return wait(ctx, step, rec, rec.message or f"Job {step.job_name}: {what}.", outcome, seconds)
    return outcome
