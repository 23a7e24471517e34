"""What a step sees of the run: the Rollback, its status, the ledger helper, and how to wait.

Every step kind has the same contract (see `registry.py`): a read-only `preflight` and an
`advance(ctx, step, rec)` that returns None when the step is finished, or a `Wait`: until when
at the latest to look again, and which object's change wakes it earlier. Waiting costs no write:
the handler wakes on a watch of that object or on the timer, never on a kopf retry.

The ledger moves (`begin`, `waiting`, `succeed`, `skip`, `retry_at`) are the only way a step
changes its record's state, so intent is always saved before a side effect, the deadline of every
wait is in status, and the crash points of the test suite sit at the same boundaries for every
step kind.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Callable, Protocol

from rewind import crashpoints, metrics
from rewind.api import conditions as C
from rewind.api.errors import ReasonedError
from rewind.api.v1alpha1 import Condition, PlanStep, Rollback, StepRecord, StepState


class StepFailed(ReasonedError):
    """A step (or its preflight) cannot go on; the rollback fails with this reason and message."""

    retryable = False   # a hook's step may retry a few times those that say so


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


class Reader(Protocol):
    """What steps need of the Kubernetes API (implemented by adapters.kube.Kube)."""

    def get(self, res, namespace: str, name: str) -> dict: ...
    def list(self, res, namespace: str, label_selector: str | None = None) -> list[dict]: ...


@dataclass(frozen=True)
class Request:
    """What preflight is asked about: the Rollback's identity, its parsed spec, and the policy it
    runs under (where the operator may connect, which Job images it may run)."""

    namespace: str
    name: str
    uid: str
    spec: object                  # api.v1alpha1.RollbackSpec
    policy: object = None         # api.policy.RollbackPolicySpec (None: api.policy.SEED_POLICY)
    job_images: tuple[str, ...] = ()   # the images database Jobs may run (policy, else --job-image)


@dataclass
class Found:
    """What a step kind's preflight found: its plan steps (any order within the kind) and warnings."""

    steps: list[PlanStep] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Watched:
    """An object whose change should wake a waiting step: (resource, name) in the Rollback's
    namespace, as seen at `resource_version` (changes after it wake the step)."""

    resource: object              # adapters.kube.Resource
    name: str | None              # None: any object of the collection (within label_selector)
    resource_version: str | None = None
    label_selector: str | None = None


@dataclass(frozen=True)
class Wait:
    """A step waits: look again at `at` at the latest, or as soon as `watch` changes."""

    at: datetime.datetime
    watch: Watched | None = None
    reason: str = ""

    def seconds(self, now: datetime.datetime) -> float:
        return max(0.0, (self.at - now).total_seconds())


def earliest(*waits: "Wait | None") -> "Wait | None":
    """The wait that ends first (its watch kept); None when there is none."""
    present = [w for w in waits if w is not None]
    return min(present, key=lambda w: w.at) if present else None


PROGRESS_EVERY = datetime.timedelta(seconds=5)
_progress_saved: dict[tuple[str, str], datetime.datetime] = {}


@dataclass
class Context:
    kube: object                                     # adapters.kube.Kube (the Reader and writes)
    obj: dict
    save_status: Callable[[dict], dict]              # writes status; returns the new object
    emit: Callable[[str, str, str], None]            # (type, reason, message) -> Event
    clock: Callable[[], datetime.datetime] = utcnow
    rollback: Rollback = field(init=False)
    _policy: object = field(default=None, init=False, repr=False)
    _policy_name: str = field(default="", init=False, repr=False)
    _after_save: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.rollback = Rollback.model_validate(self.obj)

    @property
    def namespace(self) -> str:
        return self.obj["metadata"]["namespace"]

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def uid(self) -> str:
        return self.obj["metadata"]["uid"]

    @property
    def generation(self) -> int:
        return self.obj["metadata"].get("generation", 1)

    @property
    def status(self):
        return self.rollback.status

    @property
    def request(self) -> Request:
        from rewind import authz
        return Request(self.namespace, self.name, self.uid, self.rollback.spec, self.policy,
                       authz.job_images(self.policy))

    @property
    def policy(self):
        """The policy this Rollback runs under (api.policy.RollbackPolicySpec), read once per pass."""
        if self._policy is None:
            from rewind import authz
            self._policy_name, self._policy = authz.load_policy(self.kube, self.namespace)
        return self._policy

    @property
    def policy_name(self) -> str:
        self.policy
        return self._policy_name

    def condition(self, type_: str, status: str, reason: str, message: str) -> None:
        current = [c.dump() for c in self.status.conditions]
        updated = C.set_condition(current, type_, status, reason, message, self.generation,
                                  at=self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.status.conditions = [Condition.model_validate(c) for c in updated]

    def drop_condition(self, type_: str) -> None:
        self.status.conditions = [c for c in self.status.conditions if c.type != type_]

    def save(self) -> None:
        """Writes status when it changed (the saver skips identical writes); fields set to None
        are cleared."""
        self.status.observed_generation = self.generation
        self.obj = self.save_status(self.status.dump())
        events, self._after_save = self._after_save, []
        for event in events:
            self.emit(*event)

    def emit_once_saved(self, type_: str, reason: str, message: str) -> None:
        """An Event about something status will hold but does not yet: posted after the next
        write of status succeeds, so a pass that fails before it (and is done again) never tells
        it twice."""
        self._after_save.append((type_, reason, message))

    def _unsaved(self) -> bool:
        """Whether status holds changes not yet written (other than a waiting step's progress)."""
        self.status.observed_generation = self.generation
        return self.status.dump() != (self.obj.get("status") or {})

    # --- the ledger ----------------------------------------------------------------------------

    def begin(self, step: PlanStep, rec: StepRecord, message: str, condition: str | None = None) -> bool:
        """Records the intent to act (Running) before the side effect, once. True when this call
        moved the step from Pending (so the side effect has certainly not happened yet)."""
        if rec.state != StepState.PENDING.value:
            return False
        rec.state = StepState.RUNNING.value
        rec.attempts += 1
        rec.started_at = rec.started_at or self.clock()
        rec.message = message
        if condition:
            self.condition(condition, "False", C.EXECUTING, message)
        self.save()
        crashpoints.reach(f"{step.kind}:after-intent")
        return True

    def waiting(self, step: PlanStep, rec: StepRecord, message: str, deadline: datetime.datetime,
                *, look_again: float, watch: Watched | None = None, state: str | None = None,
                on_deadline: Callable[[], None] | None = None) -> Wait:
        """The step waits, at most until `deadline` (recorded in status). Saves only when what
        status says changed. At the deadline `on_deadline` runs (it raises StepFailed), or the
        step fails with reason WaitTimedOut."""
        now = self.clock()
        if now >= deadline:
            if on_deadline:
                on_deadline()
            raise StepFailed(C.WAIT_TIMED_OUT, f"{message}: still so at the step's deadline "
                                               f"({deadline:%H:%M:%S}Z); nothing more was done")
        moved = rec.deadline != deadline or bool(state and rec.state != state) or self._unsaved()
        key = (self.uid, step.name)
        # Progress text alone ("1 of 2 replicas updated") is written at most every few seconds.
        stale = rec.message != message and now - _progress_saved.get(key, now - PROGRESS_EVERY) >= PROGRESS_EVERY
        rec.message, rec.deadline = message, deadline
        if state:
            rec.state = state
        if moved or stale:
            self.save()
            _progress_saved[key] = now
        at = min(deadline, now + datetime.timedelta(seconds=look_again))
        return Wait(at=at, watch=watch, reason=f"{step.name}: {message}")

    def retry_at(self, step: PlanStep, rec: StepRecord, message: str, at: datetime.datetime) -> Wait:
        """A retried step (hooks) is next due at `at`: recorded, then waited for by the timer."""
        rec.message, rec.next_attempt_at = message, at
        self.save()
        return Wait(at=at, reason=f"{step.name}: {message}")

    def succeed(self, step: PlanStep, rec: StepRecord, message: str, reason: str | None = None,
                emit: bool = True) -> None:
        rec.state, rec.finished_at, rec.message = StepState.SUCCEEDED.value, self.clock(), message
        rec.deadline = rec.next_attempt_at = None
        self.save()
        metrics.observe_step(step.kind, rec)
        crashpoints.reach(f"{step.kind}:after-outcome")
        if emit and reason:
            self.emit("Normal", reason, message)

    def skip(self, step: PlanStep, rec: StepRecord, message: str, reason: str | None = None,
             emit: bool = False) -> None:
        rec.state, rec.finished_at, rec.message = StepState.SKIPPED.value, self.clock(), message
        rec.reason = reason
        rec.deadline = rec.next_attempt_at = None
        self.save()
        if emit and reason:
            self.emit("Normal", reason, message)
