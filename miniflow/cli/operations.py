"""What the admin commands do, as plain async functions over a `Config`.

The CLI only parses arguments and prints; these functions talk to the store,
so the same operations are easy to test and to reuse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from miniflow.authoring.schedule import DataInterval, Timetable
from miniflow.authoring.serialized import SerializedDag, readable
from miniflow.cli import wiring
from miniflow.config import Config
from miniflow.errors import NotFound, PermanentError
from miniflow.scheduler import manual_runs
from miniflow.scheduler.parse_loop import DagParser
from miniflow.store import attempts as store_attempts
from miniflow.store import clearing, sanity_lock, states
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import instances as store_instances
from miniflow.store import pools as store_pools
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from miniflow.store.models import Dag, DagRun
from miniflow.store.records import (
    AttemptRecord,
    ImportErrorRecord,
    PoolRecord,
    RunInfo,
    TaskInstanceRecord,
)

LATEST = "latest"
"""The run id that means a DAG's newest run (the top row of `miniflow runs list DAG`)."""

MAX_NAME = 250
"""Longest dag/run/pool name the database columns hold."""


@dataclass(frozen=True, slots=True)
class DagRowView:
    dag_id: str
    schedule: str | None
    next_run: datetime | None
    is_paused: bool
    fileloc: str
    has_import_error: bool
    tasks: int


def _now() -> datetime:
    return datetime.now(UTC)


@asynccontextmanager
async def _session(
    config: Config,
    *,
    parse: bool = False,
    read_only: bool = False,
    parse_for: str | None = None,
    engine: AsyncEngine | None = None,
) -> AsyncIterator[AsyncSession]:
    """One engine for the whole command (`engine`, if the caller opened one for more than
    this): parse first if asked (the folder, or only what one DAG needs: `parse_for`), then
    one transaction.

    `read_only` commands never create the embedded SQLite database: a missing
    file means nothing ever ran with this MINIFLOW_HOME / state dir, which is
    worth saying instead of showing an empty table from a new empty database.
    """
    if read_only:
        _require_sqlite_file(config)
    async with wiring.using_engine(config, engine) as engine:
        sessions = store_engine.sessionmaker(engine)
        if parse or parse_for is not None:
            parser = DagParser(config.dags_folder, timeout=config.parse_timeout)
            if parse_for is not None:
                await parser.parse_dag_file(sessions, _now(), parse_for)
            else:
                await parser.parse_once(sessions, _now())
        async with store_engine.transaction(sessions) as session:
            yield session


def _require_sqlite_file(config: Config) -> None:
    url = make_url(config.database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    if not Path(url.database).exists():
        raise NotFound(
            f"no miniflow database at {url.database}: nothing has run with this state dir yet "
            "(set MINIFLOW_HOME or MINIFLOW_DATABASE_URL to the one your scheduler uses)"
        )


async def _dag_known(session: AsyncSession, dag_id: str) -> None:
    """Raise NotFound unless the DAG is defined now or has runs from when it was."""
    if await session.get(Dag, dag_id) is None:
        await store_dags.get_dag(session, dag_id)  # raises, naming `dags list` / `dags errors`


async def resolve_run(session: AsyncSession, dag_id: str, run_ref: str | None) -> str:
    """The run id meant by `run_ref`: an id, `latest` (or None), or a unique prefix."""
    if run_ref is None or run_ref == LATEST:
        newest = await store_runs.list_runs(session, dag_id, limit=1)
        if newest:
            return newest[0].run_id
        await _dag_known(session, dag_id)
        raise NotFound(f"DAG {dag_id!r} has no runs yet (start one: `miniflow dags trigger`)")
    try:
        return (await store_runs.get_run(session, dag_id, run_ref)).run_id
    except NotFound:
        pass
    escaped = run_ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = (
        select(DagRun.run_id)
        .where(DagRun.dag_id == dag_id, DagRun.run_id.like(f"{escaped}%", escape="\\"))
        .order_by(DagRun.logical_date.desc())
        .limit(6)
    )
    matches = list((await session.execute(query)).scalars())
    if len(matches) == 1:
        return matches[0]
    await _dag_known(session, dag_id)
    if matches:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise NotFound(f"run id prefix {run_ref!r} of DAG {dag_id!r} is ambiguous: {shown}")
    raise NotFound(f"DAG {dag_id!r} has no run {run_ref!r} (see `miniflow runs list {dag_id}`)")


async def list_dags(config: Config, *, parse: bool = True) -> list[DagRowView]:
    async with _session(config, parse=parse) as session:
        rows = await store_dags.list_dags(session)
        last = await store_runs.last_scheduled_intervals(session)
        return [
            DagRowView(
                r.dag_id,
                r.schedule,
                r.next_interval_end or _next_run(readable(r.serialized), last.get(r.dag_id)),
                r.is_paused,
                r.fileloc,
                r.has_import_error,
                len(readable(r.serialized)["tasks"]),
            )
            for r in rows
        ]


def _next_run(dag: SerializedDag, last: tuple[datetime, datetime] | None) -> datetime | None:
    """When the next scheduled run happens (the end of its data interval), if any."""
    if dag.get("schedule") is None:
        return None
    try:
        interval = Timetable.from_serialized(dag).next_scheduled(
            DataInterval(*last) if last else None, _now()
        )
    except ValueError:
        return None
    return interval.end if interval else None


async def reparse(config: Config, file: str | None = None) -> list[store_dags.ParsedFile]:
    """Parse one DAG file (or every one) now, changed or not; returns every file parsed.

    The way to pick up an edited helper module or a newly installed package before
    the scheduler's own `reparse_interval` comes round. A version already stored
    (same hash) is not stored again.
    """
    if not config.dags_folder.is_dir():
        raise NotFound(f"DAGs folder {config.dags_folder} does not exist")
    async with wiring.open_engine(config) as engine:
        sessions = store_engine.sessionmaker(engine)
        parser = DagParser(config.dags_folder, timeout=config.parse_timeout)
        wanted = None if file is None else parser.fileloc(file)
        report = await parser.parse(sessions, _now(), force=True if wanted is None else [wanted])
    if wanted is not None and wanted not in {f.fileloc for f in report.files}:
        raise NotFound(
            f"{wanted} is not a DAG file (it must mention both 'miniflow' and 'dag', "
            "and not be ignored by a .miniflowignore)"
        )
    return report.files


async def import_errors(config: Config, *, parse: bool = True) -> list[ImportErrorRecord]:
    async with _session(config, parse=parse) as session:
        return await store_dags.import_errors(session)


async def get_serialized(config: Config, dag_id: str) -> SerializedDag:
    async with _session(config, parse=True) as session:
        row = await store_dags.get_dag(session, dag_id)
        return readable(row.serialized)


async def set_paused(config: Config, dag_id: str, paused: bool) -> None:
    # parse first: a DAG file just written can be paused before its first run
    async with _session(config, parse=True) as session:
        await store_dags.set_paused(session, dag_id, paused)


async def check_trigger(config: Config, dag_id: str, conf_json: str | None) -> None:
    """Raise what `trigger` would for an unknown DAG or a bad conf, creating nothing."""
    async with _session(config, parse=True) as session:
        dag = readable((await store_dags.get_dag(session, dag_id)).serialized)
        manual_runs.parse_conf(conf_json, dag)


async def trigger(
    config: Config,
    dag_id: str,
    *,
    conf_json: str | None,
    run_id: str | None = None,
    logical_date: datetime | None = None,
    parse: bool = True,
    engine: AsyncEngine | None = None,
) -> str:
    async with _session(config, parse_for=dag_id if parse else None, engine=engine) as session:
        return await manual_runs.trigger(
            session,
            dag_id,
            conf_json=conf_json,
            now=_now(),
            logical_date=logical_date,
            run_id=run_id,
        )


async def list_runs(config: Config, dag_id: str | None, limit: int) -> list[RunInfo]:
    async with _session(config, read_only=True) as session:
        found = await store_runs.list_runs(session, dag_id, limit)
        if not found and dag_id is not None:
            await _dag_known(session, dag_id)
        return found


async def list_tasks(
    config: Config, dag_id: str, run_ref: str | None
) -> tuple[str, list[TaskInstanceRecord]]:
    async with _session(config, read_only=True) as session:
        run_id = await resolve_run(session, dag_id, run_ref)
        return run_id, await store_tis.list_for_run(session, dag_id, run_id)


async def list_attempts(
    config: Config, dag_id: str, run_ref: str | None
) -> tuple[str, list[AttemptRecord]]:
    """Every try of every task of a run, in the order they were queued."""
    async with _session(config, read_only=True) as session:
        run_id = await resolve_run(session, dag_id, run_ref)
        return run_id, await store_attempts.for_run(session, dag_id, run_id)


async def _task_instance(
    session: AsyncSession, dag_id: str, run_id: str, task_id: str, map_index: int = -1
) -> TaskInstanceRecord:
    tis = await store_tis.list_for_run(session, dag_id, run_id)
    for ti in tis:
        if ti.task_id == task_id and ti.map_index == map_index:
            return ti
    if map_index >= 0 and any(ti.task_id == task_id for ti in tis):
        count = sum(ti.task_id == task_id and ti.map_index >= 0 for ti in tis)
        raise NotFound(
            f"task {task_id!r} of {dag_id}/{run_id} has no mapped instance {map_index} "
            f"({count} mapped instances)"
        )
    known = ", ".join(dict.fromkeys(ti.task_id for ti in tis)) or "none"  # in order, once each
    raise NotFound(f"run {dag_id}/{run_id} has no task {task_id!r} (its tasks: {known})")


async def task_attempts(
    config: Config, dag_id: str, run_ref: str | None, task_id: str, map_index: int = -1
) -> tuple[TaskInstanceRecord, list[AttemptRecord]]:
    """The task instance (resolved run) and its tries; NotFound if it has none yet."""
    async with _session(config, read_only=True) as session:
        run_id = await resolve_run(session, dag_id, run_ref)
        ti = await _task_instance(session, dag_id, run_id, task_id, map_index)
        found = await store_attempts.for_task(session, dag_id, run_id, task_id, map_index)
        if not found and ti.map_index < 0 and await _is_mapped(session, ti):
            raise NotFound(
                f"task {task_id!r} of {dag_id}/{run_id} is mapped: its mapped instances have "
                "the tries and logs (pass --map-index N; `miniflow tasks list` shows them)"
            )
        if not found and ti.kind == "empty":
            raise NotFound(
                f"task {task_id!r} of {dag_id}/{run_id} is an Empty task: it runs no process, "
                f"so it has no tries or logs (state: {ti.state})"
            )
        if not found:
            raise NotFound(
                f"task {task_id!r} of {dag_id}/{run_id} has not been tried yet (state: {ti.state})"
            )
        return ti, found


async def _is_mapped(session: AsyncSession, ti: TaskInstanceRecord) -> bool:
    tis = await store_tis.list_for_run(session, ti.dag_id, ti.run_id)
    return any(t.task_id == ti.task_id and t.map_index >= 0 for t in tis)


async def task_result(
    config: Config, dag_id: str, run_ref: str | None, task_id: str, map_index: int = -1
) -> Any:
    """The JSON result of a @task's successful try (of a mapped task: the list of its
    mapped instances' results, or one instance's with `map_index`)."""
    async with _session(config, read_only=True) as session:
        run_id = await resolve_run(session, dag_id, run_ref)
        ti = await _task_instance(session, dag_id, run_id, task_id, map_index)
        if map_index < 0 and ti.state == states.SUCCESS and await _is_mapped(session, ti):
            return (await store_tis.upstream_results(session, dag_id, run_id, [task_id]))[task_id]
        if ti.kind != "python" and ti.result is None:
            raise NotFound(f"{task_id!r} is a {ti.kind} task: only @task functions have results")
        if ti.state != states.SUCCESS:
            raise NotFound(
                f"task {task_id!r} of {dag_id}/{run_id} has no result: it is {ti.state}, "
                "not success"
            )
        return ti.result


def downstream_of(dag: SerializedDag, task_id: str) -> list[str]:
    """task_id and everything downstream of it, in DAG order."""
    return clearing.downstream_of(dag, task_id)


async def clear(
    config: Config, dag_id: str, run_ref: str, task_id: str, downstream: bool
) -> tuple[str, list[str]]:
    """Clear a task (and its downstream); returns the resolved run id and the cleared ids."""
    async with _session(config) as session:
        run_id = await resolve_run(session, dag_id, run_ref)
        # The run's own version: its dependencies and retries, not the file's today.
        found = await store_runs.get_run_with_dag(session, dag_id, run_id)
        if found.dag is None:
            raise NotFound(f"the DAG version of run {dag_id}/{run_id} is not in the database")
        dag = found.dag
        if task_id not in dag["tasks"]:
            raise NotFound(f"DAG {dag_id!r} has no task {task_id!r}")
        # With the setups / teardowns and branch skips it brings along (`store.clearing`).
        task_ids = await clearing.clear_tasks(
            session, dag, dag_id, run_id, task_id, downstream=downstream
        )
        return run_id, task_ids


async def mark_run_failed(config: Config, dag_id: str, run_ref: str) -> tuple[str, bool]:
    """The run ends failed, its running tries stopped (`store.runs.mark_failed`, as the
    web's button); returns the resolved run id and False if it had already finished."""
    async with _session(config) as session:
        run_id = await resolve_run(session, dag_id, run_ref)
        return run_id, await store_runs.mark_failed(session, dag_id, run_id, _now())


async def list_schedulers(
    config: Config,
) -> tuple[list[tuple[store_instances.Instance, int]], str | None]:
    """Every registered scheduler instance with how many open attempts it owns, and the
    id of the one holding the sanity lock (None on SQLite, or if none holds it)."""
    async with _session(config, read_only=True) as session:
        owned = await store_attempts.open_by_scheduler(session)
        rows = [(i, owned.get(i.id, 0)) for i in await store_instances.list_all(session)]
        return rows, await sanity_lock.holder_id(session)


async def set_pool(config: Config, name: str, slots: int, description: str | None) -> None:
    if not name.strip() or len(name) > MAX_NAME:
        raise PermanentError(f"a pool name has 1 to {MAX_NAME} characters, got {name!r}")
    async with _session(config) as session:
        await store_pools.set_pool(session, name, slots, description)


async def list_pools(config: Config) -> list[PoolRecord]:
    async with _session(config, read_only=True) as session:
        return await store_pools.list_pools(session)
