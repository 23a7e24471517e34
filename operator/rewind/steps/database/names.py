"""Every name a rollback gives a database, a Job or a dump derives from its UID, so a restarted
operator finds what an earlier run made instead of making it again, and two rollbacks of the
same database never collide. Database names are cut to stay within PostgreSQL's 63 bytes."""

from __future__ import annotations

from dataclasses import dataclass

from rewind.api.v1alpha1 import DatabaseSpec, S3Object


def uid8(uid: str) -> str:
    return uid.replace("-", "")[:8]


def staging_name(live: str, uid: str) -> str:
    return f"{live[:40]}_restore_{uid8(uid)}"


def pre_name(live: str, uid: str) -> str:
    return f"{live[:44]}_pre_{uid8(uid)}"


def is_kept(comment: str | None, live: str) -> bool:
    """Whether a database is one a rollback of `live` kept aside (whichever rollback): the swap
    (adapters.db.swap) comments it `rewind:<uid>:pre-rollback copy of <live>`."""
    return bool(comment and comment.startswith("rewind:") and comment.endswith(f":pre-rollback copy of {live}"))


def staging_of(spec: DatabaseSpec, live: str, uid: str) -> str:
    """The database the swap brings in: this rollback's staging one, or the kept one (an undo)."""
    if spec.restore_from.kept_database:
        return spec.restore_from.kept_database.name
    return staging_name(live, uid)


def job_name(uid: str, what: str) -> str:
    return f"rewind-{uid8(uid)}-{what}"


def staging_comment(uid: str) -> str:
    """The mark that tells Rewind's staging database from one that merely has its name."""
    return f"rewind:{uid}:staging"


@dataclass(frozen=True)
class Place:
    """Where a dump is: a path on a PVC, or an object in object storage."""

    claim: str | None = None
    path: str | None = None
    s3: S3Object | None = None

    @property
    def ref(self) -> str:
        return f"s3://{self.s3.bucket}/{self.s3.key}" if self.s3 else f"{self.claim}:{self.path}"


def source(spec: DatabaseSpec) -> Place:
    """Where the backup to restore is (a PVC's file or an S3 object; not a kept database)."""
    src = spec.restore_from
    if src.s3:
        return Place(s3=src.s3)
    return Place(src.persistent_volume_claim.claim_name, src.persistent_volume_claim.path)


def backup_to(spec: DatabaseSpec, namespace: str, name: str, uid: str) -> Place:
    """Where the pre-rollback dump goes: where the spec says, else next to the backup restored
    (its claim or its bucket)."""
    if spec.backup_to:
        if spec.backup_to.s3:
            return Place(s3=spec.backup_to.s3.model_copy(update={"sha256": None}))
        return Place(spec.backup_to.claim_name, spec.backup_to.path)
    key = f"rewind/{namespace}/{name}-{uid8(uid)}/pre-rollback.dump"
    src = spec.restore_from        # CEL: a kept database comes with backupTo
    if src.s3:
        return Place(s3=src.s3.model_copy(update={"key": key, "sha256": None}))
    return Place(src.persistent_volume_claim.claim_name, key)
