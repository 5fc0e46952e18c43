"""Claim turns between live peers (`scheduler.turns`): who claims every free slot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from miniflow.scheduler.turns import Turn, TurnRule

T0 = datetime(2026, 12, 3, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _rule(me: str) -> TurnRule:
    return TurnRule(me, length=1.0)


def test_the_holder_keeps_its_turn_and_the_others_wait() -> None:
    turns = {"a": _at(0), "b": _at(5), "c": _at(3)}
    assert _rule("b").decide(turns, _at(5.5)) is Turn.HOLD
    assert _rule("a").decide(turns, _at(5.5)) is Turn.WAIT
    assert _rule("c").decide(turns, _at(5.5)) is Turn.WAIT


def test_an_ended_turn_goes_to_the_peer_that_waited_longest() -> None:
    turns = {"a": _at(0), "b": _at(5), "c": _at(3)}
    assert _rule("b").decide(turns, _at(6.2)) is Turn.HAND_ON
    assert _rule("a").decide(turns, _at(6.2)) is Turn.TAKE
    assert _rule("c").decide(turns, _at(6.2)) is Turn.WAIT
    assert _rule("b").following(turns) == "a"


def test_a_turn_not_taken_within_half_a_turn_goes_to_whoever_claims() -> None:
    """The next in line may be frozen (not yet declared dead): no claim waits on it."""
    turns = {"a": _at(0), "b": _at(5), "c": _at(3)}
    assert _rule("c").decide(turns, _at(6.6)) is Turn.TAKE
    assert _rule("b").decide(turns, _at(6.6)) is Turn.TAKE


def test_alone_it_always_claims() -> None:
    assert _rule("a").decide({"a": _at(0)}, _at(9)) is Turn.TAKE
    assert _rule("a").decide({}, _at(9)) is Turn.TAKE


def test_a_scheduler_whose_heartbeat_is_late_claims_nothing() -> None:
    """Its peers may be adopting its tries: claiming more would only add to them."""
    assert _rule("a").decide({"b": _at(0), "c": _at(1)}, _at(1.5)) is Turn.WAIT


def test_a_waiting_scheduler_knows_whom_to_wake_for_work_it_made_ready() -> None:
    """The holder, or once its turn is over the peer next in line: the one to claim."""
    turns = {"a": _at(0), "b": _at(5), "c": _at(3)}
    waiting = _rule("c")
    assert waiting.decide(turns, _at(5.5)) is Turn.WAIT
    assert waiting.waiting_on == "b"
    assert waiting.decide(turns, _at(6.2)) is Turn.WAIT
    assert waiting.waiting_on == "a"


def test_a_scheduler_that_just_started_queues_behind_the_peers_that_were_there() -> None:
    """A rolling restart's replacement is still starting (imports, a parse, its first
    statements): handed the next turn at once, it left every slot unclaimed for half a
    turn. It waits behind the peers whose last turn began before it registered."""
    turns = {"a": _at(3), "b": _at(5), "new": _at(4)}  # `new` registered at 4
    assert _rule("b").following(turns, {"new"}) == "a"
    assert _rule("a").decide(turns, _at(6.2), {"new"}) is Turn.TAKE
    assert _rule("new").decide(turns, _at(6.2), {"new"}) is Turn.WAIT
    assert _rule("b").decide(turns, _at(6.2), {"new"}) is Turn.HAND_ON
    # Its place is no turn: the holder is still `b` while `new` waits.
    assert _rule("new").decide(turns, _at(5.5), {"new"}) is Turn.WAIT
    assert _rule("b").decide(turns, _at(5.5), {"new"}) is Turn.HOLD
    # Once the peers that were there had their turns, it is next.
    later = {"a": _at(6.2), "b": _at(5), "new": _at(4)}
    assert _rule("a").following(later, {"new"}) == "new"
    assert _rule("new").decide(later, _at(7.3), {"new"}) is Turn.TAKE


def test_before_any_turn_was_taken_whoever_claims_first_takes_one() -> None:
    turns = {"a": _at(1), "b": _at(2)}
    assert _rule("a").decide(turns, _at(2.5), {"a", "b"}) is Turn.TAKE
    assert _rule("b").decide(turns, _at(2.5), {"a", "b"}) is Turn.TAKE
    assert _rule("a").following(turns, {"a", "b"}) == "a"
