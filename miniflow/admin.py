"""What the admin commands do, as plain async functions over a `Config`.

The CLI only parses arguments and prints; these functions talk to the store,
so the same operations are easy to test and to reuse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow import runtime
from miniflow.config import Config
from miniflow.errors import NotFound
from miniflow.schedule import DataInterval, Timetable
from miniflow.scheduler import trigger as trigger_mod
from miniflow.scheduler.parse_loop import DagParser
from miniflow.serialized import SerializedDag
from miniflow.store import attempts as store_attempts
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import pools as store_pools
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from miniflow.store.models import DagRun, ImportErrorRow, Pool, TaskAttempt, TaskInstance


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
async def _session(config: Config, *, parse: bool = False) -> AsyncIterator[AsyncSession]:
    """One engine for the whole command: parse first if asked, then one transaction."""
    async with runtime.open_engine(config) as engine:
        sessions = store_engine.sessionmaker(engine)
        if parse:
            parser = DagParser(config.dags_folder, timeout=config.parse_timeout)
            await parser.parse_once(sessions, _now())
        async with store_engine.transaction(sessions) as session:
            yield session


async def list_dags(config: Config, *, parse: bool = True) -> list[DagRowView]:
    async with _session(config, parse=parse) as session:
        rows = await store_dags.list_dags(session)
        last = await store_runs.last_scheduled_intervals(session)
        return [
            DagRowView(
                r.dag_id,
                r.schedule,
                r.next_interval_end or _next_run(r.serialized, last.get(r.dag_id)),  # type: ignore[arg-type]
                r.is_paused,
                r.fileloc,
                r.has_import_error,
                len(r.serialized.get("tasks", {})),
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
    async with runtime.open_engine(config) as engine:
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


async def import_errors(config: Config, *, parse: bool = True) -> list[ImportErrorRow]:
    async with _session(config, parse=parse) as session:
        return await store_dags.import_errors(session)


async def get_serialized(config: Config, dag_id: str) -> SerializedDag:
    async with _session(config, parse=True) as session:
        row = await store_dags.get_dag(session, dag_id)
        return row.serialized  # type: ignore[return-value]


async def set_paused(config: Config, dag_id: str, paused: bool) -> None:
    # parse first: a DAG file just written can be paused before its first run
    async with _session(config, parse=True) as session:
        await store_dags.set_paused(session, dag_id, paused)


async def trigger(
    config: Config,
    dag_id: str,
    *,
    conf_json: str | None,
    run_id: str | None = None,
    logical_date: datetime | None = None,
    parse: bool = True,
) -> str:
    async with _session(config, parse=parse) as session:
        return await trigger_mod.trigger(
            session,
            dag_id,
            conf_json=conf_json,
            now=_now(),
            logical_date=logical_date,
            run_id=run_id,
        )


async def list_runs(config: Config, dag_id: str | None, limit: int) -> list[DagRun]:
    async with _session(config) as session:
        return await store_runs.list_runs(session, dag_id, limit)


async def list_tasks(config: Config, dag_id: str, run_id: str) -> list[TaskInstance]:
    async with _session(config) as session:
        await store_runs.get_run(session, dag_id, run_id)
        return await store_tis.list_for_run(session, dag_id, run_id)


async def task_attempts(
    config: Config, dag_id: str, run_id: str, task_id: str
) -> list[TaskAttempt]:
    async with _session(config) as session:
        found = await store_attempts.for_task(session, dag_id, run_id, task_id)
        if not found:
            await store_runs.get_run(session, dag_id, run_id)
            raise NotFound(f"task {task_id!r} of {dag_id}/{run_id} has no attempt yet")
        return found


def downstream_of(dag: SerializedDag, task_id: str) -> list[str]:
    """task_id and everything downstream of it, in DAG order."""
    children: dict[str, list[str]] = {t: [] for t in dag["tasks"]}
    for tid, task in dag["tasks"].items():
        for up in task["upstream"]:
            children[up].append(tid)
    seen = {task_id}
    stack = [task_id]
    while stack:
        for child in children[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return [t for t in dag["tasks"] if t in seen]


async def clear(
    config: Config, dag_id: str, run_id: str, task_id: str, downstream: bool
) -> list[str]:
    async with _session(config) as session:
        # The run's own version: its dependencies and retries, not the file's today.
        found = await store_runs.get_run_with_dag(session, dag_id, run_id)
        if found.dag is None:
            raise NotFound(f"the DAG version of run {dag_id}/{run_id} is not in the database")
        dag = found.dag
        if task_id not in dag["tasks"]:
            raise NotFound(f"DAG {dag_id!r} has no task {task_id!r}")
        task_ids = downstream_of(dag, task_id) if downstream else [task_id]
        retries = {t: dag["tasks"][t]["retries"] for t in task_ids}
        await store_tis.clear(session, dag_id, run_id, task_ids, retries)
        return task_ids


async def set_pool(config: Config, name: str, slots: int, description: str | None) -> None:
    async with _session(config) as session:
        await store_pools.set_pool(session, name, slots, description)


async def list_pools(config: Config) -> list[Pool]:
    async with _session(config) as session:
        return await store_pools.list_pools(session)
