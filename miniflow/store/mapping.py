"""The writes of dynamic task mapping: mapped instances created once, their task settled.

A mapped task has one row of its own (map_index -1). Readiness moves it `none → mapped`
when it may run; in the same transaction the scheduler expands it: `add_instances`
inserts one row per map_index in `scheduled`, and a second insert of the same index (a
scheduler that expands again after a crash, or two schedulers at once) does nothing
(`ON CONFLICT DO NOTHING` on the task-instance key). When every mapped instance has
finished, `settle` ends the task's own row with their combined outcome, and readiness
goes on from there as for any task.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from miniflow.store import states, transitions
from miniflow.store.engine import conflict_insert
from miniflow.store.engine import rowcount as store_rowcount
from miniflow.store.models import DagRun, TaskInstance
from miniflow.store.task_instances import TIState, chunked

TI = TaskInstance
_table: Table = TaskInstance.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Unexpanded:
    """A mapped task's own row, `mapped`, without mapped instances yet."""

    id: int
    run_pk: int
    dag_id: str
    run_id: str
    task_id: str
    kind: str
    max_tries: int
    priority: int
    pool: str | None
    try_number: int = 0  # tries made before (a replaced test run, a clear): go on from there


async def unexpanded(session: AsyncSession, run_pks: Iterable[int] | None) -> list[Unexpanded]:
    """Mapped tasks of running runs (of `run_pks`, if given) waiting for their expansion;
    locked on PostgreSQL so two schedulers never expand the same one at once.

    A task's own row records its expansion (`map_args = {"length": n}`, `mark_expanded`)
    only once all its instances exist: one left half-expanded is found again here.
    """
    query = (
        select(
            TI.id,
            TI.run_pk,
            TI.dag_id,
            TI.run_id,
            TI.task_id,
            TI.kind,
            TI.max_tries,
            TI.priority,
            TI.pool,
            TI.try_number,
        )
        .join(DagRun, DagRun.id == TI.run_pk)
        .where(
            TI.state == states.MAPPED,
            TI.map_index == -1,
            DagRun.state == states.RUN_RUNNING,
            TI.map_args.is_(None),
        )
        .order_by(TI.id)
        .with_for_update(of=TI, skip_locked=True)
    )
    if run_pks is not None:
        query = query.where(TI.run_pk.in_(sorted(set(run_pks))))
    return [Unexpanded(**row._mapping) for row in (await session.execute(query)).all()]


async def add_instances(
    session: AsyncSession, task: Unexpanded, map_args: Sequence[dict[str, Any]]
) -> None:
    """One `scheduled` row per item of `map_args` (map_index = its position); an index that
    exists already is left as it is."""
    rows = [
        {
            "run_pk": task.run_pk,
            "dag_id": task.dag_id,
            "run_id": task.run_id,
            "task_id": task.task_id,
            "map_index": i,
            "map_args": args,
            "kind": task.kind,
            "state": states.SCHEDULED,
            "try_number": task.try_number,
            "max_tries": task.max_tries,
            "launch_attempts": 0,
            "priority": task.priority,
            "pool": task.pool,
        }
        for i, args in enumerate(map_args)
    ]
    for chunk in chunked(rows):
        await session.execute(
            conflict_insert(session, _table).on_conflict_do_nothing(
                index_elements=["dag_id", "run_id", "task_id", "map_index"]
            ),
            list(chunk),
        )


async def start_instances(session: AsyncSession) -> int:
    """none → scheduled for the mapped instances made with their run (literal lists) of
    the tasks that may now run (`mapped`); returns how many."""
    transitions.check((states.NONE,), states.SCHEDULED)
    return await _follow(session, states.MAPPED, states.SCHEDULED)


async def follow_unrun(session: AsyncSession) -> int:
    """none → skipped / upstream_failed for the mapped instances made with their run of
    tasks that will not run (readiness decided them so); returns how many."""
    changed = 0
    for state in (states.SKIPPED, states.UPSTREAM_FAILED):
        transitions.check((states.NONE,), state)
        changed += await _follow(session, state, state)
    return changed


async def _follow(session: AsyncSession, task_state: str, new: str) -> int:
    own = aliased(TI)
    result = await session.execute(
        update(TI)
        .execution_options(synchronize_session=False)
        .where(
            TI.state == states.NONE,
            TI.map_index >= 0,
            exists().where(
                own.run_pk == TI.run_pk,
                own.task_id == TI.task_id,
                own.map_index == -1,
                own.state == task_state,
            ),
        )
        .values(state=new, launch_attempts=0)
    )
    return store_rowcount(result)


async def mark_expanded(session: AsyncSession, ti_id: int, length: int) -> None:
    """Every mapped instance of the task `ti_id` exists (see `unexpanded`)."""
    await session.execute(
        update(TI)
        .execution_options(synchronize_session=False)
        .where(TI.id == ti_id, TI.map_index == -1)
        .values(map_args={"length": length})
    )


async def end_task(
    session: AsyncSession, ti_id: int, state: str, now: datetime, error: str | None = None
) -> bool:
    """mapped → `state` for a mapped task's own row (an expansion that was empty or could
    not be made, or the combined outcome of its instances)."""
    transitions.check((states.MAPPED,), state)
    result = await session.execute(
        update(TI)
        .execution_options(synchronize_session=False)
        .where(TI.id == ti_id, TI.state == states.MAPPED)
        .values(state=state, ended_at=now, error=error)
    )
    return bool(store_rowcount(result))


def combined(counts: dict[str, int]) -> str | None:
    """The outcome of a mapped task from its instances' states (None: some still open):
    failed if any failed, skipped if all were skipped, else success."""
    if any(s not in states.FINISHED for s in counts):
        return None
    if any(s in states.FAILED_LIKE for s in counts):
        return states.FAILED
    if set(counts) == {states.SKIPPED}:
        return states.SKIPPED
    return states.SUCCESS


async def settle(
    session: AsyncSession, run_pks: Iterable[int] | None, now: datetime
) -> list[TIState]:
    """End every `mapped` task (of `run_pks`, if given) whose instances have all finished;
    returns their rows as they are now."""
    child = aliased(TI)
    query = (
        select(TI.id, TI.run_pk, TI.task_id, TI.max_tries, child.state, func.count())
        .join(child, and_(child.run_pk == TI.run_pk, child.task_id == TI.task_id))
        .where(TI.state == states.MAPPED, TI.map_index == -1, child.map_index >= 0)
        .group_by(TI.id, TI.run_pk, TI.task_id, TI.max_tries, child.state)
    )
    if run_pks is not None:
        pks = sorted(set(run_pks))
        if not pks:
            return []
        query = query.where(TI.run_pk.in_(pks))
    found: dict[tuple[int, int, str, int], dict[str, int]] = defaultdict(dict)
    for ti_id, run_pk, task_id, max_tries, state, n in (await session.execute(query)).all():
        found[(ti_id, run_pk, task_id, max_tries)][state] = n
    out: list[TIState] = []
    for (ti_id, run_pk, task_id, max_tries), counts in found.items():
        outcome = combined(counts)
        if outcome is None:
            continue
        failed = sum(n for s, n in counts.items() if s in states.FAILED_LIKE)
        error = f"{failed} of {sum(counts.values())} mapped instances failed" if failed else None
        if await end_task(session, ti_id, outcome, now, error):
            out.append(TIState(ti_id, run_pk, task_id, outcome, 0, max_tries))
    return out


async def active_mapped(session: AsyncSession) -> dict[tuple[str, str], int]:
    """{(dag_id, task_id): mapped instances queued or running}, for `max_active_mapped`."""
    query = (
        select(TI.dag_id, TI.task_id, func.count())
        .where(TI.state.in_(list(states.ACTIVE)), TI.map_index >= 0)
        .group_by(TI.dag_id, TI.task_id)
    )
    return {(d, t): n for d, t, n in (await session.execute(query)).all()}
