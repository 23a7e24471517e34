"""The one registry of step kinds: which function advances each `StepKind`, which domain
condition it reports to, and the preflight of every step module.

Every step module offers the same two things: `preflight(reader, request) -> Found` (reads only;
raises StepFailed when the rollback must be refused) and `advance(ctx, step, rec) -> Wait | None`.
A new step kind is one new module and its lines here.
"""

from __future__ import annotations

from typing import Callable

from rewind.api import conditions as C
from rewind.api.v1alpha1 import StepKind
from rewind.context import Context, Found, Request, Wait
from rewind.api.v1alpha1 import PlanStep, StepRecord
from rewind.steps import (
    certificates, consumers, database, destinations, gitops, maintenance, monitoring, notifications, secrets,
    verification, workload,
)

Advance = Callable[[Context, PlanStep, StepRecord], "Wait | None"]
Preflight = Callable[[object, Request], Found]

ADVANCE: dict[StepKind, Advance] = {
    StepKind.MAINTENANCE_ENTER: maintenance.advance,
    StepKind.MAINTENANCE_EXIT: maintenance.advance,
    StepKind.MONITORING_SUSPEND: monitoring.advance,
    StepKind.MONITORING_RESUME: monitoring.advance,
    StepKind.DATABASE_CHECK: database.advance_check,
    StepKind.DATABASE_BACKUP: database.advance_backup,
    StepKind.DATABASE_RESTORE: database.advance_restore,
    StepKind.DATABASE_VERIFY: database.advance_verify,
    StepKind.DATABASE_ACTION: database.advance_action,
    StepKind.DATABASE_SWAP: database.advance_swap,
    StepKind.SECRETS_RESTORE: secrets.advance,
    StepKind.CONSUMERS_RESTART: consumers.advance,
    StepKind.WORKLOAD_REVISION: workload.advance,
    StepKind.TLS_VERIFY: certificates.advance,
    StepKind.HTTP_CHECK: verification.advance,
    StepKind.SQL_CHECK: verification.advance,
    StepKind.TLS_CHECK: verification.advance,
    StepKind.GITOPS_SUSPEND: gitops.advance,
    StepKind.GITOPS_HOLD: gitops.advance,
}

# Every preflight runs (so a refusal lists all problems at once); plan.order sorts what they found.
# Where the rollback will connect is checked first: its refusal's reason comes first.
PREFLIGHTS: tuple[Preflight, ...] = (
    destinations.preflight, maintenance.preflight, monitoring.preflight, database.preflight, secrets.preflight,
    workload.preflight, verification.preflight, notifications.preflight, gitops.preflight,
)

# What to undo when the engine stops a step of this kind mid-way (Running) and will not call it
# again: the Rollback deleted, or given up after repeated errors.
RELEASE: dict[StepKind, Callable[[Context, PlanStep, StepRecord], None]] = {
    StepKind.DATABASE_SWAP: database.release_swap,
}

# While a step of the first kind waits, the engine starts the next step too when it is of the
# second kind, and moves it on at each look: the pre-rollback dump of the live database and the
# restore into staging touch different databases, so they run at the same time. The steps still
# finish in plan order, and nothing after them (the swap) starts before both have succeeded.
ALONGSIDE: dict[StepKind, StepKind] = {
    StepKind.DATABASE_BACKUP: StepKind.DATABASE_RESTORE,
}

# The domain condition a failed step of each kind sets to False.
DOMAINS: dict[StepKind, str] = {
    StepKind.WORKLOAD_REVISION: C.APPLICATION_RESTORED,
    **{k: C.DATABASE_RESTORED for k in (StepKind.DATABASE_CHECK, StepKind.DATABASE_BACKUP,
                                        StepKind.DATABASE_RESTORE, StepKind.DATABASE_VERIFY,
                                        StepKind.DATABASE_ACTION, StepKind.DATABASE_SWAP)},
    StepKind.SECRETS_RESTORE: C.SECRETS_RESTORED,
    StepKind.CONSUMERS_RESTART: C.SECRETS_RESTORED,
    StepKind.MAINTENANCE_EXIT: C.HOOKS_UNDONE,
    StepKind.MONITORING_RESUME: C.HOOKS_UNDONE,
}

assert set(ADVANCE) == set(StepKind), f"step kinds without an advance: {set(StepKind) - set(ADVANCE)}"
