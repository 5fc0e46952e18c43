"""How many task instances and runs are in each state (the scheduler's state gauges).

Two grouped counts over the `state` indexes, nothing per row: cheap enough for a
metrics scrape, and the ops server caches the answer for a few seconds anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.store.models import DagRun, TaskInstance


@dataclass(frozen=True, slots=True)
class StateCounts:
    task_instances: dict[str, int]
    runs: dict[str, int]


async def by_state(session: AsyncSession) -> StateCounts:
    tis = await session.execute(
        select(TaskInstance.state, func.count()).group_by(TaskInstance.state)
    )
    runs = await session.execute(select(DagRun.state, func.count()).group_by(DagRun.state))
    return StateCounts(
        {str(state): int(n) for state, n in tis.all()},
        {str(state): int(n) for state, n in runs.all()},
    )
