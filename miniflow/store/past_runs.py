"""The previous run's task states: what `depends_on_past` waits on.

The previous run of a run is the DAG's run with the latest logical date before its own,
scheduled or manual: `miniflow dags test` runs (run_type "test") are left out, on both
sides, so a test neither holds nor is held by the DAG's real history. Read only.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.store.models import DagRun, TaskInstance

TEST_RUN = "test"


async def previous_states(
    session: AsyncSession, run_pk: int, task_ids: Sequence[str]
) -> dict[tuple[str, int], str] | None:
    """(task_id, map_index) → state of `task_ids`' instances in the run before `run_pk`;
    None if there is no previous run (a first run, or `run_pk` is a test run)."""
    run = (
        await session.execute(
            select(DagRun.dag_id, DagRun.logical_date, DagRun.run_type).where(DagRun.id == run_pk)
        )
    ).one_or_none()
    if run is None or run.run_type == TEST_RUN:
        return None
    previous = (
        await session.execute(
            select(DagRun.id)
            .where(
                DagRun.dag_id == run.dag_id,
                DagRun.logical_date < run.logical_date,
                DagRun.run_type != TEST_RUN,
            )
            .order_by(DagRun.logical_date.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if previous is None:
        return None
    rows = await session.execute(
        select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
            TaskInstance.run_pk == previous, TaskInstance.task_id.in_(list(task_ids))
        )
    )
    return {(row.task_id, row.map_index): row.state for row in rows}
