"""XCom rows: values tasks pushed by key, and what a pull reads (results included)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.xcom import XComData
from miniflow.store import states
from miniflow.store.engine import conflict_insert
from miniflow.store.models import TaskInstance, XCom

_table: Table = XCom.__table__  # type: ignore[assignment]


async def push(session: AsyncSession, ti_id: int, key: str, value: Any, now: datetime) -> None:
    """Store `value` under `key` for the task instance `ti_id` (replacing an earlier push)."""
    row = (
        await session.execute(
            select(TaskInstance.run_pk, TaskInstance.task_id, TaskInstance.map_index).where(
                TaskInstance.id == ti_id
            )
        )
    ).one()
    stmt = conflict_insert(session, _table).values(
        run_pk=row.run_pk,
        task_id=row.task_id,
        map_index=row.map_index,
        key=key,
        value=value,
        at=now,
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["run_pk", "task_id", "map_index", "key"],
            set_={"value": stmt.excluded.value, "at": stmt.excluded.at},
        )
    )


async def load(
    session: AsyncSession, dag_id: str, run_id: str, task_ids: Sequence[str] | None = None
) -> XComData:
    """The results (of successful task instances) and pushed values of a run's tasks (of
    `task_ids` only, if given)."""
    from miniflow.store.models import DagRun

    run_pk = (
        await session.execute(
            select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        )
    ).scalar_one_or_none()
    if run_pk is None:
        return XComData()
    query = select(
        TaskInstance.task_id, TaskInstance.map_index, TaskInstance.result, TaskInstance.state
    ).where(TaskInstance.run_pk == run_pk)
    values = select(XCom.task_id, XCom.map_index, XCom.key, XCom.value).where(XCom.run_pk == run_pk)
    if task_ids is not None:
        query = query.where(TaskInstance.task_id.in_(list(task_ids)))
        values = values.where(XCom.task_id.in_(list(task_ids)))
    results = {
        (t, i): r
        for t, i, r, state in (await session.execute(query)).all()
        if state == states.SUCCESS
    }
    pushed = {(t, i, k): v for t, i, k, v in (await session.execute(values)).all()}
    return XComData(results, pushed)
