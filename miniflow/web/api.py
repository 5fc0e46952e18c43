"""The REST API under `/api/v1`: DAGs, runs, task instances, tries, logs, pools, health.

Field names are the store's (`browse` views), so the API, the pages and the
CLI speak of the same things. Lists that can grow without bound (runs) are
paginated with `limit` / `offset` and carry `total`. Every POST takes a JSON
body (see `auth`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.config import Config
from miniflow.errors import MiniflowError, NotFound
from miniflow.store import browse
from miniflow.store import engine as store_engine
from miniflow.store.records import ImportErrorRecord
from miniflow.web import actions, logview, source
from miniflow.web import grid as grid_view

router = APIRouter()


@asynccontextmanager
async def tx(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction, committed before the response is built."""
    async with store_engine.transaction(request.app.state.sessions) as session:
        yield session


def _config(request: Request) -> Config:
    config: Config = request.app.state.config
    return config


@dataclass(frozen=True, slots=True)
class DagList:
    dags: list[browse.DagSummary]
    total: int


@dataclass(frozen=True, slots=True)
class ImportErrorList:
    import_errors: list[ImportErrorRecord]


@dataclass(frozen=True, slots=True)
class TaskInstanceList:
    task_instances: list[browse.TaskInstanceView]


@dataclass(frozen=True, slots=True)
class AttemptList:
    tries: list[browse.AttemptView]


@dataclass(frozen=True, slots=True)
class Cleared:
    cleared: list[str]


@dataclass(frozen=True, slots=True)
class LogText:
    try_number: int
    lines: list[str]


@dataclass(frozen=True, slots=True)
class PoolList:
    pools: list[browse.PoolView]


@dataclass(frozen=True, slots=True)
class Health:
    status: str
    """`ok` when at least one scheduler is alive, else `no_scheduler`."""
    schedulers: list[browse.SchedulerView]


class TriggerBody(BaseModel):
    conf: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = None
    logical_date: datetime | None = None


class ClearBody(BaseModel):
    downstream: bool = False


class PoolBody(BaseModel):
    slots: int = Field(ge=0, le=actions.MAX_SLOTS)
    description: str | None = None


class Empty(BaseModel):
    pass


def matches(dag: browse.DagSummary, q: str | None, tag: str | None) -> bool:
    if tag and tag not in dag.tags:
        return False
    if q:
        text = " ".join([dag.dag_id, dag.description or "", dag.fileloc, *dag.tags]).lower()
        return q.lower() in text
    return True


# --- DAGs ----------------------------------------------------------------------------------


@router.get("/dags", response_model=DagList, tags=["dags"])
async def list_dags(request: Request, q: str | None = None, tag: str | None = None) -> DagList:
    """Every active DAG with its recent runs; `q` filters on id, description, file, tags."""
    async with tx(request) as session:
        found = [d for d in await browse.list_dags(session) if matches(d, q, tag)]
    return DagList(found, len(found))


@router.get("/dags/{dag_id}", response_model=browse.DagDetail, tags=["dags"])
async def get_dag(request: Request, dag_id: str) -> browse.DagDetail:
    async with tx(request) as session:
        return await browse.get_dag(session, dag_id)


async def _pause(request: Request, dag_id: str, paused: bool) -> browse.DagSummary:
    async with tx(request) as session:
        await actions.set_paused(session, dag_id, paused)
    async with tx(request) as session:
        return (await browse.get_dag(session, dag_id)).summary


@router.post("/dags/{dag_id}/pause", response_model=browse.DagSummary, tags=["dags"])
async def pause(request: Request, dag_id: str, _: Empty | None = None) -> browse.DagSummary:
    return await _pause(request, dag_id, True)


@router.post("/dags/{dag_id}/unpause", response_model=browse.DagSummary, tags=["dags"])
async def unpause(request: Request, dag_id: str, _: Empty | None = None) -> browse.DagSummary:
    return await _pause(request, dag_id, False)


@dataclass(frozen=True, slots=True)
class DagSource:
    fileloc: str
    source: str


@router.get("/dags/{dag_id}/source", response_model=DagSource, tags=["dags"])
async def get_source(request: Request, dag_id: str) -> DagSource:
    """The DAG file's text as it is now (read from the DAGs folder, never imported)."""
    async with tx(request) as session:
        fileloc = (await browse.get_dag(session, dag_id)).summary.fileloc
    return DagSource(fileloc, source.read(_config(request).dags_folder, fileloc))


@router.get("/import-errors", response_model=ImportErrorList, tags=["dags"])
async def import_errors(request: Request) -> ImportErrorList:
    async with tx(request) as session:
        return ImportErrorList(await browse.import_errors(session))


@router.get("/dags/{dag_id}/grid", response_model=browse.Grid, tags=["dags"])
async def grid(request: Request, dag_id: str, runs: int = Query(25, ge=1, le=100)) -> Response:
    """The newest `runs` runs (oldest first) x the DAG's tasks: `cells[task][run]`."""
    async with tx(request) as session:
        found = await browse.grid(session, dag_id, runs=runs)
    return Response(grid_view.as_json(found), media_type="application/json")


# --- runs ----------------------------------------------------------------------------------


@router.get("/runs", response_model=browse.RunPage, tags=["runs"])
async def list_runs(
    request: Request,
    dag_id: str | None = None,
    state: str | None = None,
    run_type: str | None = None,
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> browse.RunPage:
    """Runs newest first; `total` counts all runs matching the filters."""
    async with tx(request) as session:
        return await browse.list_runs(
            session, dag_id=dag_id, state=state, run_type=run_type, limit=limit, offset=offset
        )


@router.get("/dags/{dag_id}/runs", response_model=browse.RunPage, tags=["runs"])
async def list_dag_runs(
    request: Request,
    dag_id: str,
    state: str | None = None,
    run_type: str | None = None,
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> browse.RunPage:
    async with tx(request) as session:
        await browse.get_dag(session, dag_id)
        return await browse.list_runs(
            session, dag_id=dag_id, state=state, run_type=run_type, limit=limit, offset=offset
        )


@router.post("/dags/{dag_id}/runs", response_model=browse.RunView, status_code=201, tags=["runs"])
async def trigger(request: Request, dag_id: str, body: TriggerBody) -> browse.RunView:
    """Create a manual run; 422 names a conf key the DAG does not declare in its params."""
    when = body.logical_date
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    async with tx(request) as session:
        run_id = await actions.trigger(
            session, dag_id, body.conf, run_id=body.run_id, logical_date=when
        )
    async with tx(request) as session:
        return await browse.get_run(session, dag_id, run_id)


async def get_run(request: Request, dag_id: str, run_id: str) -> browse.RunView:
    async with tx(request) as session:
        return await browse.get_run(session, dag_id, run_id)


@router.post(
    "/dags/{dag_id}/runs/{run_id:path}/mark-failed", response_model=browse.RunView, tags=["runs"]
)
async def mark_failed(
    request: Request, dag_id: str, run_id: str, _: Empty | None = None
) -> browse.RunView:
    """End the run as failed: tasks not started are skipped; running tries are failed and
    stopped (their worker's heartbeat, else the scheduler's sanity loop, ends them)."""
    async with tx(request) as session:
        await actions.mark_failed(session, dag_id, run_id)
    async with tx(request) as session:
        return await browse.get_run(session, dag_id, run_id)


# --- task instances, tries, logs -------------------------------------------------------------

TI_PATH = "/dags/{dag_id}/runs/{run_id:path}/tasks"


@router.get(TI_PATH, response_model=TaskInstanceList, tags=["tasks"])
async def list_tasks(request: Request, dag_id: str, run_id: str) -> TaskInstanceList:
    async with tx(request) as session:
        return TaskInstanceList(await browse.list_task_instances(session, dag_id, run_id))


@router.get(TI_PATH + "/{task_id}", response_model=browse.TaskInstanceView, tags=["tasks"])
async def get_task(
    request: Request, dag_id: str, run_id: str, task_id: str
) -> browse.TaskInstanceView:
    async with tx(request) as session:
        return await browse.get_task_instance(session, dag_id, run_id, task_id)


@router.post(TI_PATH + "/{task_id}/clear", response_model=Cleared, tags=["tasks"])
async def clear(
    request: Request, dag_id: str, run_id: str, task_id: str, body: ClearBody
) -> Cleared:
    """Run a finished task again (with `downstream`, everything after it too)."""
    async with tx(request) as session:
        return Cleared(
            await actions.clear(session, dag_id, run_id, task_id, downstream=body.downstream)
        )


@router.get(TI_PATH + "/{task_id}/tries", response_model=AttemptList, tags=["tasks"])
async def list_tries(request: Request, dag_id: str, run_id: str, task_id: str) -> AttemptList:
    async with tx(request) as session:
        return AttemptList(await browse.list_attempts(session, dag_id, run_id, task_id))


@router.get(
    TI_PATH + "/{task_id}/tries/{try_number}", response_model=browse.AttemptView, tags=["tasks"]
)
async def get_try(
    request: Request, dag_id: str, run_id: str, task_id: str, try_number: int
) -> browse.AttemptView:
    async with tx(request) as session:
        tries = await browse.list_attempts(session, dag_id, run_id, task_id)
    for found in tries:
        if found.try_number == try_number:
            return found
    raise NotFound(f"{dag_id}/{run_id}/{task_id} has no try {try_number}")


@router.get(TI_PATH + "/{task_id}/tries/{try_number}/log", response_model=LogText, tags=["tasks"])
async def get_log(
    request: Request, dag_id: str, run_id: str, task_id: str, try_number: int
) -> LogText:
    """The try's log: the local launcher's log file, the pod's log, or the saved tail."""
    async with tx(request) as session:
        await browse.get_task_instance(session, dag_id, run_id, task_id)
    lines = await logview.read(_config(request), dag_id, run_id, task_id, try_number)
    return LogText(try_number, lines)


@router.get(
    TI_PATH + "/{task_id}/tries/{try_number}/log/follow",
    tags=["tasks"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def follow_log(
    request: Request, dag_id: str, run_id: str, task_id: str, try_number: int
) -> StreamingResponse:
    """Server-sent events: each log line as the try writes it (`data:` a JSON string), then
    `event: end` once the try has ended (`event: failure` first if the log cannot be read)."""
    async with tx(request) as session:
        tries = await browse.list_attempts(session, dag_id, run_id, task_id)
    if try_number not in {t.try_number for t in tries}:
        raise NotFound(f"{dag_id}/{run_id}/{task_id} has no try {try_number}")
    config = _config(request)

    async def events() -> AsyncIterator[str]:
        try:
            async for line in logview.follow(config, dag_id, run_id, task_id, try_number):
                yield f"data: {json.dumps(line)}\n\n"
        except MiniflowError as exc:
            yield f"event: failure\ndata: {json.dumps(str(exc))}\n\n"
        yield "event: end\ndata: {}\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- pools, health -------------------------------------------------------------------------


@router.get("/pools", response_model=PoolList, tags=["pools"])
async def list_pools(request: Request) -> PoolList:
    async with tx(request) as session:
        return PoolList(await browse.list_pools(session))


@router.post("/pools/{name}", response_model=PoolList, tags=["pools"])
async def set_pool(request: Request, name: str, body: PoolBody) -> PoolList:
    """Create or resize a pool."""
    async with tx(request) as session:
        await actions.set_pool(session, name, body.slots, body.description)
    return await list_pools(request)


@router.get("/health", response_model=Health, tags=["health"])
async def health(request: Request) -> Health:
    """Scheduler instances with their last heartbeat (the database answered if this did)."""
    async with tx(request) as session:
        found = await browse.schedulers(
            session, datetime.now(UTC), timeout=_config(request).scheduler_timeout
        )
    alive = any(s.status == "alive" for s in found)
    return Health("ok" if alive else "no_scheduler", found)


# Last: a run id may contain "/" (`{run_id:path}`), and routes are tried in order, so this
# route, a prefix of every route below a run, must not shadow them.
router.add_api_route(
    "/dags/{dag_id}/runs/{run_id:path}",
    get_run,
    methods=["GET"],
    response_model=browse.RunView,
    tags=["runs"],
)
