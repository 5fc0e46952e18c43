"""Small records the scheduler's modules share: what one round did, what is in flight."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class TickStats:
    events: int = 0
    runs_created: int = 0
    changed: int = 0
    launched: int = 0
    finished: Counter[str] = field(default_factory=Counter)
    """Task instances this round moved to a final state, by state (committed with it)."""
    exits: Counter[str] = field(default_factory=Counter)
    """Attempt exits this round recorded, by reason."""

    @property
    def busy(self) -> bool:
        return bool(self.events or self.runs_created or self.changed or self.launched)


@dataclass(slots=True)
class InFlight:
    ti_id: int
    run_pk: int
    kind: str
    max_tries: int
