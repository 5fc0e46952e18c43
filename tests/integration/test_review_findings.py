"""Regression tests for correctness bugs found in review (scheduler + store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow import DAG, Bash
from miniflow.store import attempts as store_attempts
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from tests.integration.test_scheduler_rules import Harness

START = datetime(2026, 1, 1, tzinfo=UTC)
QUICK = timedelta(seconds=0.01)


async def _ticks(h: Harness, n: int = 6) -> None:
    for _ in range(n):
        await h.scheduler.tick()


async def _tries(h: Harness, dag_id: str, run_id: str, task_id: str) -> list[int]:
    async with store_engine.transaction(h.sessions) as session:
        attempts = await store_attempts.for_task(session, dag_id, run_id, task_id)
    return [a.try_number for a in attempts]


async def _clear(h: Harness, dag_id: str, run_id: str, task_id: str, retries: int) -> None:
    async with store_engine.transaction(h.sessions) as session:
        await store_tis.clear(session, dag_id, run_id, [task_id], {task_id: retries})


async def test_cleared_task_gets_fresh_retries_when_the_scheduler_judges_the_exit(
    engine: AsyncEngine,
) -> None:
    """retries=1 must allow 2 tries after a clear too (max_tries from the row, not the task)."""
    with DAG("clear_retries", start_date=START) as dag:
        Bash("t", "exit 1", retries=1, retry_delay=QUICK)
    async with Harness(engine) as h:
        await h.register(dag)
        run_id, state = await h.run("clear_retries")
        assert state == "failed"
        assert await _tries(h, "clear_retries", run_id, "t") == [1, 2]
        await _clear(h, "clear_retries", run_id, "t", 1)
        state = await h.scheduler.run_until_done("clear_retries", run_id, timeout=30)
        assert state == "failed"
        assert await _tries(h, "clear_retries", run_id, "t") == [1, 2, 3, 4]


async def test_cleared_task_with_template_error_gets_fresh_retries(engine: AsyncEngine) -> None:
    """A try that fails before launch (template error) also uses the row's max_tries."""
    with DAG("clear_tmpl", start_date=START) as dag:
        Bash("t", "echo {{ no_such_variable.x }}", retries=1, retry_delay=QUICK)
    async with Harness(engine) as h:
        await h.register(dag)
        run_id, state = await h.run("clear_tmpl")
        assert state == "failed"
        assert await _tries(h, "clear_tmpl", run_id, "t") == [1, 2]
        await _clear(h, "clear_tmpl", run_id, "t", 1)
        state = await h.scheduler.run_until_done("clear_tmpl", run_id, timeout=30)
        assert state == "failed"
        assert await _tries(h, "clear_tmpl", run_id, "t") == [1, 2, 3, 4]


async def test_task_inserted_into_a_running_dag_does_not_block_the_run(
    engine: AsyncEngine,
) -> None:
    """a >> c becomes a >> b >> c mid-run: c must not wait forever for a b the run lacks."""
    with DAG("grow", start_date=START) as v1:
        Bash("a", "exit 0") >> Bash("c", "exit 0")
    with DAG("grow", start_date=START) as v2:
        Bash("a", "exit 0") >> Bash("b", "exit 0") >> Bash("c", "exit 0")
    async with Harness(engine, hold=True) as h:
        await h.register(v1)
        run_id = await h.trigger("grow")
        await _ticks(h)
        assert [s.key.task_id for s in h.launcher.launched] == ["a"]
        await h.register(v2)
        h.launcher.release()
        for _ in range(40):
            await _ticks(h, 2)
            h.launcher.release()
            if await h.run_state("grow", run_id) != "running":
                break
        assert await h.run_state("grow", run_id) == "success"
        assert (await h.tis("grow", run_id))["c"].state == "success"


async def test_run_whose_tasks_were_all_renamed_still_finishes(engine: AsyncEngine) -> None:
    with DAG("renamed", start_date=START) as v1:
        Bash("old", "exit 0")
    with DAG("renamed", start_date=START) as v2:
        Bash("new", "exit 0")
    async with Harness(engine, hold=True) as h:
        await h.register(v1)
        run_id = await h.trigger("renamed")
        await _ticks(h)
        await h.register(v2)
        h.launcher.release()
        for _ in range(20):
            await _ticks(h, 2)
            if await h.run_state("renamed", run_id) != "running":
                break
        assert await h.run_state("renamed", run_id) in ("success", "failed")


async def test_run_does_not_finish_while_a_removed_task_is_still_running(
    engine: AsyncEngine,
) -> None:
    with DAG("shrink", start_date=START) as v1:
        Bash("a", "exit 0")
        Bash("b", "exit 0")
    with DAG("shrink", start_date=START) as v2:
        Bash("a", "exit 0")
    async with Harness(engine, hold=True) as h:
        await h.register(v1)
        run_id = await h.trigger("shrink")
        await _ticks(h)
        keys = {s.key.task_id: s.key for s in h.launcher.launched}
        assert set(keys) == {"a", "b"}
        await h.register(v2)
        h.launcher.release(keys["a"])
        await _ticks(h, 8)
        assert (await h.tis("shrink", run_id))["b"].state == "running"
        assert await h.run_state("shrink", run_id) == "running"
        h.launcher.release(keys["b"])
        await _ticks(h, 8)
        assert await h.run_state("shrink", run_id) == "success"


async def test_pausing_a_dag_is_seen_by_a_running_scheduler(engine: AsyncEngine) -> None:
    """A queued scheduled run of a DAG paused while the scheduler runs must not start."""
    with DAG("pausable", start_date=START, max_active_runs=1) as dag:
        Bash("t", "exit 0")
    async with Harness(engine, hold=True) as h:
        await h.register(dag)
        first = await h.trigger("pausable")
        await _ticks(h)  # first run starts (and the DAG is cached as unpaused)
        assert await h.run_state("pausable", first) == "running"
        now = datetime.now(UTC)
        async with store_engine.transaction(h.sessions) as session:
            await store_runs.create_run(
                session,
                dag=dag.serialize("pausable.py"),
                run_id="scheduled__x",
                run_type="scheduled",
                logical_date=now,
                interval=(now, now),
                conf={},
                now=now,
            )
            await store_dags.set_paused(session, "pausable", True)
        h.launcher.release()
        await _ticks(h, 8)
        assert await h.run_state("pausable", first) == "success"
        assert await h.run_state("pausable", "scheduled__x") == "queued"
