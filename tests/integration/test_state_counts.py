"""The state gauges of `/metrics`: right counts, and one pair of counts per period however
many scrapes arrive at once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest
from sqlalchemy import event

from miniflow.scheduler import metrics
from miniflow.scheduler.ops_server import StateCounts
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from tests.integration.test_store_transitions import NOW, make_dag


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_scrape_storm_costs_one_pair_of_counts_per_period(db_url: str) -> None:
    engine = store_engine.create_engine(db_url)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "count(" in statement.lower():
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        sessions = store_engine.sessionmaker(engine)
        counts = StateCounts(SimpleNamespace(sessions=sessions), ttl=5.0)  # type: ignore[arg-type]
        clock = Clock()
        await asyncio.gather(*(counts.refresh(clock) for _ in range(20)))
        assert len(statements) == 2  # task instances and runs, once
        text = generate_latest(metrics.REGISTRY).decode()
        assert 'miniflow_runs{state="queued"} 0.0' in text
        assert 'miniflow_task_instances{state="running"} 0.0' in text

        async with store_engine.transaction(sessions) as session:
            await _one_queued_run(session)
        clock.now += 4.0
        await counts.refresh(clock)
        assert len(statements) == 2  # still fresh: cached
        clock.now += 2.0
        await asyncio.gather(*(counts.refresh(clock) for _ in range(20)))
        assert len(statements) == 4
        text = generate_latest(metrics.REGISTRY).decode()
        assert 'miniflow_runs{state="queued"} 1.0' in text
        assert 'miniflow_task_instances{state="none"} 2.0' in text
    finally:
        await engine.dispose()


async def _one_queued_run(session: Any) -> None:
    """A queued manual run of a two-task DAG, as the trigger writes it."""
    dag = make_dag(n=2)
    await store_dags.apply_parse(
        session, [store_dags.ParsedFile("d.py", 1, 1, "h", [dag], None)], [], NOW
    )
    await store_runs.create_run(
        session,
        dag=dag,
        run_id="r1",
        run_type="manual",
        logical_date=NOW,
        interval=(NOW, NOW),
        conf={},
        now=NOW,
    )
