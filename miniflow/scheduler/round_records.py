"""Small records the modules of a round share: what one round did, what is in flight,
runs' template inputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from miniflow.store.records import RunInfo


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
    runs_ended: list[tuple[str, str]] = field(default_factory=list)
    """(dag_id, run_id) of the runs this round ended (committed)."""
    exit_runs: set[int] = field(default_factory=set)
    """Runs whose views took this round's exits."""
    made_ready: bool = False
    """The round made tasks ready (scheduled)."""
    follow_up: bool = False
    """The round left work for the next one (events taken but not recorded, runs to read
    in full, tries that ended outside its readiness)."""

    @property
    def busy(self) -> bool:
        """Whether the next round should start at once rather than wait for an event.

        A round records its events, decides readiness downstream of them and claims and
        launches what became ready, all before it returns: what it did (events,
        changes, launches) needs no second round. New launcher events end the wait at
        once; only work it left behind (`follow_up`) or new runs call for another."""
        return self.follow_up or bool(self.runs_created)


@dataclass(slots=True)
class InFlight:
    ti_id: int
    run_pk: int
    kind: str
    max_tries: int


class RunInfoCache:
    """Runs' template inputs (ids, dates, conf), which never change once a run exists:
    a claim renders specs without reading their runs again. Bounded: cleared when full."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._infos: dict[int, RunInfo] = {}

    def missing(self, pks: Iterable[int]) -> list[int]:
        return sorted({pk for pk in pks if pk not in self._infos})

    def add(self, infos: Iterable[RunInfo]) -> None:
        if len(self._infos) > self.LIMIT:
            self._infos.clear()
        self._infos.update((info.id, info) for info in infos)

    def get(self, pk: int) -> RunInfo | None:
        return self._infos.get(pk)

    def drop(self, pk: int) -> None:
        self._infos.pop(pk, None)
