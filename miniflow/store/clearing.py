"""Which task instances a clear resets: the one rule of `tasks clear` and the web's clear.

The cleared task (and, if asked, everything downstream of it), plus what its
result or role tied to it:

- **Setup / teardown** (Airflow's rule): clearing a task clears the setup tasks
  upstream of it, and clearing a setup clears its teardowns, so the work runs
  again between a fresh setup and teardown.
- **Branch / short-circuit** (`python_mode`; `LatestOnly` too): the tasks its
  earlier result skipped go back to `none` with it, so its new result decides
  them again. Those are the skipped tasks downstream of it, reached through
  skipped tasks only, that never had a try (a task that skipped itself keeps its
  skip). A task skipped by another branch on the same path is reset too and is
  decided by trigger rules again.

`selection` is pure; `clear_tasks` reads the run's rows and writes the clear.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.serialized import SerializedDag
from miniflow.store import states
from miniflow.store import task_instances as store_tis


def _children(dag: SerializedDag) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {t: [] for t in dag["tasks"]}
    for tid, task in dag["tasks"].items():
        for up in task["upstream"]:
            if up in children:
                children[up].append(tid)
    return children


def _reach(start: list[str], step: Mapping[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(step.get(current, ()))
    return seen


def downstream_of(dag: SerializedDag, task_id: str) -> list[str]:
    """task_id and everything downstream of it, in DAG order."""
    seen = _reach([task_id], _children(dag))
    return [t for t in dag["tasks"] if t in seen]


def selection(
    dag: SerializedDag,
    task_id: str,
    downstream: bool,
    found: Mapping[str, tuple[str, int]],
) -> list[str]:
    """The task ids a clear of `task_id` resets, in DAG order; `found`: the run's rows,
    task id → (state, try number)."""
    tasks = dag["tasks"]
    children = _children(dag)
    parents = {t: [u for u in task["upstream"] if u in tasks] for t, task in tasks.items()}
    chosen = set(downstream_of(dag, task_id) if downstream else [task_id])
    work = [t for t in chosen if not tasks[t].get("teardown")]
    chosen |= {t for t in _reach(work, parents) if tasks[t].get("setup")}
    setups = [t for t in chosen if tasks[t].get("setup")]
    chosen |= {t for t in _reach(setups, children) if tasks[t].get("teardown")}
    for decider in [t for t in chosen if tasks[t].get("python_mode")]:
        todo = list(children[decider])
        while todo:
            current = todo.pop()
            state, tries = found.get(current, (states.NONE, 0))
            if current in chosen or state != states.SKIPPED or tries:
                continue
            chosen.add(current)
            todo.extend(children[current])
    return [t for t in tasks if t in chosen]


async def clear_tasks(
    session: AsyncSession,
    dag: SerializedDag,
    dag_id: str,
    run_id: str,
    task_id: str,
    *,
    downstream: bool,
) -> list[str]:
    """Clear `task_id` of the run (with `selection`'s companions); returns the ids chosen."""
    rows = await store_tis.list_for_run(session, dag_id, run_id)
    # a mapped task's own row (its instances, map_index >= 0, go with it)
    found = {r.task_id: (r.state, r.try_number) for r in rows if r.map_index < 0}
    task_ids = selection(dag, task_id, downstream, found)
    retries = {t: dag["tasks"][t]["retries"] for t in task_ids}
    await store_tis.clear(session, dag_id, run_id, task_ids, retries)
    return task_ids
