"""Expanding mapped tasks: from a task that may run to one task instance per map_index.

Readiness marks a mapped task `mapped` (`readiness.settle`); in the same transaction
`expand` reads what it maps over (literal lists from the run's DAG version, upstream
results from the database), creates its mapped instances `scheduled` (claimed and
launched like any task from the next round on), or ends the task: `skipped` for an empty
expansion, `failed` with the reason when the expansion cannot be made (not a list, more
than `max_map_length` items, an item a Bash or Pod field cannot take). Creating is
idempotent (`store.mapping.add_instances`): a scheduler that expands a task again after a
crash, or two that expand it at once, create each instance once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.mapping import MapError, expand_values, upstream_refs
from miniflow.authoring.serialized import ArgRef
from miniflow.scheduler.flights import RoundDeps
from miniflow.store import mapping as store_mapping
from miniflow.store import states
from miniflow.store import task_instances as store_tis
from miniflow.store.task_instances import TIState

log = logging.getLogger("miniflow.scheduler.mapping")


async def expand(
    deps: RoundDeps, session: AsyncSession, run_pks: Iterable[int] | None, now: datetime
) -> tuple[int, list[TIState]]:
    """Expand the mapped tasks of `run_pks` (every running run: None) that wait for it.

    Returns (mapped instances created, tasks ended instead: empty or failed expansions).
    """
    started = await store_mapping.start_instances(session)  # made with their run
    pending = await store_mapping.unexpanded(session, run_pks)
    if not pending:
        return started, []
    cached = await deps.dags.for_run_pks(session, {t.run_pk for t in pending})
    created = started
    ended: list[TIState] = []
    for task in pending:
        entry = cached.get(task.run_pk)
        definition = None if entry is None else entry.dag["tasks"].get(task.task_id)
        if definition is None or "expand" not in definition:
            continue  # the run's version is gone or odd: the run is decided elsewhere
        results = await store_tis.upstream_results(
            session, task.dag_id, task.run_id, upstream_refs(definition)
        )

        def resolve(ref: ArgRef, results: dict[str, Any] = results) -> Any:
            return results.get(ref["ref"]) if "ref" in ref else ref.get("value")

        try:
            items = expand_values(definition, resolve, deps.settings.max_map_length)
        except MapError as exc:
            log.warning("%s/%s: %s", task.dag_id, task.run_id, exc)
            if await store_mapping.end_task(session, task.id, states.FAILED, now, str(exc)):
                ended.append(_row(task, states.FAILED))
            continue
        if not items:
            if await store_mapping.end_task(
                session, task.id, states.SKIPPED, now, "expanded into no mapped instances"
            ):
                ended.append(_row(task, states.SKIPPED))
            continue
        await store_mapping.add_instances(session, task, items)
        await store_mapping.mark_expanded(session, task.id, len(items))
        created += len(items)
        log.info(
            "%s/%s: %s expanded into %d mapped instances",
            task.dag_id,
            task.run_id,
            task.task_id,
            len(items),
        )
    return created, ended


def _row(task: store_mapping.Unexpanded, state: str) -> TIState:
    return TIState(task.id, task.run_pk, task.task_id, state, 0, task.max_tries)
