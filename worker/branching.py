"""Which downstream tasks a branch or short-circuit task's result skips.

Pure functions of the run's serialized DAG version and the task's result, so
the rules are tested as a table; the runner records the skips in the same
transaction as the task's success (`task_instances.skip_waiting`). Like
Airflow, a branch skips only its direct downstream tasks that it did not
follow; trigger rules propagate the skips further (a `none_failed_min_one_success`
join runs after the followed branch). This module never touches the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from miniflow.authoring.serialized import SerializedTask


class BranchError(Exception):
    """The task's result does not name what it may follow; the message says why."""


def downstream_map(tasks: Mapping[str, SerializedTask]) -> dict[str, list[str]]:
    """task id → its direct downstream task ids, sorted."""
    out: dict[str, list[str]] = {}
    for task_id, task in tasks.items():
        for up in task["upstream"]:
            out.setdefault(up, []).append(task_id)
    return {t: sorted(down) for t, down in out.items()}


def to_skip(
    task: SerializedTask, task_id: str, value: Any, downstream: Mapping[str, Sequence[str]]
) -> list[str]:
    """The task ids `task`'s result `value` skips (sorted); `BranchError` if it is invalid."""
    mode = task.get("python_mode")
    direct = list(downstream.get(task_id, ()))
    if mode == "branch":
        return _branch(task_id, value, direct)
    if mode == "short_circuit":
        if value:
            return []
        if not task.get("ignore_downstream_trigger_rules", True):
            return sorted(direct)
        return sorted(_descendants(task_id, downstream))
    return []


def _branch(task_id: str, value: Any, direct: list[str]) -> list[str]:
    if value is None:
        chosen: list[Any] = []
    elif isinstance(value, str):
        chosen = [value]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        chosen = list(value)
    else:
        raise BranchError(
            f"branch task {task_id!r} must return a task id, a list of task ids or None, "
            f"got {value!r}"
        )
    follow: set[str] = set()
    for choice in chosen:
        # A task group's id follows the group's tasks directly downstream of the branch.
        found = [d for d in direct if d == choice or d.startswith(f"{choice}.")]
        if not found:
            valid = ", ".join(direct) if direct else "none: it has no downstream task"
            raise BranchError(
                f"branch task {task_id!r} returned {choice!r}, which is not directly "
                f"downstream of it; valid task ids: {valid}"
            )
        follow.update(found)
    return sorted(set(direct) - follow)


def _descendants(task_id: str, downstream: Mapping[str, Sequence[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(downstream.get(task_id, ()))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(downstream.get(current, ()))
    return seen
