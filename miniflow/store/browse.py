"""Read-only questions the web UI and REST API ask, answered as frozen dataclasses.

Nothing here writes, and nothing imports a DAG file: a DAG's tasks come from
the serialized versions the parser stored (a run shows the version it ran).
The views hold plain values only (no ORM rows), so the web layer can turn them
into JSON or HTML after the session is closed. No secret lives in these tables
except inside a run's conf, which is the user's own input.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.serialized import SerializedDag, readable
from miniflow.errors import NotFound
from miniflow.store import dags as store_dags
from miniflow.store import instances as store_instances
from miniflow.store import sanity_lock, states
from miniflow.store.models import Dag, DagRun, DagVersion, Pool, TaskAttempt, TaskInstance
from miniflow.store.records import (
    AttemptRecord,
    DagRecord,
    ImportErrorRecord,
    RunInfo,
    TaskInstanceRecord,
)

RECENT_RUNS = 10
"""Runs shown as dots per DAG in the DAG list."""


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 3)


def _last_line(text: str | None) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[-1][:300] if lines else None


@dataclass(frozen=True, slots=True)
class RunBrief:
    run_id: str
    state: str
    logical_date: datetime


@dataclass(frozen=True, slots=True)
class DagSummary:
    dag_id: str
    description: str | None
    schedule: str | None
    next_run: datetime | None
    is_paused: bool
    fileloc: str
    has_import_error: bool
    tags: list[str]
    tasks: int
    recent_runs: list[RunBrief]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    task_id: str
    kind: str
    upstream: list[str]
    trigger_rule: str
    retries: int
    pool: str | None


@dataclass(frozen=True, slots=True)
class DagDetail:
    summary: DagSummary
    params: dict[str, Any]
    """Defaults of the DAG's params."""
    required_params: list[str]
    """Typed params without a default: a manual run must give them."""
    max_active_runs: int
    max_active_tasks: int
    catchup: bool
    timezone: str
    task_specs: list[TaskSpec]


@dataclass(frozen=True, slots=True)
class RunView:
    dag_id: str
    run_id: str
    logical_date: datetime
    data_interval_start: datetime
    data_interval_end: datetime
    state: str
    run_type: str
    conf: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    duration: float | None


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: list[RunView]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True, slots=True)
class TaskInstanceView:
    dag_id: str
    run_id: str
    task_id: str
    kind: str
    state: str
    try_number: int
    max_tries: int
    pool: str | None
    queued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    duration: float | None
    exit_code: int | None
    reason: str | None
    handle: str | None
    next_poke_at: datetime | None = None  # a sensor waiting as up_for_reschedule: its next poke
    map_index: int = -1  # >= 0: a mapped instance of the task


@dataclass(frozen=True, slots=True)
class AttemptView:
    task_id: str
    try_number: int
    state: str
    launcher: str
    handle: str | None
    scheduler_id: str | None
    queued_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    duration: float | None
    exit_code: int | None
    reason: str | None
    message: str | None
    has_saved_log: bool
    map_index: int = -1


@dataclass(frozen=True, slots=True)
class GridCell:
    state: str
    try_number: int
    duration: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Grid:
    runs: list[RunView]
    """Oldest first: the columns, left to right."""
    task_ids: list[str]
    """The rows: the DAG's current tasks in definition order, then tasks only old runs had."""
    cells: dict[str, dict[str, GridCell]]
    """task_id -> run_id -> cell (absent: the run has no such task)."""


@dataclass(frozen=True, slots=True)
class PoolView:
    name: str
    slots: int
    description: str | None
    occupied: int


@dataclass(frozen=True, slots=True)
class Finding:
    """One decision of a scheduler's sanity loop (see `scheduler.sanity`)."""

    at: datetime
    kind: str
    """zombie, timeout, queued_timeout, lost, orphan, stopped, adopted."""
    what: str
    """The try (dag/run/task#try), or how many tries were adopted."""
    why: str


@dataclass(frozen=True, slots=True)
class SchedulerView:
    id: str
    hostname: str
    pid: int
    version: str | None
    started_at: datetime
    heartbeat_at: datetime
    ended_at: datetime | None
    seconds_since_heartbeat: float
    status: str
    """`alive`, `silent` (no heartbeat for the scheduler timeout) or `stopped`."""
    holds_sanity_lock: bool
    sanity_findings: dict[str, int]
    """What its sanity loop found since it started, by kind."""
    recent_findings: list[Finding]
    """Its sanity loop's newest decisions, newest first."""


# --- DAGs ----------------------------------------------------------------------------------


async def _recent_runs(
    session: AsyncSession, dag_ids: Sequence[str], per_dag: int
) -> dict[str, list[RunBrief]]:
    """The newest `per_dag` runs of each DAG, oldest first (one query, a window function)."""
    if not dag_ids:
        return {}
    rank = (
        func.row_number()
        .over(partition_by=DagRun.dag_id, order_by=(DagRun.logical_date.desc(), DagRun.id.desc()))
        .label("rank")
    )
    inner = (
        select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.logical_date, rank)
        .where(DagRun.dag_id.in_(list(dag_ids)))
        .subquery()
    )
    query = select(inner.c.dag_id, inner.c.run_id, inner.c.state, inner.c.logical_date).where(
        inner.c.rank <= per_dag
    )
    found: dict[str, list[RunBrief]] = defaultdict(list)
    for dag_id, run_id, state, logical in (await session.execute(query)).all():
        found[dag_id].append(RunBrief(run_id, state, logical))
    return {k: sorted(v, key=lambda r: r.logical_date) for k, v in found.items()}


def _summary(row: Dag | DagRecord, recent: list[RunBrief]) -> DagSummary:
    dag = readable(row.serialized)
    return DagSummary(
        dag_id=row.dag_id,
        description=dag.get("description"),
        schedule=row.schedule,
        next_run=row.next_interval_end,
        is_paused=row.is_paused,
        fileloc=row.fileloc,
        has_import_error=row.has_import_error,
        tags=list(dag.get("tags") or []),
        tasks=len(dag["tasks"]),
        recent_runs=recent,
    )


async def list_dags(session: AsyncSession, *, recent: int = RECENT_RUNS) -> list[DagSummary]:
    rows = await store_dags.list_dags(session)
    runs = await _recent_runs(session, [r.dag_id for r in rows], recent)
    return [_summary(r, runs.get(r.dag_id, [])) for r in rows]


async def _dag_row(session: AsyncSession, dag_id: str) -> Dag:
    row = await session.get(Dag, dag_id)
    if row is None or not row.is_active:
        raise NotFound(f"no DAG {dag_id!r}")
    return row


async def get_dag(session: AsyncSession, dag_id: str) -> DagDetail:
    row = await _dag_row(session, dag_id)
    runs = await _recent_runs(session, [dag_id], RECENT_RUNS)
    dag = readable(row.serialized)
    return DagDetail(
        summary=_summary(row, runs.get(dag_id, [])),
        params=dict(dag["params"]),
        required_params=[k for k in dag.get("param_specs", {}) if k not in dag["params"]],
        max_active_runs=dag["max_active_runs"],
        max_active_tasks=dag["max_active_tasks"],
        catchup=dag["catchup"],
        timezone=dag["timezone"],
        task_specs=[
            TaskSpec(
                t["task_id"],
                t["kind"],
                list(t["upstream"]),
                t["trigger_rule"],
                t["retries"],
                t["pool"],
            )
            for t in dag["tasks"].values()
        ],
    )


async def serialized_dag(session: AsyncSession, dag_id: str) -> SerializedDag:
    """The DAG's current stored version."""
    return readable((await _dag_row(session, dag_id)).serialized)


async def import_errors(session: AsyncSession) -> list[ImportErrorRecord]:
    return await store_dags.import_errors(session)


# --- runs ----------------------------------------------------------------------------------


def run_view(row: DagRun | RunInfo) -> RunView:
    return RunView(
        dag_id=row.dag_id,
        run_id=row.run_id,
        logical_date=row.logical_date,
        data_interval_start=row.data_interval_start,
        data_interval_end=row.data_interval_end,
        state=row.state,
        run_type=row.run_type,
        conf=dict(row.conf or {}),
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        duration=_seconds(row.started_at, row.ended_at),
    )


async def list_runs(
    session: AsyncSession,
    *,
    dag_id: str | None = None,
    state: str | None = None,
    run_type: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> RunPage:
    """Runs newest first, filtered; `total` counts every run that matches the filters."""
    where = []
    if dag_id is not None:
        where.append(DagRun.dag_id == dag_id)
    if state is not None:
        where.append(DagRun.state == state)
    if run_type is not None:
        where.append(DagRun.run_type == run_type)
    total = (await session.execute(select(func.count(DagRun.id)).where(*where))).scalar_one()
    query = (
        select(DagRun)
        .where(*where)
        .order_by(DagRun.logical_date.desc(), DagRun.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = (await session.execute(query)).scalars()
    return RunPage([run_view(r) for r in rows], int(total), limit, offset)


async def _run_row(session: AsyncSession, dag_id: str, run_id: str) -> DagRun:
    row = (
        await session.execute(
            select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"DAG {dag_id!r} has no run {run_id!r}")
    return row


async def get_run(session: AsyncSession, dag_id: str, run_id: str) -> RunView:
    return run_view(await _run_row(session, dag_id, run_id))


async def run_dag(session: AsyncSession, dag_id: str, run_id: str) -> SerializedDag | None:
    """The DAG version the run was created with (the current one for runs older than
    versions); None if neither is stored."""
    row = await _run_row(session, dag_id, run_id)
    hash_ = row.dag_hash
    if hash_ is None:
        current = await session.get(Dag, dag_id)
        return None if current is None else readable(current.serialized)
    version = await session.get(DagVersion, hash_)
    return None if version is None else readable(version.serialized)


# --- task instances and attempts ------------------------------------------------------------


def task_instance_view(row: TaskInstance | TaskInstanceRecord) -> TaskInstanceView:
    return TaskInstanceView(
        dag_id=row.dag_id,
        run_id=row.run_id,
        task_id=row.task_id,
        kind=row.kind,
        state=row.state,
        try_number=row.try_number,
        max_tries=row.max_tries,
        pool=row.pool,
        queued_at=row.queued_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        duration=_seconds(row.started_at, row.ended_at),
        exit_code=row.exit_code,
        reason=_last_line(row.error),
        handle=row.handle,
        next_poke_at=row.next_retry_at if row.state == states.UP_FOR_RESCHEDULE else None,
        map_index=row.map_index,
    )


async def list_task_instances(
    session: AsyncSession, dag_id: str, run_id: str
) -> list[TaskInstanceView]:
    run = await _run_row(session, dag_id, run_id)
    query = select(TaskInstance).where(TaskInstance.run_pk == run.id).order_by(TaskInstance.id)
    return [task_instance_view(r) for r in (await session.execute(query)).scalars()]


async def get_task_instance(
    session: AsyncSession, dag_id: str, run_id: str, task_id: str
) -> TaskInstanceView:
    run = await _run_row(session, dag_id, run_id)
    row = (
        await session.execute(
            select(TaskInstance).where(
                TaskInstance.run_pk == run.id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == -1,  # a mapped task: its own row
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"run {dag_id}/{run_id} has no task {task_id!r}")
    return task_instance_view(row)


async def list_attempts(
    session: AsyncSession, dag_id: str, run_id: str, task_id: str
) -> list[AttemptView]:
    await get_task_instance(session, dag_id, run_id, task_id)  # NotFound names what is missing
    query = (
        select(TaskAttempt, TaskAttempt.log_tail.is_not(None))
        .where(
            TaskAttempt.dag_id == dag_id,
            TaskAttempt.run_id == run_id,
            TaskAttempt.task_id == task_id,
        )
        .order_by(TaskAttempt.try_number)
    )
    return [attempt_view(a, bool(saved)) for a, saved in (await session.execute(query)).all()]


def attempt_view(a: TaskAttempt | AttemptRecord, has_saved_log: bool) -> AttemptView:
    return AttemptView(
        task_id=a.task_id,
        try_number=a.try_number,
        state=a.state,
        launcher=a.launcher,
        handle=a.handle,
        scheduler_id=a.scheduler_id,
        queued_at=a.queued_at,
        started_at=a.started_at,
        ended_at=a.ended_at,
        duration=_seconds(a.started_at, a.ended_at),
        exit_code=a.exit_code,
        reason=a.reason,
        message=a.message,
        has_saved_log=has_saved_log,
        map_index=a.map_index,
    )


# --- the grid ------------------------------------------------------------------------------


async def grid(session: AsyncSession, dag_id: str, *, runs: int = 25) -> Grid:
    """The newest `runs` runs of a DAG as columns and its tasks as rows (two queries)."""
    row = await _dag_row(session, dag_id)
    newest = list(
        (
            await session.execute(
                select(DagRun)
                .where(DagRun.dag_id == dag_id)
                .order_by(DagRun.logical_date.desc(), DagRun.id.desc())
                .limit(runs)
            )
        ).scalars()
    )[::-1]
    columns = [run_view(r) for r in newest]
    pks = {r.id: r.run_id for r in newest}
    cells: dict[str, dict[str, GridCell]] = defaultdict(dict)
    if pks:
        query = select(
            TaskInstance.run_pk,
            TaskInstance.task_id,
            TaskInstance.state,
            TaskInstance.try_number,
            TaskInstance.started_at,
            TaskInstance.ended_at,
            TaskInstance.error,
        ).where(TaskInstance.run_pk.in_(list(pks)), TaskInstance.map_index == -1)
        for pk, task_id, state, try_number, started, ended, error in (
            await session.execute(query)
        ).all():
            cells[task_id][pks[pk]] = GridCell(
                state, try_number, _seconds(started, ended), _last_line(error)
            )
    task_ids = _layered(readable(row.serialized))
    known = set(task_ids)
    task_ids += sorted(t for t in cells if t not in known)
    return Grid(columns, task_ids, dict(cells))


def _layered(dag: SerializedDag) -> list[str]:
    """Task ids by depth (roots first), definition order within a depth: the grid's rows
    read top to bottom in the order tasks can run. Iterative: no recursion limit."""
    tasks = dag["tasks"]
    depth: dict[str, int] = {}
    for start in tasks:
        stack = [start]
        while stack:
            tid = stack[-1]
            pending = [u for u in tasks[tid]["upstream"] if u not in depth and u in tasks]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            ups = [depth[u] for u in tasks[tid]["upstream"] if u in depth]
            depth[tid] = 1 + max(ups, default=-1)
    order = {tid: i for i, tid in enumerate(tasks)}
    return sorted(tasks, key=lambda t: (depth[t], order[t]))


# --- pools and schedulers ------------------------------------------------------------------


async def list_pools(session: AsyncSession) -> list[PoolView]:
    used = dict(
        (
            await session.execute(
                select(TaskInstance.pool, func.count(TaskInstance.id))
                .where(TaskInstance.state.in_(list(states.ACTIVE)), TaskInstance.pool.is_not(None))
                .group_by(TaskInstance.pool)
            )
        ).all()
    )
    rows = (await session.execute(select(Pool).order_by(Pool.name))).scalars()
    return [PoolView(p.name, p.slots, p.description, int(used.get(p.name, 0))) for p in rows]


async def schedulers(
    session: AsyncSession, now: datetime, *, timeout: float
) -> list[SchedulerView]:
    """Every registered scheduler; `timeout` is MINIFLOW_SCHEDULER_TIMEOUT (alive vs silent)."""
    holder = await sanity_lock.holder_id(session)
    sanity = await store_instances.sanity_findings(session)
    found = []
    for i in await store_instances.list_all(session):
        record = sanity.get(i.id) or {}
        if i.ended_at is not None:
            status = "stopped"
        else:
            status = "alive" if i.alive(now, timeout) else "silent"
        found.append(
            SchedulerView(
                id=i.id,
                hostname=i.hostname,
                pid=i.pid,
                version=i.version,
                started_at=i.started_at,
                heartbeat_at=i.heartbeat_at,
                ended_at=i.ended_at,
                seconds_since_heartbeat=round((now - i.heartbeat_at).total_seconds(), 1),
                status=status,
                holds_sanity_lock=i.id == holder,
                sanity_findings=dict(record.get("counts") or {}),
                recent_findings=[
                    Finding(datetime.fromisoformat(f["at"]), f["kind"], f["what"], f["why"])
                    for f in record.get("recent") or []
                ],
            )
        )
    return found
