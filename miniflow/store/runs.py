"""DAG runs: creation (with their task instances), promotion and completion.

A run records the DAG version it was created with (`dag_run.dag_hash`): its
task instances come from that version, and so does everything the scheduler
and the worker later read about its tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.mapping import MapError, expand_values, max_map_length, upstream_refs
from miniflow.authoring.serialized import SerializedDag, readable
from miniflow.errors import NotFound, PermanentError
from miniflow.store import attempts as store_attempts
from miniflow.store import dags as store_dags
from miniflow.store import states, wakeup
from miniflow.store import task_instances as store_tis
from miniflow.store.engine import rowcount as store_rowcount
from miniflow.store.models import Dag, DagRun, DagVersion, TaskInstance
from miniflow.store.records import RunInfo, build, columns, table


class RunExists(PermanentError):
    """A run with this run_id already exists for the DAG."""


@dataclass(frozen=True, slots=True)
class RunVersion:
    """Which DAG version a run uses."""

    id: int
    dag_id: str
    dag_hash: str | None


def _info(row: DagRun) -> RunInfo:
    return RunInfo(
        id=row.id,
        dag_id=row.dag_id,
        run_id=row.run_id,
        logical_date=row.logical_date,
        data_interval_start=row.data_interval_start,
        data_interval_end=row.data_interval_end,
        state=row.state,
        run_type=row.run_type,
        conf=dict(row.conf or {}),
        dag_hash=row.dag_hash,
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


RUN_START_LOCK = 0x6D667275  # "mfru": serializes starting queued runs across schedulers


async def serialize_run_starts(session: AsyncSession) -> None:
    """Hold the run-start lock until this transaction ends (PostgreSQL; SQLite has one
    writer): counting the running runs and starting more is one step per scheduler."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(RUN_START_LOCK)))


async def create_run(
    session: AsyncSession,
    *,
    dag: SerializedDag,
    run_id: str,
    run_type: str,
    logical_date: datetime,
    interval: tuple[datetime, datetime],
    conf: dict[str, Any],
    now: datetime,
    dag_hash: str | None = None,
    tries_before: Mapping[str, int] | None = None,
) -> int:
    """Insert a queued run and one `none` task instance per task; returns the run pk.

    `dag_hash` names the stored version `dag` is (the DAG row's current one); without
    it the version is computed from `dag` and stored if new, so a run always has one.
    `tries_before` (task_id -> tries already made under this run id, by a run it
    replaces) numbers the new tries after those, retries included, as a clear does:
    a try's key (its log file, its pod name) is never reused.
    """
    if dag_hash is None:
        dag_hash = store_dags.dag_hash(dag)
        await store_dags.save_versions(session, [(dag_hash, dag)], now)
    try:
        async with session.begin_nested():
            run = DagRun(
                dag_id=dag["dag_id"],
                run_id=run_id,
                logical_date=logical_date,
                data_interval_start=interval[0],
                data_interval_end=interval[1],
                state=states.RUN_QUEUED,
                run_type=run_type,
                conf=conf,
                dag_hash=dag_hash,
                created_at=now,
            )
            session.add(run)
            await session.flush()
    except IntegrityError as exc:
        raise RunExists(f"DAG {dag['dag_id']!r} already has a run {run_id!r}") from exc
    rows = [
        {
            "run_pk": run.id,
            "dag_id": dag["dag_id"],
            "run_id": run_id,
            "task_id": task_id,
            "kind": task["kind"],
            "state": states.NONE,
            "try_number": (tries_before or {}).get(task_id, 0),
            "max_tries": (tries_before or {}).get(task_id, 0) + task["retries"],
            "priority": task["priority"],
            "pool": task["pool"],
        }
        for task_id, task in dag["tasks"].items()
    ]
    rows += literal_instances(dag, rows)
    if rows:
        await session.execute(insert(TaskInstance), rows)
    await wakeup.announce(session, "run")
    return run.id


def literal_instances(dag: SerializedDag, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The mapped instances (`none`) of the mapped tasks that map over literal lists only,
    so a new run lists them at once; each such task's row (in `rows`) records its
    expansion. Others (and an expansion that cannot be made, or is empty) are expanded by
    the scheduler when the task may run (`miniflow.scheduler.mapping`)."""
    out: list[dict[str, Any]] = []
    for row in rows:
        task = dag["tasks"][row["task_id"]]
        if "expand" not in task or upstream_refs(task):
            continue
        try:
            items = expand_values(task, lambda ref: ref.get("value"), max_map_length())
        except MapError:
            continue  # the scheduler fails the task, saying why
        if not items:
            continue
        row["map_args"] = {"length": len(items)}
        out += [{**row, "map_index": i, "map_args": args} for i, args in enumerate(items)]
    return out


async def versions_of(session: AsyncSession, pks: Sequence[int]) -> list[RunVersion]:
    """The DAG version of each run among `pks` (deleted runs are absent)."""
    if not pks:
        return []
    query = select(DagRun.id, DagRun.dag_id, DagRun.dag_hash).where(DagRun.id.in_(sorted(set(pks))))
    return [RunVersion(*row) for row in (await session.execute(query)).all()]


async def run_counts(session: AsyncSession) -> dict[str, int]:
    """Queued and running runs per DAG (what max_active_runs limits)."""
    query = (
        select(DagRun.dag_id, func.count())
        .where(DagRun.state.in_([states.RUN_QUEUED, states.RUN_RUNNING]))
        .group_by(DagRun.dag_id)
    )
    return {dag_id: count for dag_id, count in (await session.execute(query)).all()}


async def last_scheduled_intervals(session: AsyncSession) -> dict[str, tuple[datetime, datetime]]:
    """The newest scheduled run's data interval per DAG."""
    latest = (
        select(DagRun.dag_id, func.max(DagRun.data_interval_end).label("end"))
        .where(DagRun.run_type == states.RUN_TYPE_SCHEDULED)
        .group_by(DagRun.dag_id)
        .subquery()
    )
    query = (
        select(DagRun.dag_id, DagRun.data_interval_start, DagRun.data_interval_end)
        .join(
            latest, (DagRun.dag_id == latest.c.dag_id) & (DagRun.data_interval_end == latest.c.end)
        )
        .where(DagRun.run_type == states.RUN_TYPE_SCHEDULED)
    )
    return {dag_id: (start, end) for dag_id, start, end in (await session.execute(query)).all()}


async def queued_runs(session: AsyncSession) -> list[RunInfo]:
    query = select(DagRun).where(DagRun.state == states.RUN_QUEUED).order_by(DagRun.logical_date)
    return [_info(row) for row in (await session.execute(query)).scalars()]


async def running_runs(session: AsyncSession, pks: Sequence[int] | None = None) -> list[RunInfo]:
    query = select(DagRun).where(DagRun.state == states.RUN_RUNNING)
    if pks is not None:
        query = query.where(DagRun.id.in_(list(pks)))
    return [_info(row) for row in (await session.execute(query)).scalars()]


async def set_state(
    session: AsyncSession,
    pk: int,
    *,
    expected: str,
    state: str,
    now: datetime,
    seen_unfinished: Sequence[int] | None = None,
) -> bool:
    """Move the run from `expected` to `state`.

    With `seen_unfinished` (the ids of the run's task instances the caller saw not
    finished when it decided), only while no other task instance of the run is unfinished:
    a `tasks clear` committed since the caller looked puts one back to `none`, and the run
    then goes on instead of ending with that task never scheduled."""
    values: dict[str, Any] = {"state": state}
    if state == states.RUN_RUNNING:
        values["started_at"] = now
        values["ended_at"] = None
    elif state in states.RUN_FINISHED:
        values["ended_at"] = now
    query = update(DagRun).where(DagRun.id == pk, DagRun.state == expected)
    if seen_unfinished is not None:
        unfinished = select(TaskInstance.id).where(
            TaskInstance.run_pk == pk, TaskInstance.state.not_in(list(states.FINISHED))
        )
        if seen_unfinished:
            unfinished = unfinished.where(TaskInstance.id.not_in(list(seen_unfinished)))
        query = query.where(~unfinished.exists())
    result = await session.execute(query.values(**values))
    changed = bool(store_rowcount(result))
    if changed and state in states.RUN_FINISHED:
        await wakeup.announce(session, "run")  # `dags trigger --wait` learns of the end
    return changed


async def get_run(session: AsyncSession, dag_id: str, run_id: str) -> RunInfo:
    row = (
        await session.execute(
            select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"DAG {dag_id!r} has no run {run_id!r} (see `miniflow runs list {dag_id}`)")
    return _info(row)


async def find_run(session: AsyncSession, dag_id: str, run_id: str) -> RunInfo | None:
    """The run, or None if the DAG has no run `run_id`."""
    try:
        return await get_run(session, dag_id, run_id)
    except NotFound:
        return None


async def delete_run(session: AsyncSession, pk: int) -> None:
    """Delete a run with its task instances and attempts (foreign keys cascade)."""
    await session.execute(delete(DagRun).where(DagRun.id == pk))


async def get_run_by_pk(session: AsyncSession, pk: int) -> RunInfo:
    row = await session.get(DagRun, pk)
    if row is None:
        raise NotFound(f"no run with id {pk}")
    return _info(row)


@dataclass(frozen=True, slots=True)
class RunWithDag:
    """A run, the DAG version it runs, and where the DAG is defined now."""

    run: RunInfo
    dag: SerializedDag | None
    """The run's version (the DAG's current one if the run predates versions); None if
    that version is not stored."""
    current_fileloc: str | None
    """The file that defines the DAG now (a Python task imports it); None without a DAG row."""


async def get_run_with_dag(
    session: AsyncSession,
    dag_id: str,
    run_id: str,
    versions: MutableMapping[str, SerializedDag] | None = None,
) -> RunWithDag:
    """What a worker needs to know about the run of the try it claimed, in one query.

    `versions`: DAG versions by hash that a long-lived caller keeps (the forkserver's
    relay process claims every forked try): the run is read with its version's hash
    only, and the version (a second query) only when it is not there yet; it is added.
    A version never changes under its hash, and a large DAG's is most of what a claim
    reads (501 tasks: 213 kB of JSON, 2.5 ms of the claim's CPU to fetch and decode)."""
    params = {"dag_id": dag_id, "run_id": run_id}
    if versions is None:
        found = (await session.execute(_RUN_WITH_DAG, params)).one_or_none()
        if found is None:
            raise _no_run(dag_id, run_id)
        *fields, serialized, fileloc = found
        return RunWithDag(
            _run_info(fields), None if serialized is None else readable(serialized), fileloc
        )
    found = (await session.execute(_RUN_WITH_HASH, params)).one_or_none()
    if found is None:
        raise _no_run(dag_id, run_id)
    *fields, dag_hash, fileloc = found
    if dag_hash is not None and dag_hash not in versions:
        versions.update(await store_dags.get_versions(session, [dag_hash]))
    known = versions.get(dag_hash) if dag_hash is not None else None
    return RunWithDag(_run_info(fields), known, fileloc)


def _no_run(dag_id: str, run_id: str) -> NotFound:
    return NotFound(f"DAG {dag_id!r} has no run {run_id!r} (see `miniflow runs list {dag_id}`)")


def _run_info(fields: Sequence[Any]) -> RunInfo:
    run = RunInfo(*fields)
    return replace(run, conf={}) if run.conf is None else run


def _run_read(*, with_version: bool) -> Any:
    """Built once, on the tables (a worker runs it at each claim): the run, its version
    (or, without `with_version`, the version's hash: the DAG's current one if the run
    predates versions) and the file that defines the DAG now."""
    run, dag, version = table(RunInfo), Dag.__table__, DagVersion.__table__
    version_hash = func.coalesce(run.c.dag_hash, dag.c.dag_hash)
    joined = run.outerjoin(dag, dag.c.dag_id == run.c.dag_id)
    if with_version:
        joined = joined.outerjoin(version, version.c.dag_hash == version_hash)
    read = version.c.serialized if with_version else version_hash.label("version_hash")
    return (
        select(*columns(RunInfo), read, dag.c.fileloc)
        .select_from(joined)
        .where(run.c.dag_id == bindparam("dag_id"), run.c.run_id == bindparam("run_id"))
    )


_RUN_WITH_DAG = _run_read(with_version=True)
_RUN_WITH_HASH = _run_read(with_version=False)


async def list_runs(
    session: AsyncSession, dag_id: str | None = None, limit: int = 50
) -> list[RunInfo]:
    c = table(RunInfo).c
    query = select(*columns(RunInfo)).order_by(c.logical_date.desc(), c.id.desc()).limit(limit)
    if dag_id is not None:
        query = query.where(c.dag_id == dag_id)
    return build(RunInfo, await session.execute(query))


MARKED_FAILED = "marked failed"
"""The reason noted on the attempt of a try a user's "mark failed" stopped."""


async def mark_failed(session: AsyncSession, dag_id: str, run_id: str, now: datetime) -> bool:
    """A user's "mark failed" (the web's button, its API, `miniflow runs mark-failed`): the
    unfinished run ends failed, its tasks that have not started (none, scheduled, up for
    retry, a sensor between pokes) are skipped, and its queued and running tries are
    failed with no retry, as Airflow does. A failed try is stopped: its worker's next
    heartbeat finds it fenced out and stops the task, and the sanity loop of the
    scheduler that owns it kills what is still running (a process or pod without a
    worker). False if the run had already finished."""
    run = await get_run(session, dag_id, run_id)
    if run.state in states.RUN_FINISHED:
        return False
    if not await set_state(session, run.id, expected=run.state, state=states.RUN_FAILED, now=now):
        return False
    rows = (
        await session.execute(
            select(TaskInstance.id, TaskInstance.state, TaskInstance.try_number).where(
                TaskInstance.run_pk == run.id,
                TaskInstance.state.in_(
                    [
                        states.SCHEDULED,
                        states.UP_FOR_RETRY,
                        states.UP_FOR_RESCHEDULE,
                        states.QUEUED,
                        states.RUNNING,
                    ]
                ),
            )
        )
    ).all()
    message = f"run {dag_id}/{run_id} marked failed"
    active = [(i, t) for i, s, t in rows if s in states.ACTIVE]
    outcomes = [
        store_tis.Outcome(i, t, states.FAILED, (states.QUEUED, states.RUNNING), error=message)
        for i, t in active
    ]
    stopped = await store_tis.finish(session, outcomes, now)
    await store_attempts.note(
        session,
        [(i, t, MARKED_FAILED, message) for i, t in active if i in stopped],
        states={i: states.FAILED for i in stopped},
    )
    waiting = [(i, s) for i, s, _ in rows if s not in states.ACTIVE]
    # scheduled / up_for_retry / up_for_reschedule may only go back to none (a clear);
    # from there, skipped
    await store_tis.set_states(session, [(i, s, states.NONE) for i, s in waiting], now)
    none = (
        await session.execute(
            select(TaskInstance.id).where(
                TaskInstance.run_pk == run.id, TaskInstance.state == states.NONE
            )
        )
    ).scalars()
    await store_tis.set_states(session, [(i, states.NONE, states.SKIPPED) for i in none], now)
    # a mapped task's own row: its instances were skipped above (or end on their own)
    mapped = (
        await session.execute(
            select(TaskInstance.id).where(
                TaskInstance.run_pk == run.id, TaskInstance.state == states.MAPPED
            )
        )
    ).scalars()
    await store_tis.set_states(session, [(i, states.MAPPED, states.SKIPPED) for i in mapped], now)
    return True
