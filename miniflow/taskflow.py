"""`@task`: Python functions as tasks, with results passed between them.

Calling a decorated function inside a DAG does not run it: it creates a task
and returns a `TaskRef` to its future result. Passing a `TaskRef` to another
task function makes that task an upstream and serializes the argument as
`{"ref": task_id}`; other arguments must be JSON and are serialized as
`{"value": v}`. The worker later re-imports the DAG file, finds the task and
calls `PythonTask.function` with the upstream results substituted.

Nothing here runs user functions: that is the worker's job.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from miniflow import dag as dag_mod
from miniflow.dag import check_id, definition_error
from miniflow.serialized import ArgRef, SerializedTask, TaskKind
from miniflow.tasks import BaseTask, DependencyMixin, validate_settings

P = ParamSpec("P")
R = TypeVar("R")


class TaskRef(DependencyMixin):
    """The future result of a Python task; usable as an argument and with `>>`."""

    def __init__(self, task: PythonTask) -> None:
        self.task = task

    @property
    def task_id(self) -> str:
        return self.task.task_id

    def __repr__(self) -> str:
        return f"<TaskRef {self.task.dag.dag_id}.{self.task_id}>"

    def dependency_task(self) -> BaseTask:
        return self.task


class PythonTask(BaseTask):
    """A call of a `@task` function; `function` is the original callable."""

    kind: TaskKind = "python"

    def __init__(
        self,
        task_id: str,
        function: Callable[..., Any],
        op_args: list[ArgRef],
        op_kwargs: dict[str, ArgRef],
        settings: dict[str, Any],
    ) -> None:
        self.function = function
        self.op_args = op_args
        self.op_kwargs = op_kwargs
        super().__init__(task_id, settings)

    def serialize(self) -> SerializedTask:
        data = self._serialize_common()
        data["python_callable"] = self.function.__qualname__
        data["op_args"] = json.loads(json.dumps(self.op_args))
        data["op_kwargs"] = json.loads(json.dumps(self.op_kwargs))
        return data


def _reject_nested_ref(value: object) -> Any:
    if isinstance(value, TaskRef):
        raise TypeError(
            f"{value!r} is nested inside a list or dict; pass each task result as its own argument"
        )
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _arg(value: object, what: str, task_id: str) -> ArgRef:
    if isinstance(value, TaskRef):
        return {"ref": value.task_id}
    if isinstance(value, BaseTask):
        raise definition_error(
            f"task {task_id!r}: {what} is the task {value.task_id!r}; only results of @task "
            "functions can be passed as arguments (use `>>` for ordering)"
        )
    try:
        json.dumps(value, allow_nan=False, default=_reject_nested_ref)
    except (TypeError, ValueError) as exc:
        raise definition_error(
            f"task {task_id!r}: {what} must be JSON-serializable or a task result: {exc}"
        ) from exc
    return {"value": value}


class TaskFunction(Generic[P, R]):
    """A function decorated with `@task`; call it inside a DAG to add a task."""

    def __init__(
        self, function: Callable[P, R], task_id: str | None, settings: dict[str, Any]
    ) -> None:
        self.function = function
        self.task_id = check_id(task_id if task_id is not None else function.__name__, "task id")
        self.settings = validate_settings(settings, f"task {self.task_id!r}")
        self.signature = inspect.signature(function)
        functools.update_wrapper(self, function)

    def __repr__(self) -> str:
        return f"<@task {self.task_id}>"

    def _unique_id(self, dag: dag_mod.DAG) -> str:
        # Like Airflow: the second call of `f` in a DAG is `f__1`, then `f__2`...
        if self.task_id not in dag.tasks:
            return self.task_id
        n = 1
        while f"{self.task_id}__{n}" in dag.tasks:
            n += 1
        return check_id(f"{self.task_id}__{n}", "task id")

    def __call__(self, *args: Any, **kwargs: Any) -> TaskRef:
        # Untyped on purpose: arguments may be `TaskRef`s standing for the real values.
        dag = dag_mod.current_dag()
        if dag is None:
            raise definition_error(
                f"@task function {self.task_id!r} was called outside a `with DAG(...):` block; "
                "calling it creates a task, which must belong to a DAG"
            )
        task_id = self._unique_id(dag)
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise definition_error(f"task {task_id!r}: bad arguments: {exc}") from None
        op_args = [_arg(v, f"argument {i}", task_id) for i, v in enumerate(args)]
        op_kwargs = {k: _arg(v, f"argument {k!r}", task_id) for k, v in kwargs.items()}
        task = PythonTask(task_id, self.function, op_args, op_kwargs, self.settings)
        refs = [v for v in (*args, *kwargs.values()) if isinstance(v, TaskRef)]
        for ref in refs:
            ref >> task
        return TaskRef(task)


@overload
def task(function: Callable[P, R], /) -> TaskFunction[P, R]: ...


@overload
def task(
    *, task_id: str | None = None, **settings: Any
) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...


def task(
    function: Callable[P, R] | None = None, /, *, task_id: str | None = None, **settings: Any
) -> TaskFunction[P, R] | Callable[[Callable[P, R]], TaskFunction[P, R]]:
    """Make a Python function a task: `@task` or `@task(task_id=..., retries=3, ...)`.

    The task id defaults to the function name. Any task setting may be given;
    it wins over the DAG's defaults. The function's return value must be JSON.
    """

    def decorate(fn: Callable[P, R]) -> TaskFunction[P, R]:
        if not callable(fn):
            raise definition_error(f"@task must decorate a function, got {fn!r}")
        return TaskFunction(fn, task_id, settings)

    if function is not None:
        return decorate(function)
    return decorate
