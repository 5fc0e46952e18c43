"""Claim turns: several schedulers take turns at claiming every free slot.

An even split of the parallelism between live peers (each claims at most
⌈parallelism / peers⌉) keeps work spread, but makes each scheduler's rounds that
many times smaller, and a round's fixed cost (a transaction, a dozen statements,
the claim lock) is then paid that many times per task. With turns, one scheduler at
a time (the one whose turn began last) claims every free slot for `claim_turn`
seconds; the others claim nothing meanwhile. Then the peer longest in line takes the
next one: the holder, finding its turn over, claims nothing more and wakes that peer
(`wakeup.turn_topic`). A peer that does not take its turn
within half a turn (frozen, or slow to wake) lets any other take it, so a frozen
peer costs at most that, until the instance timeout declares it dead.

The record is `scheduler_instance.claimed_at`, read and written under the claim lock.
An instance that never had a turn queues by when it registered, behind the peers whose
last turn began before that: one that just started (a rolling restart's replacement)
is still importing, parsing and compiling its first statements, and handed the turn at
once it claimed nothing for half a turn, then claimed in slow rounds. Timestamps written
by one host are compared with another's clock: clocks must agree well within half a
turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum


class Turn(Enum):
    HOLD = "hold"
    """This instance's turn: claim every free slot."""
    TAKE = "take"
    """This instance's turn begins now (record it): claim every free slot."""
    HAND_ON = "hand_on"
    """Its turn is over: claim nothing and wake the next holder."""
    WAIT = "wait"
    """A peer's turn: claim nothing."""


@dataclass(slots=True)
class TurnRule:
    me: str
    length: float
    """Seconds of a turn (`claim_turn`)."""
    handed_on: bool = False
    """Set by the claim that handed the turn on: look again within half a turn, in case
    the next holder does not take it (frozen)."""
    waiting_on: str | None = None
    """Set by a decision to wait: the peer holding the turn."""
    held_until: datetime | None = None
    """The end of the turn this instance took (its own clock; set by the claim that takes
    it): until then it holds the turn without reading the peers' turns, since none may
    take it before it is over."""

    def decide(
        self, turns: Mapping[str, datetime], now: datetime, newcomers: Set[str] = frozenset()
    ) -> Turn:
        """What this instance may claim, from the live peers' places in line (with its
        own): when each one's last turn began, or when it registered for `newcomers`,
        the peers that never had a turn."""
        if not turns or set(turns) == {self.me}:
            return Turn.TAKE
        holder = _holder(turns, newcomers)
        if self.me not in turns:
            return self._wait(holder)  # its heartbeat is late: a peer may be adopting its tries
        if holder is None:  # no turn was ever taken: whoever claims first takes it
            return Turn.TAKE
        age = now - turns[holder]
        turn = timedelta(seconds=self.length)
        if age < turn:
            return Turn.HOLD if holder == self.me else self._wait(holder)
        following = self.following(turns, newcomers)
        if following == self.me or age >= turn * 1.5:
            return Turn.TAKE
        return Turn.HAND_ON if holder == self.me else self._wait(following)

    def _wait(self, holder: str | None) -> Turn:
        self.waiting_on = holder
        return Turn.WAIT

    def following(self, turns: Mapping[str, datetime], newcomers: Set[str] = frozenset()) -> str:
        """The next holder: the peer longest in line (the holder aside; of two in line
        since the same instant, one that never had a turn)."""
        holder = _holder(turns, newcomers)
        waiting = {i: at for i, at in turns.items() if i != holder}
        return min(waiting, key=lambda i: (waiting[i], i not in newcomers, i))


def _holder(turns: Mapping[str, datetime], newcomers: Set[str]) -> str | None:
    """The peer whose turn began last (a newcomer's place is no turn)."""
    taken = [i for i in turns if i not in newcomers]
    return max(taken, key=lambda i: (turns[i], i)) if taken else None
