"""What the web's buttons and POST endpoints do: pause, trigger, clear, mark failed, pools.

Each action is one transaction on the web server's own engine. Nothing here
parses a DAG file: a trigger uses the DAG version the scheduler last stored
(so a DAG file just written is triggerable once the scheduler has parsed it).
The task-selection rule of a clear (the task and, optionally, everything
downstream in the run's own DAG version, with its setups / teardowns and a branch's
earlier skips) is the CLI's, from `miniflow.store.clearing`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.cli import operations
from miniflow.errors import NotFound, PermanentError
from miniflow.scheduler import manual_runs
from miniflow.store import browse, clearing
from miniflow.store import dags as store_dags
from miniflow.store import pools as store_pools
from miniflow.store import runs as store_runs

MAX_SLOTS = 2**31 - 1


def _now() -> datetime:
    return datetime.now(UTC)


async def set_paused(session: AsyncSession, dag_id: str, paused: bool) -> None:
    await browse.get_dag(session, dag_id)  # NotFound for an unknown or deleted DAG
    await store_dags.set_paused(session, dag_id, paused)


async def trigger(
    session: AsyncSession,
    dag_id: str,
    conf: dict[str, Any],
    *,
    run_id: str | None = None,
    logical_date: datetime | None = None,
) -> str:
    """Create a queued manual run; ConfValidationError names a key the DAG does not declare."""
    await browse.get_dag(session, dag_id)
    if run_id is not None:
        if not run_id.strip() or len(run_id) > operations.MAX_NAME or not run_id.isprintable():
            raise PermanentError(f"a run id has 1 to {operations.MAX_NAME} printable characters")
        if run_id == operations.LATEST:  # "/" is fine: every route takes it (CLI too)
            raise PermanentError(f"run id {run_id!r} is reserved: it means a DAG's newest run")
    return await manual_runs.trigger(
        session,
        dag_id,
        conf_json=json.dumps(conf),
        now=_now(),
        logical_date=logical_date,
        run_id=run_id,
    )


async def clear(
    session: AsyncSession, dag_id: str, run_id: str, task_id: str, *, downstream: bool
) -> list[str]:
    """Clear a finished task (and its downstream) so it runs again; returns the ids cleared."""
    dag = await browse.run_dag(session, dag_id, run_id)
    if dag is None:
        raise NotFound(f"the DAG version of run {dag_id}/{run_id} is not in the database")
    if task_id not in dag["tasks"]:
        raise NotFound(f"run {dag_id}/{run_id} has no task {task_id!r}")
    return await clearing.clear_tasks(session, dag, dag_id, run_id, task_id, downstream=downstream)


async def mark_failed(session: AsyncSession, dag_id: str, run_id: str) -> None:
    """The run ends failed: its tasks that have not started are skipped, its running tries
    failed and stopped (`store.runs.mark_failed`, as `miniflow runs mark-failed`)."""
    await browse.get_run(session, dag_id, run_id)
    await store_runs.mark_failed(session, dag_id, run_id, _now())


async def set_pool(session: AsyncSession, name: str, slots: int, description: str | None) -> None:
    if not name.strip() or len(name) > operations.MAX_NAME or "/" in name:
        raise PermanentError(f"a pool name has 1 to {operations.MAX_NAME} characters and no '/'")
    if not 0 <= slots <= MAX_SLOTS:
        raise PermanentError(f"slots must be between 0 and {MAX_SLOTS}, got {slots}")
    await store_pools.set_pool(session, name, slots, description)
