"""What a step sees of the run: the Rollback, its status, and how to save and report."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Callable

from rewind.adapters.kube import Kube
from rewind.api import conditions as C
from rewind.api.errors import ReasonedError
from rewind.api.v1alpha1 import Condition, Rollback


class StepFailed(ReasonedError):
    """A step (or its preflight) cannot go on; the rollback fails with this reason and message."""

    retryable = False   # a hook's step may retry a few times those that say so


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


@dataclass
class Context:
    kube: Kube
    obj: dict
    save_status: Callable[[dict], dict]              # writes status; returns the new object
    emit: Callable[[str, str, str], None]            # (type, reason, message) -> Event
    clock: Callable[[], datetime.datetime] = utcnow
    rollback: Rollback = field(init=False)

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

    def condition(self, type_: str, status: str, reason: str, message: str) -> None:
        current = [c.dump() for c in self.status.conditions]
        updated = C.set_condition(current, type_, status, reason, message, self.generation,
                                  at=self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.status.conditions = [Condition.model_validate(c) for c in updated]

    def drop_condition(self, type_: str) -> None:
        self.status.conditions = [c for c in self.status.conditions if c.type != type_]

    def save(self) -> None:
        self.status.observed_generation = self.generation
        self.obj = self.save_status(self.status.dump())
