"""Which loops of this scheduler made progress lately: the evidence behind `/healthz`.

A scheduler whose event loop still answers HTTP can be stuck all the same: an
await that never returns (a hung connection, a lock never released) stops one
loop while the others, and the ops server, carry on. So each loop records when
it last completed a turn (`beat`), and declares how often it is due (`expect`):
a loop silent for longer than its period plus `stall_after` is stale, and
`/healthz` answers 503 naming it, so Kubernetes restarts the process.

The loops of one round (event recording, parse, sanity, the instance heartbeat)
only run while rounds complete. A round that fails (the database is away) is no
sign of a stuck loop: it excuses the phases it did not reach (`excuse`), and
readiness, not liveness, reports the database. A round that hangs does not end
at all: the round goes stale, reported with the phase it hangs in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

ROUND = "scheduling round"
EVENTS = "event recording"
PARSE = "parse"
SANITY = "sanity"
HEARTBEAT = "instance heartbeat"


@dataclass(slots=True)
class _Loop:
    period: float
    last: float


@dataclass(frozen=True, slots=True)
class Stale:
    name: str
    silent: float
    """Seconds since its last progress."""
    period: float
    doing: str | None = None
    """The phase a stale round is in, if it is in one."""

    def describe(self) -> str:
        where = f", in {self.doing}" if self.doing else ""
        return (
            f"{self.name}: no progress for {self.silent:.0f}s (due every {self.period:g}s{where})"
        )


class Liveness:
    """Last progress of each loop (monotonic seconds), and the verdict."""

    def __init__(self, stall_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after = stall_after
        self._clock = clock
        self._loops: dict[str, _Loop] = {}
        self._phase: str | None = None

    def expect(self, name: str, period: float) -> None:
        """Follow loop `name`, due every `period` seconds, from now."""
        self._loops[name] = _Loop(period, self._clock())

    def beat(self, name: str) -> None:
        loop = self._loops.get(name)
        if loop is not None:
            loop.last = self._clock()

    def enter(self, phase: str | None) -> None:
        """The round is now in `phase` (None: between phases)."""
        self._phase = phase

    def excuse(self) -> None:
        """A round failed before its phases ran: they are not stuck (see the module doc)."""
        now = self._clock()
        for loop in self._loops.values():
            loop.last = now
        self._phase = None

    def stale(self, others: Mapping[str, tuple[float, float]] | None = None) -> list[Stale]:
        """The stale loops: this scheduler's, and `others` (name → (last, period): a
        launcher's loops, on the same monotonic clock)."""
        now = self._clock()
        loops = {n: (loop.last, loop.period) for n, loop in self._loops.items()}
        loops.update(others or {})
        found = []
        for name, (last, period) in loops.items():
            silent = now - last
            if silent > period + self.stall_after:
                doing = self._phase if name == ROUND else None
                found.append(Stale(name, silent, period, doing))
        return found
