"""Claiming one try: the transaction that makes this worker the one running it.

`claim_try` is step 2 of a run (see `miniflow_worker.runner`). One transaction
marks the try running with `task_instances.worker_claim`, which succeeds only
if the database still expects exactly this try and no other worker claimed it
(`heartbeat_at IS NULL`: a duplicate pod runs nothing). The same transaction
reads everything the run needs next (the task as defined by the DAG version
the run was created with, not the DAG's current one; the run's template
context; the upstream results of a Python task), so start-up costs one round
trip of statements.

A try that was claimed but cannot run (its DAG, run or task is gone) is still
a `Claim`, with a `problem` the runner records as the try's failure. A try
that was not claimed is only a message: nothing was changed, nothing is
recorded. This module never imports the scheduler, the launchers or
kubernetes_asyncio.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from miniflow_worker import execute
from miniflow_worker.clock import now
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from miniflow.authoring.context import TaskInstanceInfo
from miniflow.authoring.mapping import apply_map_args
from miniflow.authoring.serialized import SerializedDag, SerializedTask
from miniflow.authoring.templates import build_context, needs_dag_file
from miniflow.authoring.xcom import template_xcom, uses_xcom
from miniflow.errors import NotFound
from miniflow.store import runs, states, task_instances
from miniflow.store import xcom as store_xcom
from miniflow.store.engine import transaction

from .branching import downstream_map  # relative, so mypy sees its type (see `runner`)


@dataclass
class Claim:
    """What the claim transaction learned; `problem` is a failure to record instead of running."""

    ti_id: int
    try_number: int
    max_tries: int
    task: SerializedTask | None = None
    fileloc: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, Any] = field(default_factory=dict)
    downstream: dict[str, list[str]] = field(default_factory=dict)  # branch/short-circuit only
    problem: str | None = None
    map_args: dict[str, Any] | None = None  # a mapped instance's own arguments
    needs_dag_file: bool = False
    """The DAG has function macros / filters: rendering its templates imports its file."""


class TryRef(TypedDict):
    """The try a worker was started for (its command line)."""

    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    map_index: int


async def claim_try(factory: async_sessionmaker[AsyncSession], ref: TryRef) -> Claim | str:
    """Claim the try and read what running it needs; or why it was not claimed."""
    async with transaction(factory) as session:
        return await claim_in(session, ref)


async def claim_in(
    session: AsyncSession,
    ref: TryRef,
    versions: MutableMapping[str, SerializedDag] | None = None,
) -> Claim | str:
    """`claim_try`'s statements, in the caller's transaction (also the relay process',
    which passes the DAG versions it keeps: `runs.get_run_with_dag`)."""
    dag_id, run_id, task_id = ref["dag_id"], ref["run_id"], ref["task_id"]
    try_number, map_index = ref["try_number"], ref["map_index"]
    ti = await task_instances.worker_claim(
        session, dag_id, run_id, task_id, try_number, now(), map_index
    )
    if ti is None:
        return await _why_not_claimed(session, dag_id, run_id, task_id, try_number, map_index)
    claim = Claim(ti.id, ti.try_number, ti.max_tries, map_args=ti.map_args)
    try:
        found = await runs.get_run_with_dag(session, dag_id, run_id, versions)
    except NotFound as exc:
        claim.problem = str(exc)
        return claim
    run, serialized = found.run, found.dag
    if serialized is None:
        claim.problem = (
            f"the DAG version {run.dag_hash} of run {dag_id}/{run_id} is not in the database"
        )
        return claim
    task = serialized["tasks"].get(task_id)
    if task is None:
        claim.problem = (
            f"DAG {dag_id!r} has no task {task_id!r} in the version run {run_id!r} was "
            f"created with (file {serialized['fileloc']})"
        )
        return claim
    # The task comes from the run's version; a Python task's function can only come
    # from the file that defines the DAG now (the worker imports it).
    # A mapped Bash instance runs its own command / env (`@task`: see the runner).
    task = apply_map_args(task, ti.map_args)
    claim.task, claim.fileloc = task, found.current_fileloc or serialized["fileloc"]
    claim.needs_dag_file = needs_dag_file(serialized)
    claim.context = build_context(
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
        try_number=try_number,
        logical_date=run.logical_date,
        data_interval_start=run.data_interval_start,
        data_interval_end=run.data_interval_end,
        params={**serialized["params"], **run.conf},
        run_type=run.run_type,
        map_index=map_index,
        conf=run.conf,
        user_macros=serialized.get("user_defined_macros"),
    )
    if uses_xcom(task):  # `{{ ti.xcom_pull(...) }}` in a field the worker renders
        data = await store_xcom.load(session, dag_id, run_id)
        # A Bash task's template pushes were stored by the scheduler, which rendered
        # the same fields before launching this try: here they are only collected.
        claim.context["ti"] = claim.context["task_instance"] = TaskInstanceInfo(
            dag_id, run_id, task_id, try_number, map_index, xcom=template_xcom(task, data)
        )
    if task["kind"] == "python":
        claim.upstream = await task_instances.upstream_results(
            session, dag_id, run_id, execute.upstream_refs(task)
        )
    if task.get("python_mode"):
        claim.downstream = downstream_map(serialized["tasks"])
    return claim


async def _why_not_claimed(
    session: AsyncSession, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int
) -> str:
    key = (dag_id, run_id, task_id, map_index)
    name = f"{dag_id}/{run_id}/{task_id}" + (f"[{map_index}]" if map_index >= 0 else "")
    row = (await task_instances.find_keys(session, [key])).get(key)
    if row is None:
        return f"there is no task instance {name}; nothing to run"
    if row.try_number != try_number:
        why = f"not the current try (the current try is {row.try_number}, state {row.state})"
    elif row.state in states.ACTIVE:
        why = f"already claimed by another worker (state {row.state})"
    else:
        why = f"no longer queued or running (state {row.state})"
    return f"try {try_number} of {name} is {why}; nothing to run"
