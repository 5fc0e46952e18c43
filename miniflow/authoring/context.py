"""`get_current_context()`: the running task's context, inside a `@task` function.

The worker binds the context (the variables templates see: `ds`, `logical_date`,
`params`, `run_id`, ... plus `ti`) around the call of the user's function, in a
context variable, so a function running in its own thread or as a coroutine sees
its own try's context and nothing leaks between tries of a warm worker process.
Light on purpose: DAG files import it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from miniflow.errors import MiniflowError


class NoTaskContext(MiniflowError):
    """`get_current_context()` was called outside a running `@task` function."""


class XComAccess(Protocol):
    """Where `ti.xcom_push` / `ti.xcom_pull` go (the worker's database, or values the
    scheduler read for a template)."""

    def push(self, key: str, value: Any) -> None: ...

    def pull(self, task_ids: Any, key: str, map_indexes: Any, default: Any) -> Any: ...


class _NoXCom:
    def push(self, key: str, value: Any) -> None:
        raise NoTaskContext("xcom_push works only while a task runs")

    def pull(self, task_ids: Any, key: str, map_indexes: Any, default: Any) -> Any:
        return default


@dataclass(frozen=True, slots=True)
class TaskInstanceInfo:
    """What a task can know of its own try (the context's `ti`), and its XCom."""

    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    map_index: int = -1  # >= 0: a mapped instance
    xcom: XComAccess = field(default_factory=_NoXCom, repr=False, compare=False)

    def xcom_push(self, key: str, value: Any) -> None:
        """Leave `value` (JSON, within MINIFLOW_MAX_RESULT_BYTES) under `key` for other
        tasks of the run; pushing the same key again replaces it."""
        self.xcom.push(key, value)

    def xcom_pull(
        self,
        task_ids: Any = None,
        key: str = "return_value",
        map_indexes: Any = None,
        default: Any = None,
    ) -> Any:
        """The value `task_ids` (a task id, or a list of them) left under `key` (by default
        its result); of a mapped task, the list of its instances' values (or one
        instance's, `map_indexes=N`); `default` if there is none."""
        return self.xcom.pull(task_ids, key, map_indexes, default)


_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "miniflow_task_context", default=None
)


def get_current_context() -> dict[str, Any]:
    """The running task's context: `ds`, `ds_nodash`, `ts`, `ts_nodash`, `logical_date`,
    `data_interval_start`, `data_interval_end`, `run_id`, `dag_id`, `task_id`,
    `try_number`, `run_type`, `params` (the DAG's params overlaid with the run's conf), `ti`
    (a `TaskInstanceInfo`; also as `task_instance`). A copy: changing it changes nothing.

    Raises `NoTaskContext` outside a running `@task` function (at DAG definition
    time, for instance: the context exists only when the task runs).
    """
    context = _current.get()
    if context is None:
        raise NoTaskContext(
            "get_current_context() works only while a @task function runs (not when the "
            "DAG file is imported)"
        )
    return dict(context)


@contextlib.contextmanager
def bound(context: dict[str, Any], xcom: XComAccess | None = None) -> Iterator[None]:
    """Make `context` (plus `ti`) the current context inside the block (the worker's)."""
    ti = TaskInstanceInfo(
        dag_id=context["dag_id"],
        run_id=context["run_id"],
        task_id=context["task_id"],
        try_number=context["try_number"],
        map_index=context.get("map_index", -1),
        **({"xcom": xcom} if xcom is not None else {}),
    )
    token = _current.set({**context, "ti": ti, "task_instance": ti})
    try:
        yield
    finally:
        _current.reset(token)
