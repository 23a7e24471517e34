"""One measurement of a verification check, whatever its kind (HTTP, SQL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["Passed", "Failed", "Inconclusive"]


@dataclass(frozen=True)
class Measurement:
    """`Failed`: the target answered wrongly, or not at all. `Inconclusive`: the check itself
    could not get an answer (its query errored, timed out, returned too many rows...).
    `detail` is one sentence for a person on call; never a credential or a secret value."""

    outcome: Outcome
    detail: str

    @property
    def ok(self) -> bool:
        return self.outcome == "Passed"
