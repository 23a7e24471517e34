"""The `Rollback` resource, rewind.dev/v1alpha1: the single source of truth for its schema.

The CRD in `crds/` is rendered from these models (`rewind crd`); a test fails when the two differ.
Rules that an OpenAPI schema cannot say are CEL rules (`x-kubernetes-validations`) declared here.
"""

from __future__ import annotations

import datetime
from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "rewind.dev"
VERSION = "v1alpha1"
KIND = "Rollback"
PLURAL = "rollbacks"
SINGULAR = "rollback"
SHORT_NAMES = ["rb"]

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              use_enum_values=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _cel(rule: str, message: str, **extra) -> dict:
    return {"rule": rule, "message": message, **extra}


# --- spec ------------------------------------------------------------------------------------


class Severity(str, Enum):
    """The seed's decision matrix; each severity has a deadline (see plan.DEADLINES)."""

    CRITICAL = "Critical"
    HIGH = "High"
    MEDIUM = "Medium"
    LOW = "Low"


class WorkloadKind(str, Enum):
    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"
    DAEMON_SET = "DaemonSet"


PREVIOUS = "previous"

RevisionRef = Annotated[
    Union[int, Literal["previous"]],
    WithJsonSchema({
        "x-kubernetes-int-or-string": True,
        "description": "`previous` (the revision before the newest, as `kubectl rollout undo`) "
                       "or a revision number (as `kubectl rollout undo --to-revision=N`).",
        "x-kubernetes-validations": [_cel(
            "type(self) == int ? self >= 1 : self == 'previous'",
            "toRevision must be 'previous' or a revision number of 1 or more")],
    }),
]


class WorkloadTarget(_Model):
    """A workload to restore to an earlier revision."""

    kind: WorkloadKind = Field(WorkloadKind.DEPLOYMENT, description="Deployment, StatefulSet or DaemonSet.")
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                      description="The workload's name, in the Rollback's namespace.")
    namespace: str | None = Field(
        None, max_length=63, pattern=DNS_LABEL,
        description="Optional; when set it must be the Rollback's own namespace.")
    to_revision: RevisionRef = PREVIOUS


SQL_IDENTIFIER = r"^[a-z_][a-z0-9_]{0,62}$"
TABLE_NAME = r"^([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$"
RELATIVE_PATH = r"^[A-Za-z0-9_][-A-Za-z0-9_.]*(/[A-Za-z0-9_][-A-Za-z0-9_.]*)*$"


class SecretKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class DatabaseConnection(_Model):
    """Where the live database is: a Secret key holding a postgresql:// URL, never a literal."""

    secret_ref: SecretKeyRef = Field(description="Secret key with a postgresql://user:pass@host:port/db URL.")


class PvcPath(_Model):
    claim_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    path: str = Field(min_length=1, max_length=1024, pattern=RELATIVE_PATH,
                      description="Path inside the volume; relative, no `..`.",
                      json_schema_extra={"x-kubernetes-validations": [_cel(
                          "!self.split('/').exists(p, p == '..')", "path must not contain '..'")]})


class KeptDatabase(_Model):
    name: str = Field(min_length=1, max_length=63, pattern=SQL_IDENTIFIER,
                      description="A database an earlier rollback kept aside (`<db>_pre_<uid8>`, with "
                                  "Rewind's comment on it), swapped back in as it is.")


class ConfigMapKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class S3Object(_Model):
    """An object in S3, or in a store that speaks its API, reached over TLS that is always
    verified (against the system's trust store, or the CA bundle named here)."""

    endpoint: str = Field(min_length=9, max_length=253, pattern=r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$",
                          description="https://host[:port] of the store (e.g. https://s3.eu-west-1.amazonaws.com); "
                                      "only https, and the platform's egress policy must allow the host.")
    region: str = Field("us-east-1", min_length=1, max_length=32, pattern=r"^[a-z0-9-]+$")
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    key: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z0-9!_.*'()-][A-Za-z0-9!_.*'()/-]*$",
                     description="The object's key; no `..` segment.",
                     json_schema_extra={"x-kubernetes-validations": [_cel(
                         "!self.split('/').exists(p, p == '..')", "key must not contain '..'")]})
    credentials_secret_ref: str = Field(
        max_length=253, pattern=DNS_SUBDOMAIN, description="A Secret in the Rollback's namespace with keys AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY; only the Job that fetches or uploads sees them.")
    ca_bundle: ConfigMapKeyRef | None = Field(
        None, description="A ConfigMap key holding the PEM CA bundle to verify the endpoint by, instead "
                          "of the system's trust store (a private CA).")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="The backup's SHA-256, when the store recorded no checksum Rewind can check (a "
                    "multipart upload without a SHA-256 checksum); checked as well when it did.")


class BackupSource(_Model):
    """Exactly one: a dump on a PVC or in object storage (checked, restored into staging), or the
    database an earlier rollback kept (what `kubectl rewind undo` uses: no check and no restore,
    it is swapped in)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("[has(self.persistentVolumeClaim), has(self.s3), has(self.keptDatabase)].filter(x, x).size() == 1",
             "give exactly one of persistentVolumeClaim, s3 and keptDatabase"),
    ]})

    persistent_volume_claim: PvcPath | None = Field(None, description="A pg_dump custom-format file on a PVC.")
    s3: S3Object | None = Field(
        None, description="A pg_dump archive or plain-SQL dump in object storage; fetched by the check "
                          "and restore Jobs, its checksum checked before anything reads it.")
    kept_database: KeptDatabase | None = Field(
        None, description="Swap back in the database a rollback kept aside (an undo).")


class DatabaseVerify(_Model):
    tables: list[Annotated[str, Field(pattern=TABLE_NAME, max_length=127)]] = Field(
        min_length=1, max_length=64,
        description="Tables that must exist in the restored database; their rows are counted.")
    min_rows: int = Field(0, ge=0, description="Each listed table must have at least this many rows.")


class SqlActionKind(str, Enum):
    CLEAR_OAUTH_TOKENS = "ClearOAuthTokens"


class RowFilter(_Model):
    column: str = Field(pattern=SQL_IDENTIFIER)
    equals: str = Field(max_length=256, description="Compared as text; bound, never spliced.")


class SqlAction(_Model):
    """A named, parameterised action on the restored database before it goes live. No free-form
    SQL: identifiers are validated here and quoted by the operator, values are bound."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    action: SqlActionKind = Field(description="ClearOAuthTokens: set the token columns to NULL.")
    table: str = Field("calendar_connections", pattern=TABLE_NAME, max_length=127)
    columns: list[Annotated[str, Field(pattern=SQL_IDENTIFIER, max_length=63)]] = Field(
        default_factory=lambda: ["access_token", "refresh_token", "token_expires_at"],
        min_length=1, max_length=16)
    where: list[RowFilter] | None = Field(None, max_length=8,
                                          description="Equality filters, all of which must hold.")
    statement_timeout_seconds: int = Field(30, ge=1, le=600)


class BackupDestination(_Model):
    """A path on a PVC (claimName and path), or an object in object storage (s3)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("has(self.s3) ? !has(self.claimName) && !has(self.path) : has(self.claimName) && has(self.path)",
             "give either claimName and path, or s3"),
    ]})

    claim_name: str | None = Field(None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    path: str | None = Field(None, min_length=1, max_length=1024, pattern=RELATIVE_PATH,
                             description="Path inside the volume; relative, no `..`.",
                             json_schema_extra={"x-kubernetes-validations": [_cel(
                                 "!self.split('/').exists(p, p == '..')", "path must not contain '..'")]})
    s3: S3Object | None = Field(None, description="An object in object storage (its sha256 is not used).")


class BackupCompression(str, Enum):
    """How the pre-rollback dump is compressed (pg_dump --compress): gzip level 1 (Fast, the
    default) is about twice as fast as pg_dump's own default and nearly as small; None is fastest
    and the largest (about the size of the table data)."""

    NONE = "None"
    FAST = "Fast"
    DEFAULT = "Default"


class DatabaseSpec(_Model):
    """Restore the live PostgreSQL database from a backup, out of place, with a way back."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("self.preRollbackBackup || has(self.waiveBackupReason)",
             "preRollbackBackup may only be false with a waiveBackupReason"),
        _cel("!has(self.restoreFrom.keptDatabase) || has(self.backupTo) || !self.preRollbackBackup",
             "restoreFrom.keptDatabase needs backupTo for the pre-rollback dump"),
    ]})

    connection: DatabaseConnection
    restore_from: BackupSource
    pre_rollback_backup: bool = Field(True, description="Dump the live database first (default).")
    waive_backup_reason: str | None = Field(None, min_length=1, max_length=512)
    backup_compression: BackupCompression = Field(
        BackupCompression.FAST,
        description="Compression of the pre-rollback dump: Fast (gzip level 1, default), None, or Default "
                    "(pg_dump's own, about twice as slow as Fast for a few percent less space).")
    accept_mismatch_reason: str | None = Field(
        None, min_length=1, max_length=512,
        description="Why a backup whose tables differ from the live database's may be restored "
                    "anyway (e.g. a migration added a table since); without it the check refuses it.")
    accept_source_differences_reason: str | None = Field(
        None, min_length=1, max_length=512,
        description="Why a backup of a database created with another encoding, locale provider, "
                    "collation or ctype than the live one may be restored anyway; the restored "
                    "database is always created like the live one. Without it the restore refuses "
                    "it (SourceDiffers) before restoring anything.")
    backup_to: BackupDestination | None = Field(
        None, description="Where the pre-rollback dump goes; default: where the backup is restored from "
                          "(its claim, or its bucket), under rewind/<namespace>/<rollback>-<uid8>/pre-rollback.dump.")
    verify: DatabaseVerify | None = None
    after_restore: list[SqlAction] | None = Field(
        None, max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Actions on the restored database, in order, before it is swapped in "
                    "(e.g. the seed's OAuth token clean-up).")
    image: str | None = Field(None, min_length=1, max_length=512,
                              description="PostgreSQL client image for the backup and restore Jobs "
                                          "(one the policy's jobImages allows). Default: the operator's "
                                          "--job-image.")
    terminate_connections: bool = Field(
        True, description="End the live database's sessions before the swap (else fail if any remain).")
    job_deadline_seconds: int = Field(1800, ge=60, le=86400,
                                      description="The most activeDeadlineSeconds a database Job gets; each gets "
                                                  "what is left of the severity's target, at least 60 s.")


OptionalRevisionRef = Annotated[
    Union[int, Literal["previous"], None],
    WithJsonSchema({
        "x-kubernetes-int-or-string": True,
        "description": "`previous` (the newest recorded version that differs from the current "
                       "data) or a revision number from Rewind's history of the Secret.",
        "x-kubernetes-validations": [_cel(
            "type(self) == int ? self >= 1 : self == 'previous'",
            "toRevision must be 'previous' or a revision number of 1 or more")],
    }),
]


class _SecretSource(_Model):
    """Where a restored Secret's data comes from: Rewind's history of it, or another Secret."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("has(self.toRevision) != has(self.fromSecret)",
             "give exactly one of toRevision and fromSecret"),
    ]})

    namespace: str | None = Field(None, max_length=63, pattern=DNS_LABEL,
                                  description="Optional; when set it must be the Rollback's own namespace.")
    to_revision: OptionalRevisionRef = None
    from_secret: str | None = Field(None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                                    description="A Secret in the same namespace holding the data to restore.")


class SecretTarget(_SecretSource):
    """A Secret to put back as it was."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class TlsEndpoint(_Model):
    """Where the restored certificate must be served, checked after the swap."""

    host: str = Field(min_length=1, max_length=253, description="Address to connect to.")
    port: int = Field(443, ge=1, le=65535)
    server_name: str | None = Field(None, max_length=253, pattern=HOSTNAME,
                                    description="SNI and the name to match; default: the first of hosts.")
    timeout_seconds: int = Field(60, ge=1, le=600,
                                 description="How long the endpoint may take to serve the restored certificate.")


class CertificateTrust(_Model):
    """Whom the restored certificate must be trusted by, as a verifying client would trust it.
    Without it: the system's trusted roots (the operator's CA bundle). A root or self-signed
    certificate placed in tls.crt never makes itself trusted."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("!(has(self.caFromSecret) && self.caFromSecret && has(self.pinnedFingerprintSha256))",
             "trust either the CA in ca.crt (caFromSecret) or one pinned certificate, not both"),
    ]})

    ca_from_secret: bool = Field(
        False, description="Trust the CA certificates in ca.crt of the Secret restored from (a "
                           "private CA) instead of the system's roots. Only when that ca.crt is known "
                           "good: a ca.crt the spec does not trust is ignored.")
    pinned_fingerprint_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="Trust exactly this certificate, whoever signed it (a self-signed or private-CA "
                    "certificate): SHA-256 of the leaf's DER, lower-case hex. The restored leaf, and "
                    "the one the endpoint serves, must be this one.")


class CertificateTarget(_SecretSource):
    """A kubernetes.io/tls Secret to put back to an earlier certificate, validated first."""

    secret_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    hosts: list[Annotated[str, Field(max_length=253, pattern=HOSTNAME)]] = Field(
        min_length=1, max_length=32, description="Names the certificate must cover: DNS names, or IPv4 "
                                                  "addresses, which only an IP SAN matches.")
    min_valid_days: int = Field(7, ge=0, le=365,
                                description="The certificate must stay valid at least this long.")
    verify: TlsEndpoint | None = None
    trust: CertificateTrust | None = Field(
        None, description="Which CA, or which pinned certificate, clients trust; default: the "
                          "system's trusted roots.")


class HttpMethod(str, Enum):
    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"


class _Measured(_Model):
    """Argo-style measurement semantics shared by every check: `count` measurements
    `intervalSeconds` apart. A measurement passes, fails (the target answered wrongly, or not at
    all) or is inconclusive (the check itself could not get an answer). The check fails as soon as
    more than `failureLimit` measurements failed, or more than `consecutiveFailureLimit` failed in
    a row; it is Inconclusive when more than `inconclusiveLimit` were inconclusive; else it passes
    once all were taken."""

    count: int = Field(1, ge=1, le=100)
    interval_seconds: int = Field(2, ge=0, le=300)
    failure_limit: int = Field(0, ge=0, le=100, description="Failed measurements tolerated in all.")
    consecutive_failure_limit: int | None = Field(
        None, ge=0, le=100, description="Failed measurements tolerated in a row (default: no limit "
                                        "beyond failureLimit).")
    inconclusive_limit: int = Field(0, ge=0, le=100,
                                    description="Inconclusive measurements tolerated in all.")
    timeout_seconds: int = Field(10, ge=1, le=300, description="Bound on one measurement.")


class HttpCheck(_Measured):
    """An HTTP check after the rollback: status, body text or a JSON value, and latency."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("!has(self.jsonEquals) || has(self.jsonPath)", "jsonEquals needs jsonPath"),
    ]})

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://[^\t\n\f\r ]+$")
    method: HttpMethod = HttpMethod.GET
    expect_status: int = Field(200, ge=100, le=599)
    body_contains: str | None = Field(None, max_length=1024)
    json_path: str | None = Field(None, max_length=256, pattern=r"^\$(\.[A-Za-z0-9_-]+|\[[0-9]+\])*$",
                                  description="A value in a JSON body, e.g. $.status or $.checks[0].ok.")
    json_equals: str | None = Field(None, max_length=1024, description="Compared as text with the value at jsonPath.")
    max_latency_ms: int | None = Field(None, ge=1, le=600_000)
    insecure_skip_tls_verify: bool = Field(False, description="TLS is verified unless this is set.")


class SqlCheck(_Measured):
    """A named, read-only SQL check on the live database after the rollback. The query runs in a
    READ ONLY transaction with a statement timeout; at most `rowLimit` rows are read (more makes
    the measurement inconclusive). Parameters are bound (`%(name)s` in the query), never spliced.
    With `equals`, the first column of the single row must equal it as text; with `minRows` /
    `maxRows`, the row count must lie between them; with neither, the query must return a row
    whose first column is true or a non-zero number (e.g. `SELECT count(*) > 0 FROM users`)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("!has(self.minRows) || !has(self.maxRows) || self.minRows <= self.maxRows",
             "minRows must not be larger than maxRows"),
        _cel("!has(self.equals) || (!has(self.minRows) && !has(self.maxRows))",
             "give equals, or minRows/maxRows, not both"),
    ]})

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    query: str = Field(min_length=1, max_length=8192, description="One SQL statement, read-only.")
    params: dict[str, Annotated[str, Field(max_length=1024)]] | None = Field(
        None, max_length=32, description="Values bound to %(name)s placeholders, as text.")
    connection: DatabaseConnection | None = Field(
        None, description="Default: spec.database.connection. A read-only role is a good idea.")
    equals: str | None = Field(None, max_length=1024)
    min_rows: int | None = Field(None, ge=0)
    max_rows: int | None = Field(None, ge=0)
    row_limit: int = Field(1000, ge=1, le=10000, description="Rows read at most.")


class TlsCheck(_Measured):
    """A TLS handshake with an endpoint: the served certificate covers `serverName`, is valid now
    and for `minValidDays` more, and (with `fingerprintSha256`) is exactly that certificate."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    host: str = Field(min_length=1, max_length=253, description="Address to connect to.")
    port: int = Field(443, ge=1, le=65535)
    server_name: str = Field(min_length=1, max_length=253, pattern=HOSTNAME,
                             description="SNI, and the name the certificate must cover.")
    fingerprint_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                           description="SHA-256 of the leaf's DER, lower-case hex.")
    min_valid_days: int = Field(7, ge=0, le=365)


class FailurePolicy(str, Enum):
    FAIL = "Fail"
    WARN = "Warn"


class Verification(_Model):
    http: list[HttpCheck] | None = Field(
        None, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    sql: list[SqlCheck] | None = Field(
        None, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    tls: list[TlsCheck] | None = Field(
        None, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    on_failure: FailurePolicy = Field(FailurePolicy.FAIL, description="Fail: the rollback fails "
                                      "when a check fails or is inconclusive. Warn: it finishes, "
                                      "with Verified=False (or Unknown when inconclusive).")


class NotificationEvent(str, Enum):
    STARTED = "Started"
    AWAITING_APPROVAL = "AwaitingApproval"
    BREAK_GLASS = "BreakGlass"
    STEP_FAILED = "StepFailed"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DEADLINE_MISSED = "DeadlineMissed"


class SlackTarget(_Model):
    webhook_secret_ref: SecretKeyRef = Field(description="Secret key holding the incoming-webhook URL.")


class WebhookTarget(_Model):
    """A generic JSON webhook: POST of the event, with an `Idempotency-Key` header (the same on
    every retry of one notification) so the receiver can drop repeats."""

    url_secret_ref: SecretKeyRef = Field(description="Secret key holding the URL.")
    insecure_skip_tls_verify: bool = False


class SmtpSecurity(str, Enum):
    STARTTLS = "StartTLS"
    TLS = "TLS"
    NONE = "None"


class SmtpServer(_Model):
    host: str = Field(min_length=1, max_length=253, pattern=r"^([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|^\[?[0-9a-fA-F:.]+\]?$",
                      description="Host name or IP address of the SMTP server.")
    port: int = Field(587, ge=1, le=65535)
    security: SmtpSecurity = Field(SmtpSecurity.STARTTLS, description="StartTLS (default), TLS, or "
                                   "None (plain; only without credentials).")
    credentials_secret_ref: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="Secret with `username` and `password` keys for SMTP AUTH.")
    ca_secret_ref: SecretKeyRef | None = Field(None, description="CA certificate (PEM) to trust for TLS.")


class EmailTarget(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("self.smtp.security != 'None' || !has(self.smtp.credentialsSecretRef)",
             "SMTP credentials are only sent over TLS: set smtp.security to StartTLS or TLS"),
    ]})

    smtp: SmtpServer
    sender: str = Field(alias="from", min_length=3, max_length=254, pattern=r"^[^@\t\n\f\r <>]+@[^@\t\n\f\r <>]+$")
    to: list[Annotated[str, Field(max_length=254, pattern=r"^[^@\t\n\f\r <>]+@[^@\t\n\f\r <>]+$")]] = Field(
        min_length=1, max_length=32)


class Notification(_Model):
    """Where to tell people, about which events, for which severities (the seed pages by SMS, a
    webhook here, only for Critical). A failed notification is retried and recorded in
    status.notifications; it never fails the rollback."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("[has(self.slack), has(self.webhook), has(self.email)].filter(x, x).size() == 1",
             "give exactly one of slack, webhook and email"),
    ]})

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    events: list[NotificationEvent] | None = Field(None, max_length=8, description="Default: all.")
    severities: list[Severity] | None = Field(None, max_length=4, description="Default: all.")
    slack: SlackTarget | None = None
    webhook: WebhookTarget | None = None
    email: EmailTarget | None = None


class HttpCall(_Model):
    """One HTTP call of a hook; a 2xx answer is success. The URL may come from a Secret."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("has(self.url) != has(self.urlSecretRef)", "give exactly one of url and urlSecretRef"),
    ]})

    url: str | None = Field(None, max_length=2048, pattern=r"^https?://[^\t\n\f\r ]+$")
    url_secret_ref: SecretKeyRef | None = None
    method: HttpMethod = HttpMethod.POST
    body: str | None = Field(None, max_length=8192, description="Request body, sent as JSON.")
    timeout_seconds: int = Field(10, ge=1, le=120)
    insecure_skip_tls_verify: bool = False


class HttpHook(_Model):
    enter: HttpCall
    exit: HttpCall


class ServiceSwitch(_Model):
    """Point a Service at a maintenance backend (its selector replaced) and back afterwards."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        min_length=1, max_length=16, description="The maintenance backend's pod labels.")


class Maintenance(_Model):
    """The seed's maintenance window, entered first and exited last, even when the rollback fails."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("has(self.http) || has(self.service)", "give http, service, or both"),
    ]})

    http: HttpHook | None = None
    service: ServiceSwitch | None = None


class ScaledWorkload(_Model):
    kind: Literal["Deployment", "StatefulSet"] = "Deployment"
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


class SilenceMatcher(_Model):
    name: str = Field(min_length=1, max_length=256)
    value: str = Field(max_length=1024)
    is_regex: bool = False
    is_equal: bool = True


class AlertmanagerSilence(_Model):
    """A silence created through Alertmanager's HTTP API (v2) and expired afterwards."""

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://[^\t\n\f\r ]+$",
                     description="Alertmanager's base URL, e.g. http://alertmanager.monitoring:9093.")
    matchers: list[SilenceMatcher] = Field(min_length=1, max_length=16)
    max_duration_minutes: int = Field(120, ge=5, le=1440, description="The silence ends by itself "
                                      "after this long, should Rewind not get to expire it.")
    credentials_secret_ref: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="Secret with `username` and `password` (basic auth) or `token` (bearer) for Alertmanager.")
    insecure_skip_tls_verify: bool = False


class Monitoring(_Model):
    """Quiet the monitoring while the rollback runs, and resume it afterwards, even on failure."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("has(self.scaleDown) || has(self.alertmanager)", "give scaleDown, alertmanager, or both"),
    ]})

    scale_down: list[ScaledWorkload] | None = Field(
        None, min_length=1, max_length=8, description="Scaled to 0, then back to their replicas.")
    alertmanager: AlertmanagerSilence | None = None


class GitOpsMode(str, Enum):
    SUSPEND = "Suspend"   # suspend the owner's automated sync for the rollback; it stays suspended after
    REFUSE = "Refuse"     # refuse to roll back a target that Argo CD or Flux manages
    IGNORE = "Ignore"     # roll back anyway, with a warning: the owner may put Git's state back


class GitOpsSpec(_Model):
    """What to do about Argo CD or Flux managing a target (default: the policy's gitops.mode)."""

    mode: GitOpsMode | None = Field(None, description="Suspend (the owner's automated sync, until "
                                    "Git matches or a person resumes it), Refuse or Ignore. "
                                    "Default: the policy's.")


class Requester(_Model):
    """A user as the API server authenticated them (request.userInfo), stamped at admission by
    the MutatingAdmissionPolicy rewind-requester; never set by hand (a forged one is overwritten,
    a changed one refused)."""

    username: str = Field(max_length=1024)
    uid: str | None = Field(None, max_length=1024)
    groups: list[Annotated[str, Field(max_length=1024)]] | None = Field(None, max_length=256)


class UndoOf(_Model):
    """The Rollback this one undoes (set by `kubectl rewind undo`)."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    uid: str = Field(min_length=1, max_length=64)


class RollbackSpec(_Model):
    """What to roll back, why, and how urgently."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("has(self.application) || has(self.database) || has(self.secrets) || has(self.certificates)",
             "spec must name at least one target: spec.application (workloads), spec.database, "
             "spec.secrets or spec.certificates"),
    ]})

    severity: Severity = Field(description="Critical, High, Medium or Low; sets the deadline.")
    reason: str = Field(min_length=1, max_length=1024,
                        description="Why the rollback is needed; goes into Events and the report.")
    requested_by: str | None = Field(None, max_length=256, description="Who asked for it, as a "
                                     "name people know (declared, shown only); spec.requester is the identity.")
    requester: Requester | None = Field(None, description="Who created the Rollback, stamped by the API "
                                        "server at admission; Rewind acts only within this user's rights.")
    break_glass: bool = Field(False, description="Start before the approvals are in, where the policy "
                                                 "allows it; loudly notified, approvals collected afterwards.")
    dry_run: bool = Field(False, description="Plan and preflight only: record the diffs, change nothing.")
    application: list[WorkloadTarget] | None = Field(
        None, min_length=1, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["kind", "name"]},
        description="Workloads to restore to an earlier revision, in this order.")
    database: DatabaseSpec | None = None
    secrets: list[SecretTarget] | None = Field(
        None, min_length=1, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Secrets to restore, all together or none (e.g. OAuth client credentials).")
    verification: Verification | None = None
    restart_consumers: bool = Field(
        False, description="Restart (rolling) the workloads that use a restored Secret or certificate "
                           "through env or volume, except those listed in spec.application.")
    certificates: list[CertificateTarget] | None = Field(
        None, min_length=1, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["secretName"]},
        description="TLS Secrets to restore (with the Secrets, all together or none), validated first.")
    notifications: list[Notification] | None = Field(
        None, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    maintenance: Maintenance | None = None
    monitoring: Monitoring | None = None
    gitops: GitOpsSpec | None = None
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=253, description="A Rollback with the key of one that already "
        "ran in this namespace (even one since deleted: re-synced, pruned and re-created, or a "
        "second copy) ends AlreadyApplied, changing nothing. Default for a Rollback that Argo CD or "
        "Flux applied (their tracking label or annotation): its name.")
    undo_of: UndoOf | None = Field(
        None, description="The Rollback this one undoes: `kubectl rewind undo` sets it, with targets that "
                          "put back what that one changed; the report links the two.")


# --- status ----------------------------------------------------------------------------------


class Phase(str, Enum):
    PENDING = "Pending"
    AWAITING_APPROVAL = "AwaitingApproval"
    WAITING_FOR_TARGET = "WaitingForTarget"   # another Rollback holds one of its targets
    RUNNING = "Running"
    PLANNED = "Planned"        # dry run finished
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    INTERRUPTED = "Interrupted"


TERMINAL_PHASES = {Phase.PLANNED.value, Phase.SUCCEEDED.value, Phase.FAILED.value,
                   Phase.INTERRUPTED.value}


class Condition(_Model):
    """metav1.Condition, field for field."""

    type: str = Field(max_length=316, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")
    status: Literal["True", "False", "Unknown"]
    observed_generation: int | None = Field(None, ge=0)
    last_transition_time: datetime.datetime
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(max_length=32768)


class StepKind(str, Enum):
    WORKLOAD_REVISION = "WorkloadRevision"
    DATABASE_CHECK = "DatabaseCheck"
    DATABASE_BACKUP = "DatabaseBackup"
    DATABASE_RESTORE = "DatabaseRestore"
    DATABASE_VERIFY = "DatabaseVerify"
    DATABASE_ACTION = "DatabaseAction"
    SECRETS_RESTORE = "SecretsRestore"
    TLS_VERIFY = "TlsVerify"
    CONSUMERS_RESTART = "ConsumersRestart"
    HTTP_CHECK = "HttpCheck"
    SQL_CHECK = "SqlCheck"
    TLS_CHECK = "TlsCheck"
    DATABASE_SWAP = "DatabaseSwap"
    MAINTENANCE_ENTER = "MaintenanceEnter"
    MAINTENANCE_EXIT = "MaintenanceExit"
    MONITORING_SUSPEND = "MonitoringSuspend"
    MONITORING_RESUME = "MonitoringResume"
    GITOPS_SUSPEND = "GitOpsSuspend"
    GITOPS_HOLD = "GitOpsHold"


class StepAction(str, Enum):
    RESTORE = "Restore"
    NO_OP = "NoOp"


class TargetRef(_Model):
    kind: str
    name: str


class SecretChange(_Model):
    """One Secret of a secrets step: key names, sizes and hashes, never values."""

    name: str
    source: str = Field(description="Where the data comes from: a history copy or another Secret.")
    from_hash: str = Field(description="Hash of the Secret's data at planning.")
    to_hash: str = Field(description="Hash of the data to restore.")
    keys: list[str] = Field(default_factory=list, description="Key names in the restored data, with sizes.")
    fingerprint: str | None = Field(None, description="For a certificate: SHA-256 of the restored leaf.")


class GitOpsOwner(_Model):
    """The Argo CD Application or Flux Kustomization/HelmRelease that manages some targets."""

    kind: str = Field(description="Application, Kustomization or HelmRelease.")
    namespace: str
    name: str
    manages: list[str] = Field(default_factory=list, description="The targets it manages, as Kind/name.")
    must_change_in_git: str | None = Field(None, description="What Git must hold before its sync is resumed.")


class PlanStep(_Model):
    """One step of the plan, resolved at preflight and fixed when the run starts."""

    name: str = Field(description="Stable step id, e.g. deployment/web.")
    kind: StepKind
    target: TargetRef
    action: StepAction
    current_revision: int | None = Field(None, description="The workload's newest revision at planning.")
    to_revision: int | None = Field(None, description="The revision whose template is restored.")
    from_template_hash: str | None = Field(
        None, description="Hash of the workload's pod template at planning; the write needs it unchanged.")
    template_hash: str | None = Field(None, description="Hash of the pod template to restore.")
    diff: str | None = Field(None, description="Unified diff of the pod template change.")
    job_name: str | None = Field(None, description="The Job a database step runs (derived from the UID).")
    secrets: list["SecretChange"] = Field(default_factory=list,
                                          description="For a secrets step: what each Secret goes back to.")
    cleanup: bool = Field(False, description="Runs even when an earlier step failed (exit "
                                             "maintenance, resume monitoring).")
    spec_key: str | None = Field(None, description="Which spec entry the step carries out (a check's, "
                                                   "an action's or a workload's name).")
    owner: GitOpsOwner | None = Field(None, description="For a GitOps step: the owner it suspends or holds.")


class StepState(str, Enum):
    PENDING = "Pending"
    RUNNING = "Running"      # intent recorded; the side effect may or may not have happened
    WAITING = "Waiting"      # side effect done; waiting for the system to converge
    SUCCEEDED = "Succeeded"
    SKIPPED = "Skipped"
    FAILED = "Failed"
    INTERRUPTED = "Interrupted"


class StepRecord(_Model):
    """The ledger entry of a step: intent before the side effect, outcome after it."""

    name: str
    state: StepState
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    attempts: int = 0
    failures: int = Field(0, description="Failed measurements of a check step.")
    consecutive_failures: int = Field(0, description="Failed measurements of a check step in a row, now.")
    inconclusive: int = Field(0, description="Inconclusive measurements of a check step.")
    message: str | None = None
    reason: str | None = Field(None, description="Why a step failed, was skipped or interrupted.")
    next_attempt_at: datetime.datetime | None = Field(None, description="When a retried hook call is next due.")
    deadline: datetime.datetime | None = Field(
        None, description="While the step waits: when it gives up waiting (and fails with WaitTimedOut).")
    restored_revision: int | None = Field(None, description="Revision number the controller gave the restored template.")


class VerificationOutcome(str, Enum):
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


class VerificationResult(_Model):
    name: str
    kind: str
    outcome: VerificationOutcome
    detail: str | None = None
    checked_at: datetime.datetime | None = None


class DatabaseStatus(_Model):
    """What the database steps found and made; names only, never credentials."""

    live_database: str | None = None
    staging_database: str | None = None
    pre_rollback_database: str | None = Field(None, description="The old live database, kept aside.")
    backup_source: str | None = None
    backup_source_sha256: str | None = None
    backup_row_counts: dict[str, int] | None = Field(
        None, description="Row counts from the backup's manifest, compared by verification.")
    pre_rollback_backup: str | None = Field(None, description="claim:path of the pre-rollback dump.")
    pre_rollback_backup_sha256: str | None = None
    pre_rollback_backup_bytes: int | None = None
    swapped_at: datetime.datetime | None = None


class NotificationState(str, Enum):
    PENDING = "Pending"
    SENT = "Sent"
    FAILED = "Failed"


class NotificationRecord(_Model):
    """One notification of one event to one channel: recorded before it is sent (the outbox), so a
    restarted operator sends it again with the same idempotency key, never a second one."""

    channel: str
    event: NotificationEvent
    key: str = Field(description="Idempotency key: the same on every attempt of this notification.")
    message: str = Field(max_length=2048)
    state: NotificationState = NotificationState.PENDING
    attempts: int = 0
    queued_at: datetime.datetime
    phase: str | None = Field(None, description="The rollback's phase when queued (every attempt sends the same).")
    progress: str | None = None
    next_attempt_at: datetime.datetime | None = None
    sent_at: datetime.datetime | None = None
    last_error: str | None = Field(None, description="Why the last attempt failed (never a URL or credential).")


class HookStatus(_Model):
    """What the maintenance and monitoring hooks changed, so that exit and resume put it back."""

    service_selector: dict[str, str] | None = Field(None, description="The Service's selector before the switch.")
    scaled_replicas: dict[str, int] | None = Field(None, description="kind/name: replicas before scaling down.")
    silence_id: str | None = None
    silence_ends_at: datetime.datetime | None = None
    done: dict[str, str] = Field(default_factory=dict, description="Hook actions done, with what each did "
                                 "(a retry or a restarted operator skips them).")


class ReportRef(_Model):
    config_map_ref: str | None = Field(None, description="ConfigMap holding the incident report (report.md).")
    sha256: str | None = Field(None, description="Hash of the report last written.")
    message: str | None = Field(None, description="Why the report could not be written (while retrying, "
                                                  "or after giving up at the deadline).")
    deadline: datetime.datetime | None = Field(None, description="Until when writing the report is retried.")


class ApprovalRecord(_Model):
    """A RollbackApproval as the operator judged it (identity from the API server, role from RBAC)."""

    approval: str = Field(description="The RollbackApproval object.")
    role: str
    approver: str = Field(description="Username the API server stamped on the approval.")
    decision: str
    at: datetime.datetime | None = None
    counted: bool = Field(description="Whether it counts toward the policy's approvals.")
    reason: str | None = Field(None, description="Why it does not count: NotInRole, SelfApproval, "
                                                 "Expired, OtherRollback.")


class TargetLease(_Model):
    """A coordination.k8s.io Lease the rollback holds on one target while it runs."""

    lease: str = Field(description="namespace/name of the Lease.")
    target: str = Field(description="What it guards, e.g. Deployment booking/web.")


class GitOpsRecord(_Model):
    """An owner whose automated sync Rewind suspended: recorded before the change, so that it can
    be put back exactly (`kubectl rewind resume-sync`); never resumed by the operator."""

    kind: str
    namespace: str
    name: str
    previous: str = Field(description="Its sync setting before the suspension, as JSON: Argo CD's "
                                      "spec.syncPolicy.automated, Flux's spec.suspend.")
    suspended_at: datetime.datetime | None = Field(None, description="When the suspension was written.")
    resumed: bool = False
    must_change_in_git: str | None = Field(None, description="What Git must hold before its sync is resumed.")


class RollbackStatus(_Model):
    observed_generation: int | None = None
    phase: Phase | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    plan: list[PlanStep] = Field(default_factory=list)
    steps: list[StepRecord] = Field(default_factory=list)
    progress: str | None = Field(None, description="Current step out of all steps, as n/m.")
    started_at: datetime.datetime | None = None
    deadline: datetime.datetime | None = None
    completed_at: datetime.datetime | None = None
    within_target: bool | None = None
    duration: str | None = Field(None, description="From start to completion, e.g. 1m12s.")
    verification: list[VerificationResult] = Field(default_factory=list)
    database: DatabaseStatus | None = None
    notifications: list[NotificationRecord] = Field(default_factory=list)
    hooks: HookStatus | None = None
    report: ReportRef | None = None
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    approved_at: datetime.datetime | None = Field(None, description="When the policy's approvals were "
                                                  "complete (or the break-glass start).")
    break_glass: bool | None = Field(None, description="Started before its approvals were in.")
    leases: list[TargetLease] = Field(default_factory=list, description="Targets held while running.")
    policy: str | None = Field(None, description="The policy the rollback runs under.")
    gitops: list[GitOpsRecord] = Field(default_factory=list, description="GitOps owners whose sync "
                                       "Rewind suspended; they stay suspended until a person resumes them.")
    idempotency_key: str | None = Field(None, description="The key this rollback claimed (Lease "
                                        "rewind-key-<hash> in the namespace).")


class Rollback(BaseModel):
    """The whole object, as the operator reads it."""

    model_config = ConfigDict(extra="allow")

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: dict[str, Any]
    spec: RollbackSpec
    status: RollbackStatus = Field(default_factory=RollbackStatus)


SPEC_IMMUTABLE_RULE = _cel(
    "!has(oldSelf.status) || !has(oldSelf.status.startedAt) || self.spec == oldSelf.spec",
    "spec is immutable once the rollback has started; create a new Rollback instead",
    reason="FieldValueForbidden", fieldPath=".spec")
