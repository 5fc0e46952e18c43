"""The claim's candidate window: its order on both backends, and on PostgreSQL that a
round reads the rows it claims, not every scheduled row of the run (issue 9, defect 9)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import states
from miniflow.store import task_instances as store_tis
from tests.integration.test_store_transitions import NOW, _task, make_dag


async def _running_run(
    session: AsyncSession, dag: Any, run_id: str, days_old: int, *, schedule: bool = True
) -> dict[str, int]:
    """A running run of `dag`, logical date `days_old` days before NOW, its tasks
    scheduled (`schedule`); returns task_id → task instance id."""
    when = NOW - timedelta(days=days_old)
    pk = await store_runs.create_run(
        session,
        dag=dag,
        run_id=run_id,
        run_type="manual",
        logical_date=when,
        interval=(when, when),
        conf={},
        now=NOW,
    )
    assert await store_runs.set_state(
        session, pk, expected=states.RUN_QUEUED, state=states.RUN_RUNNING, now=NOW
    )
    tis = (await store_tis.states_for_runs(session, [pk]))[pk]
    if schedule:
        await store_tis.set_states(
            session, [(t.id, states.NONE, states.SCHEDULED) for t in tis], NOW
        )
    return {t.task_id: t.id for t in tis}


def _dag(dag_id: str, priorities: dict[str, int], pools: dict[str, str] | None = None) -> Any:
    dag = make_dag(dag_id, n=0)
    dag["tasks"] = {
        t: _task(t, priority=p, pool=(pools or {}).get(t)) for t, p in priorities.items()
    }
    return dag


async def test_window_is_priority_then_oldest_run_then_id(engine: AsyncEngine) -> None:
    sessions = store_engine.sessionmaker(engine)
    new_dag = _dag("new", {"a": 1, "b": 5, "c": 1})
    old_dag = _dag("old", {"x": 1, "y": 5, "z": 1}, pools={"z": "p"})
    async with store_engine.transaction(sessions) as session:
        await store_dags.apply_parse(
            session,
            [store_dags.ParsedFile("d.py", 1, 1, "h", [new_dag, old_dag], None)],
            [],
            NOW,
        )
        # Created first, but the newer logical date: the run's pk is not its age.
        new = await _running_run(session, new_dag, "new", days_old=1)
        old = await _running_run(session, old_dag, "old", days_old=3)
        waiting = await _running_run(session, _dag("other", {"w": 9}), "q", 2, schedule=False)
    async with store_engine.transaction(sessions) as session:
        found = await store_tis.scheduled_candidates(session, limit=10, now=NOW)
        assert [c.id for c in found] == [old["y"], new["b"], old["x"], old["z"], new["a"], new["c"]]
        assert waiting["w"] not in {c.id for c in found}  # `none`: not a candidate
        first = await store_tis.scheduled_candidates(session, limit=3, now=NOW)
        assert [c.id for c in first] == [old["y"], new["b"], old["x"]]
        rest = await store_tis.scheduled_candidates(
            session, limit=10, now=NOW, skip_dags=["new"], skip_pools=["p"], skip_ids=[old["y"]]
        )
        assert [c.id for c in rest] == [old["x"]]


async def test_a_relaunch_waiting_out_its_backoff_is_no_candidate(engine: AsyncEngine) -> None:
    sessions = store_engine.sessionmaker(engine)
    dag = _dag("d", {"a": 1, "b": 1})
    async with store_engine.transaction(sessions) as session:
        await store_dags.apply_parse(
            session, [store_dags.ParsedFile("d.py", 1, 1, "h", [dag], None)], [], NOW
        )
        ids = await _running_run(session, dag, "r", days_old=0)
        await session.execute(
            text("UPDATE task_instance SET next_retry_at = :at WHERE id = :id"),
            {"at": NOW + timedelta(seconds=30), "id": ids["a"]},
        )
    async with store_engine.transaction(sessions) as session:
        assert [c.id for c in await store_tis.scheduled_candidates(session, 5, NOW)] == [ids["b"]]
        later = NOW + timedelta(seconds=31)
        assert {c.id for c in await store_tis.scheduled_candidates(session, 5, later)} == set(
            ids.values()
        )


WIDE = 3000
BOUND = 400  # rows a claim round of 32 may read; every scheduled row would be WIDE


async def _rows_read(session: AsyncSession) -> int:
    """Rows of task_instance this transaction has read so far (sequential + by index)."""
    found = await session.execute(
        text(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_xact_user_tables WHERE relname = 'task_instance'"
        )
    )
    return int(found.scalar_one_or_none() or 0)


async def test_a_claim_round_reads_what_it_claims_not_the_whole_run(
    pg_engine: AsyncEngine,
) -> None:
    """3,000 scheduled tasks, with statistics gathered while they were all `none` (as on
    any database whose last ANALYZE predates the run): the candidate window, the claim,
    the states of the claimed rows and a readiness update each read a few dozen rows.
    Before, the window sorted all 3,000 and the planner, believing `scheduled` rare,
    found the claimed ids by walking every scheduled row."""
    sessions = store_engine.sessionmaker(pg_engine)
    dag = _dag("wide", {f"t{i}": 1 for i in range(WIDE)})
    async with store_engine.transaction(sessions) as session:
        await store_dags.apply_parse(
            session, [store_dags.ParsedFile("d.py", 1, 1, "h", [dag], None)], [], NOW
        )
        ids = await _running_run(session, dag, "r", days_old=0, schedule=False)
    async with pg_engine.connect() as conn:
        await conn.execute(text("ANALYZE task_instance"))
    async with store_engine.transaction(sessions) as session:
        await store_tis.set_states(
            session, [(i, states.NONE, states.SCHEDULED) for i in ids.values()], NOW
        )
    waiting = sorted(ids.values())[-32:]
    async with store_engine.transaction(sessions) as session:
        await store_tis.set_states(
            session, [(i, states.SCHEDULED, states.NONE) for i in waiting], NOW
        )
    async with store_engine.transaction(sessions) as session:
        before = await _rows_read(session)
        found = await store_tis.scheduled_candidates(session, limit=80, now=NOW)
        assert [c.id for c in found] == sorted(ids.values())[:80]
        claimed = await store_tis.mark_queued(session, [c.id for c in found[:32]], NOW)
        assert len(claimed) == 32
        rows = await store_tis.states_of(session, list(claimed))
        assert {r.state for r in rows} == {states.QUEUED}
        decided = await store_tis.set_states(
            session, [(i, states.NONE, states.SCHEDULED) for i in waiting], NOW
        )
        assert decided == 32
        read = await _rows_read(session) - before
    assert read < BOUND, f"one claim round read {read} task instance rows"


async def test_counts_come_with_the_first_window(engine: AsyncEngine) -> None:
    """`counts_and_candidates` (one statement on PostgreSQL) answers what `active_counts`
    and an unfiltered `scheduled_candidates` answer apart; nothing when nothing waits."""
    sessions = store_engine.sessionmaker(engine)
    dag = _dag("counted", {"a": 1, "b": 5, "c": 1, "d": 1}, pools={"c": "p", "d": "p"})
    async with store_engine.transaction(sessions) as session:
        await store_dags.apply_parse(
            session, [store_dags.ParsedFile("d.py", 1, 1, "h", [dag], None)], [], NOW
        )
        assert await store_tis.counts_and_candidates(session, 10, NOW) is None
        ids = await _running_run(session, dag, "r", days_old=1)
        # Two active: one running in the pool, one queued outside it.
        await store_tis.set_states(
            session, [(ids[t], states.SCHEDULED, states.QUEUED) for t in "ac"], NOW
        )
        await store_tis.set_states(session, [(ids["c"], states.QUEUED, states.RUNNING)], NOW)
    async with store_engine.transaction(sessions) as session:
        found = await store_tis.counts_and_candidates(session, 10, NOW)
        assert found is not None
        counts, candidates = found
        assert counts == await store_tis.active_counts(session) == (2, {"counted": 2}, {"p": 1})
        apart = await store_tis.scheduled_candidates(session, limit=10, now=NOW)
        assert [c.id for c in candidates] == [c.id for c in apart] == [ids["b"], ids["d"]]
        assert candidates == apart
        found = await store_tis.counts_and_candidates(session, 1, NOW)
        assert found is not None and [c.id for c in found[1]] == [ids["b"]]
