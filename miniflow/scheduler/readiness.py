"""Trigger rules: what a waiting task becomes, given its upstream tasks' states.

Pure functions over states, so every rule is tested with a table and the
scheduler only feeds it rows. A decision is one of: wait (None), run
(`scheduled`), `skipped` or `upstream_failed` (both finished, and they
propagate downstream in the same pass because tasks are visited in
topological order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from miniflow.serialized import SerializedDag
from miniflow.store import states

_DONE = states.FINISHED


def decide(rule: str, upstream_states: Sequence[str]) -> str | None:
    """The new state of a `none` task, or None to keep waiting."""
    if rule == "always" or not upstream_states:
        return states.SCHEDULED
    n = len(upstream_states)
    success = sum(s == states.SUCCESS for s in upstream_states)
    skipped = sum(s == states.SKIPPED for s in upstream_states)
    failed = sum(s in states.FAILED_LIKE for s in upstream_states)
    done = sum(s in _DONE for s in upstream_states)
    all_done = done == n
    if rule == "all_success":
        if failed:
            return states.UPSTREAM_FAILED
        if skipped:
            return states.SKIPPED
        return states.SCHEDULED if success == n else None
    if rule == "all_failed":
        if success or skipped:
            return states.SKIPPED
        return states.SCHEDULED if all_done else None
    if rule == "all_done":
        return states.SCHEDULED if all_done else None
    if rule == "one_success":
        if success:
            return states.SCHEDULED
        if not all_done:
            return None
        return states.SKIPPED if skipped == n else states.UPSTREAM_FAILED
    if rule == "one_failed":
        if failed:
            return states.SCHEDULED
        return states.SKIPPED if all_done else None
    if rule == "none_failed":
        if failed:
            return states.UPSTREAM_FAILED
        return states.SCHEDULED if all_done else None
    raise ValueError(f"unknown trigger rule {rule!r}")


@lru_cache(maxsize=512)
def _topology(
    dag_key: str, edges: tuple[tuple[str, tuple[str, ...]], ...]
) -> tuple[tuple[str, ...], frozenset[str]]:
    order: list[str] = []
    seen: set[str] = set()
    upstream = dict(edges)

    def visit(task_id: str) -> None:
        if task_id in seen:
            return
        seen.add(task_id)
        for up in upstream.get(task_id, ()):
            visit(up)
        order.append(task_id)

    for task_id, _ in edges:
        visit(task_id)
    has_downstream = {up for _, ups in edges for up in ups}
    leaves = frozenset(t for t, _ in edges if t not in has_downstream)
    return tuple(order), leaves


def topology(dag: SerializedDag, dag_hash: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """(tasks in topological order, leaf tasks), cached per DAG version."""
    edges = tuple((tid, tuple(t["upstream"])) for tid, t in dag["tasks"].items())
    return _topology(f"{dag['dag_id']}:{dag_hash}", edges)


def evaluate_run(
    dag: SerializedDag, dag_hash: str, current: Mapping[str, str]
) -> tuple[dict[str, str], str | None]:
    """New states for waiting tasks, and the run's final state if every task is finished.

    `current` maps task_id → state; tasks missing from the DAG (deleted since
    the run started) are ignored, tasks missing from `current` are not created.
    """
    order, leaves = topology(dag, dag_hash)
    view = dict(current)
    changes: dict[str, str] = {}
    for task_id in order:
        if view.get(task_id) != states.NONE:
            continue
        task = dag["tasks"][task_id]
        # An upstream the run has no task instance for (added to the DAG since the run
        # was created) never runs in this run: it must not hold its downstream forever.
        decision = decide(task["trigger_rule"], [view[u] for u in task["upstream"] if u in view])
        if decision is not None:
            changes[task_id] = decision
            view[task_id] = decision
    present = [t for t in order if t in view]
    # Task instances of tasks removed from the DAG don't decide the run's state, but
    # one still scheduled, in flight or waiting for a retry keeps the run open.
    removed_busy = any(s != states.NONE and s not in _DONE for s in view.values())
    if not removed_busy and all(view[t] in _DONE for t in present):
        ok = all(view[t] in (states.SUCCESS, states.SKIPPED) for t in leaves if t in view)
        return changes, states.RUN_SUCCESS if ok else states.RUN_FAILED
    return changes, None
