"""Readiness downstream of what changed: nothing missed, nothing decided on stale states, and
a round's cost does not grow with the run (statements and full reads of the run)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow import DAG, Bash, Empty
from miniflow.scheduler.clock import ManualClock
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from tests.integration.test_scheduler_rules import Harness

START = datetime(2026, 1, 1, tzinfo=UTC)


def _diamond(dag_id: str) -> DAG:
    with DAG(dag_id, start_date=START) as dag:
        [Bash("a", "true"), Bash("b", "true")] >> Bash("c", "true") >> Bash("d", "true")
    return dag


def _launched(h: Harness) -> list[str]:
    return [s.key.task_id for s in h.launcher.launched]


async def test_a_task_whose_upstreams_finish_in_different_rounds_runs(
    engine: AsyncEngine,
) -> None:
    # The clock never moves: after the first round no sweep looks at the whole run, so only
    # the decision downstream of b's exit can start c.
    clock = ManualClock(datetime.now(UTC))
    async with Harness(engine, hold=True, clock=clock) as h:
        await h.register(_diamond("stagger"))
        run_id = await h.trigger("stagger")
        await h.scheduler.tick()
        assert sorted(_launched(h)) == ["a", "b"]
        h.launcher.release(h.launcher.launched[0].key)
        await h.scheduler.tick()  # the first upstream's exit: c still waits
        assert sorted(_launched(h)) == ["a", "b"]
        h.launcher.release()
        await h.scheduler.tick()  # the second one, a round later: c is claimed
        assert _launched(h)[2:] == ["c"]
        for _ in range(4):
            h.launcher.release()
            await h.scheduler.tick()
        assert await h.run_state("stagger", run_id) == "success"
        assert _launched(h)[2:] == ["c", "d"]


async def test_an_upstream_cleared_behind_the_views_back_holds_its_downstream(
    engine: AsyncEngine,
) -> None:
    """a finished, then was cleared by another process; b's exit must not start c while a
    runs again (the scheduler's memory of a says success)."""
    clock = ManualClock(datetime.now(UTC))
    async with Harness(engine, hold=True, clock=clock) as h:
        await h.register(_diamond("cleared"))
        run_id = await h.trigger("cleared")
        await h.scheduler.tick()
        first = {s.key.task_id: s.key for s in h.launcher.launched}
        h.launcher.release(first["a"])
        await h.scheduler.tick()
        assert (await h.tis("cleared", run_id))["a"].state == "success"
        async with store_engine.transaction(h.sessions) as session:
            assert await store_tis.clear(session, "cleared", run_id, ["a"], {}) == 1
        h.launcher.release(first["b"])
        await h.scheduler.tick()
        tis = await h.tis("cleared", run_id)
        assert tis["c"].state == "none"
        assert tis["a"].state in ("queued", "running")  # scheduled again and claimed
        for _ in range(6):
            h.launcher.release()
            await h.scheduler.tick()
        assert await h.run_state("cleared", run_id) == "success"
    assert _launched(h) == ["a", "b", "a", "c", "d"]


def _chain(dag_id: str) -> DAG:
    with DAG(dag_id, start_date=START) as dag:
        Bash("a", "true") >> Bash("b", "true") >> Bash("c", "true")
    return dag


def _count_state_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How often the run's per-state counts are read (`agrees`' input)."""
    calls = [0]
    original = store_tis.state_counts_of_running_runs

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await original(*args, **kwargs)

    monkeypatch.setattr(store_tis, "state_counts_of_running_runs", counted)
    return calls


async def test_a_decision_on_rows_just_read_needs_no_count_and_others_do(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain's next task rests on the row of the exit the round recorded: no count of the
    run. A join whose other upstream the view remembers from an earlier round: counted."""
    calls = _count_state_counts(monkeypatch)
    clock = ManualClock(datetime.now(UTC))  # no sweep after the first round
    async with Harness(engine, hold=True, clock=clock) as h:
        await h.register(_chain("fresh_chain"), _diamond("remembered"))
        await h.trigger("fresh_chain")
        await h.trigger("remembered")
        await h.scheduler.tick()
        first = {(s.key.dag_id, s.key.task_id): s.key for s in h.launcher.launched}
        before = calls[0]
        h.launcher.release(first[("fresh_chain", "a")])
        await h.scheduler.tick()
        assert _launched(h)[-1] == "b"
        assert calls[0] == before  # decided on a's row as this round wrote it
        h.launcher.release(first[("remembered", "a")])
        await h.scheduler.tick()
        h.launcher.release(first[("remembered", "b")])
        await h.scheduler.tick()  # c waits on a (remembered) and b (read now)
        assert _launched(h)[-1] == "c"
        assert calls[0] == before + 1


async def test_a_task_skipped_behind_the_views_back_skips_what_depends_on_it(
    engine: AsyncEngine,
) -> None:
    """As a branch's worker does: b skipped in the transaction that records a's success
    (here just before a's exit is recorded). The view decides b, an Empty task, `success`
    and c from that; b's update does not apply, and c must not be decided from it: c is
    skipped, as Airflow skips it."""
    clock = ManualClock(datetime.now(UTC))
    with DAG("skipped_behind", start_date=START) as dag:
        Bash("a", "true") >> Empty("b") >> Bash("c", "true")
    async with Harness(engine, hold=True, clock=clock) as h:
        await h.register(dag)
        run_id = await h.trigger("skipped_behind")
        await h.scheduler.tick()
        a = (await h.tis("skipped_behind", run_id))["a"]
        async with store_engine.transaction(h.sessions) as session:
            assert await store_tis.skip_waiting(session, a.id, ["b"], clock.now()) == 1
        for _ in range(4):
            h.launcher.release()
            await h.scheduler.tick()
        tis = await h.tis("skipped_behind", run_id)
        assert {t: tis[t].state for t in "abc"} == {"a": "success", "b": "skipped", "c": "skipped"}
        assert _launched(h) == ["a"]


async def test_readiness_changes_nothing_in_a_run_that_stopped_running(
    engine: AsyncEngine,
) -> None:
    """A run ended behind the view's back (its `b` still `none`): a's exit is recorded, and
    nothing downstream of it is decided, not even from rows the round read itself."""
    clock = ManualClock(datetime.now(UTC))
    async with Harness(engine, hold=True, clock=clock) as h:
        await h.register(_chain("ended"))
        run_id = await h.trigger("ended")
        await h.scheduler.tick()
        assert _launched(h) == ["a"]
        async with store_engine.transaction(h.sessions) as session:
            run = await store_runs.get_run(session, "ended", run_id)
            assert await store_runs.set_state(
                session, run.id, expected="running", state="failed", now=clock.now()
            )
        h.launcher.release()
        await h.scheduler.tick()
        tis = await h.tis("ended", run_id)
        assert tis["a"].state == "success"
        assert (tis["b"].state, tis["c"].state) == ("none", "none")
        assert _launched(h) == ["a"]


@contextmanager
def _count_statements(engine: AsyncEngine) -> Iterator[list[int]]:
    seen = [0]

    def on_execute(*_args: Any) -> None:
        seen[0] += 1

    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", on_execute)


async def _round_costs(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, width: int
) -> tuple[list[int], int]:
    """Drive a `start` >> `width` tasks >> `join` run, 8 tasks at a time; (statements of
    each round, full reads of the run)."""
    full_reads = [0]
    original = store_tis.states_for_runs

    async def counted(session: Any, run_pks: Any) -> Any:
        full_reads[0] += 1
        return await original(session, run_pks)

    monkeypatch.setattr(store_tis, "states_for_runs", counted)
    dag_id = f"fan_{width}"
    with DAG(dag_id, start_date=START, max_active_tasks=8) as dag:
        start, join = Bash("start", "true"), Bash("join", "true")
        for i in range(width):
            start >> Bash(f"t{i}", "true") >> join
    clock = ManualClock(datetime.now(UTC))
    per_round: list[int] = []
    async with Harness(engine, clock=clock, parallelism=8) as h:
        await h.register(dag)
        run_id = await h.trigger(dag_id)
        with _count_statements(engine) as seen:
            for _ in range(width):
                before = seen[0]
                await h.scheduler.tick()
                per_round.append(seen[0] - before)
                if await h.run_state(dag_id, run_id) == "success":
                    break
    assert len(h.launcher.launched) == width + 2
    return per_round, full_reads[0]


async def test_a_rounds_cost_does_not_grow_with_the_run(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    small, small_reads = await _round_costs(engine, monkeypatch, 16)
    large, large_reads = await _round_costs(engine, monkeypatch, 160)
    assert len(large) > 20  # many rounds, each finishing a few tasks
    # The run is read in full when it starts and when it may be over, never per round.
    assert large_reads == small_reads <= 3
    # The first round also does the once-only duties (the sanity round's first look,
    # registration checks), whose cost depends on what is in flight at that moment.
    assert max(large[1:]) == max(small[1:]), (small, large)


async def test_a_chain_link_costs_the_statements_it_needs_and_no_more(engine: AsyncEngine) -> None:
    """From one task's exit to the next one's recorded start, on PostgreSQL: the fence, the
    row, its outcome with its attempt's end (one statement), the next task scheduled, the
    claim (lock, the counts with the candidate window, one statement queuing it and
    opening its attempt) and one statement for the start (no transaction around it).
    SQLite: the counts, the claim and the start are two statements each and BEGIN is one
    too. Before: 14 and 15 (a grouped count of the run's states, and separate statements
    for the claim and the start), then 11 (the counts apart from the window, the attempt
    apart from the outcome)."""
    clock = ManualClock(datetime.now(UTC))
    async with Harness(engine, hold=True, clock=clock) as h:
        await h.register(_chain("link_cost"))
        await h.trigger("link_cost")
        await h.scheduler.tick()
        h.launcher.release()
        with _count_statements(engine) as seen:
            await h.scheduler.tick()
        assert _launched(h) == ["a", "b"]
    assert seen[0] <= (9 if engine.dialect.name == "postgresql" else 14), seen[0]


async def test_a_lone_schedulers_own_tries_in_flight_hold_their_slots(engine: AsyncEngine) -> None:
    """Parallelism counts processes: tries whose workers recorded their end while their
    processes still run keep their slots until the exits arrive, and a scheduler whose
    whole parallelism is in flight claims nothing (no lock, no count)."""
    clock = ManualClock(datetime.now(UTC))
    with DAG("held_slots", start_date=START) as dag:
        for name in "abcd":
            Bash(name, "true")
    async with Harness(engine, hold=True, clock=clock, parallelism=2) as h:
        await h.register(dag)
        run_id = await h.trigger("held_slots")
        await h.scheduler.tick()
        first = _launched(h)
        assert len(first) == 2
        tis = await h.tis("held_slots", run_id)
        async with store_engine.transaction(h.sessions) as session:
            changed = await store_tis.finish(
                session,
                [store_tis.Outcome(tis[t].id, tis[t].try_number, "success") for t in first],
                clock.now(),
            )
        assert len(changed) == 2  # to the database, nothing is active any more
        texts: list[str] = []

        def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            texts.append(statement)

        event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
        try:
            await h.scheduler.tick()
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", on_execute)
        assert _launched(h) == first
        assert not [t for t in texts if "advisory" in t or "count(" in t], texts
        h.launcher.release()
        await h.scheduler.tick()
        assert len(_launched(h)) == 4
