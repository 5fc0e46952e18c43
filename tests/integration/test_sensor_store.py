"""A rescheduled sensor in the store, on both backends: no slot while it waits, its next
poke launched once, and only after the last poke's exit is recorded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import states
from miniflow.store import task_instances as store_tis
from tests.integration.test_store_transitions import NOW, _queue_all, _setup


async def _running_try(engine: AsyncEngine) -> tuple[Any, int, int]:
    """One task instance, claimed and running as try 1 with its attempt open."""
    sessions, pk = await _setup(engine, n=1)
    claimed = await _queue_all(sessions, pk)
    ((ti_id, try_number),) = claimed.items()
    async with store_engine.transaction(sessions) as session:
        await store_attempts.open_attempts(
            session, [(ti_id, "d", "r1", "t0", try_number, -1)], launcher="local",
            scheduler_id="s1", now=NOW,
        )  # fmt: skip
        await store_tis.worker_claim(session, "d", "r1", "t0", try_number, NOW)
    return sessions, ti_id, try_number


async def _close(sessions: Any, ti_id: int, try_number: int, state: str) -> None:
    async with store_engine.transaction(sessions) as session:
        await store_attempts.close(
            session,
            [store_attempts.AttemptEnd(ti_id, try_number, state, 0, "Completed", None, None, NOW)],
        )


async def test_reschedule_ends_the_try_and_frees_its_slot_without_using_a_retry(
    engine: AsyncEngine,
) -> None:
    sessions, ti_id, try_number = await _running_try(engine)
    poke_at = NOW + timedelta(seconds=30)
    async with store_engine.transaction(sessions) as session:
        before = (await store_tis.fetch(session, [ti_id]))[ti_id].max_tries
        active_before = await store_tis.active_counts(session)
        assert await store_tis.reschedule(session, ti_id, try_number, poke_at, NOW)
        # a second writer of the same try (a stale worker) changes nothing
        assert not await store_tis.reschedule(session, ti_id, try_number, poke_at, NOW)
        row = (await store_tis.fetch(session, [ti_id]))[ti_id]
        active_after = await store_tis.active_counts(session)
    assert row.state == states.UP_FOR_RESCHEDULE and row.next_retry_at == poke_at
    assert row.max_tries == before + 1  # the next poke is a try that costs no retry
    assert active_before[0] == 1 and active_after[0] == 0  # no parallelism slot held


async def test_next_poke_waits_for_the_last_pokes_exit_then_is_claimed_once(
    engine: AsyncEngine,
) -> None:
    """The worker recorded "reschedule at T"; the scheduler died before recording the
    process's exit. Until a scheduler records that exit (adoption), the sensor stays put;
    then exactly one next poke is claimed, as a new try."""
    sessions, ti_id, try_number = await _running_try(engine)
    due = NOW + timedelta(seconds=5)
    later = due + timedelta(seconds=1)
    async with store_engine.transaction(sessions) as session:
        assert await store_tis.reschedule(session, ti_id, try_number, due, NOW)
        assert await store_tis.promote_due_retries(session, NOW) == []  # not due yet
        # the exit wakes the daemon, not a due time that would make it spin until then
        assert await store_tis.next_retry_due(session) is None
        assert await store_tis.promote_due_retries(session, later) == []  # exit unrecorded
        assert (await store_tis.fetch(session, [ti_id]))[ti_id].state == states.UP_FOR_RESCHEDULE
    await _close(sessions, ti_id, try_number, states.UP_FOR_RESCHEDULE)
    async with store_engine.transaction(sessions) as session:
        assert await store_tis.next_retry_due(session) == due  # the daemon wakes for it
        promoted = await store_tis.promote_due_retries(session, later)
        again = await store_tis.promote_due_retries(session, later)
        first = await store_tis.mark_queued(session, [ti_id], later)
        second = await store_tis.mark_queued(session, [ti_id], later)
    assert len(promoted) == 1 and again == []
    assert first == {ti_id: try_number + 1} and second == {}


async def test_first_poke_is_kept_across_pokes_and_reset_by_a_retry(engine: AsyncEngine) -> None:
    sessions, ti_id, try_number = await _running_try(engine)
    async with store_engine.transaction(sessions) as session:
        first = await store_tis.start_poking(session, ti_id, try_number, NOW)
        assert await store_tis.reschedule(session, ti_id, try_number, NOW, NOW)
    await _close(sessions, ti_id, try_number, states.UP_FOR_RESCHEDULE)
    later = NOW + timedelta(minutes=1)
    async with store_engine.transaction(sessions) as session:
        await store_tis.promote_due_retries(session, later)
        claimed = await store_tis.mark_queued(session, [ti_id], later)
        await store_tis.worker_claim(session, "d", "r1", "t0", claimed[ti_id], later)
        kept = await store_tis.start_poking(session, ti_id, claimed[ti_id], later)
        # the poke fails; its retry starts the sensor's timeout afresh
        await store_tis.finish(
            session,
            [store_tis.Outcome(ti_id, claimed[ti_id], states.UP_FOR_RETRY, next_retry_at=later)],
            later,
        )
        await store_tis.promote_due_retries(session, later)
        row = (await store_tis.fetch(session, [ti_id]))[ti_id]
    assert first == NOW and kept == NOW
    assert row.state == states.SCHEDULED and row.first_poke_at is None
