"""`@task`: Python functions as tasks, with results passed between them.

Calling a decorated function inside a DAG does not run it: it creates a task
and returns a `TaskRef` to its future result. Passing a `TaskRef` to another
task function makes that task an upstream and serializes the argument as
`{"ref": task_id}`; other arguments must be JSON and are serialized as
`{"value": v}`, except lists and dicts with a `TaskRef` inside (`{"items": [...]}`,
`{"fields": {...}}`, each element an argument of its own). The worker later re-imports
the DAG file, finds the task and calls `PythonTask.function` with the upstream results
substituted.

Nothing here runs user functions: that is the worker's job.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from miniflow.authoring import dag as dag_mod
from miniflow.authoring.dag import check_id, definition_error
from miniflow.authoring.mapped import kwargs_expansion, nested_ref, product_expansion, refs_of
from miniflow.authoring.sensor import DEFAULT_POKE_INTERVAL, DEFAULT_TIMEOUT, sensor_settings
from miniflow.authoring.serialized import (
    ArgRef,
    Expansion,
    PythonMode,
    SensorMode,
    SensorSettings,
    SerializedTask,
    TaskKind,
    arg_refs,
)
from miniflow.authoring.tasks import (
    BaseTask,
    DependencyMixin,
    DependencyTarget,
    group_prefix,
    validate_settings,
)

P = ParamSpec("P")
R = TypeVar("R")


class TaskRef(DependencyMixin):
    """The future result of a Python task (or of a `Pod(..., push_result=True)`: its
    `.output`); usable as an argument and with `>>`."""

    def __init__(self, task: BaseTask) -> None:
        self.task = task

    @property
    def task_id(self) -> str:
        return self.task.task_id

    def __repr__(self) -> str:
        return f"<TaskRef {self.task.dag.dag_id}.{self.task_id}>"

    def dependency_task(self) -> BaseTask:
        return self.task

    def as_setup(self) -> TaskRef:
        """Mark the task as a setup task (see `BaseTask.as_setup`); returns this result."""
        self.task.as_setup()
        return self

    def as_teardown(
        self,
        *,
        setups: DependencyTarget | None = None,
        on_failure_fail_dagrun: bool | None = None,
    ) -> TaskRef:
        """Mark the task as a teardown of `setups` (see `BaseTask.as_teardown`)."""
        self.task.as_teardown(setups=setups, on_failure_fail_dagrun=on_failure_fail_dagrun)
        return self

    def __enter__(self) -> TaskRef:
        """`with drop(x).as_teardown(setups=x): ...` (see `BaseTask.__enter__`)."""
        self.task.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.task.__exit__(exc_type, *rest)


Role = Literal["setup", "teardown"]


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
        *,
        mode: PythonMode | None = None,
        ignore_downstream_trigger_rules: bool = True,
        sensor: SensorSettings | None = None,
    ) -> None:
        self.function = function
        self.op_args = op_args
        self.op_kwargs = op_kwargs
        self.mode = mode
        self.ignore_downstream_trigger_rules = ignore_downstream_trigger_rules
        self.sensor = sensor
        super().__init__(task_id, settings)

    def serialize(self) -> SerializedTask:
        data = self._serialize_common()
        data["python_callable"] = self.function.__qualname__
        data["op_args"] = json.loads(json.dumps(self.op_args))
        data["op_kwargs"] = json.loads(json.dumps(self.op_kwargs))
        if self.mode is not None:
            data["python_mode"] = self.mode
        if self.mode == "short_circuit":
            data["ignore_downstream_trigger_rules"] = self.ignore_downstream_trigger_rules
        if self.mode == "sensor" and self.sensor is not None:
            data["sensor"] = SensorSettings(**self.sensor)
        return data


def _arg(value: object, what: str, task_id: str) -> ArgRef:
    if isinstance(value, TaskRef):
        return {"ref": value.task_id}
    if isinstance(value, list | tuple) and nested_ref(value) is not None:
        return {"items": [_arg(v, f"{what}[{i}]", task_id) for i, v in enumerate(value)]}
    if isinstance(value, dict) and nested_ref(value) is not None:
        keys = [k for k in value if not isinstance(k, str)]
        if keys:
            raise definition_error(
                f"task {task_id!r}: {what} is a dict with a task result inside, whose keys "
                f"must be strings (as in JSON), got {keys[0]!r}"
            )
        return {"fields": {k: _arg(v, f"{what}[{k!r}]", task_id) for k, v in value.items()}}
    if isinstance(value, BaseTask):
        raise definition_error(
            f"task {task_id!r}: {what} is the task {value.task_id!r}; only results of @task "
            "functions (or a `Pod(..., push_result=True)`'s `.output`) can be passed as "
            "arguments (use `>>` for ordering)"
        )
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise definition_error(
            f"task {task_id!r}: {what} must be JSON-serializable or a task result: {exc}"
        ) from exc
    return {"value": value}


class TaskFunction(Generic[P, R]):
    """A function decorated with `@task`; call it inside a DAG to add a task."""

    def __init__(
        self,
        function: Callable[P, R],
        task_id: str | None,
        settings: dict[str, Any],
        *,
        mode: PythonMode | None = None,
        ignore_downstream_trigger_rules: bool = True,
        role: Role | None = None,
        on_failure_fail_dagrun: bool = False,
        sensor: SensorSettings | None = None,
    ) -> None:
        self.function = function
        self.role = role
        self.on_failure_fail_dagrun = on_failure_fail_dagrun
        self.sensor = sensor
        self.task_id = check_id(task_id if task_id is not None else function.__name__, "task id")
        self.settings = validate_settings(settings, f"task {self.task_id!r}")
        self._given = dict(settings)  # as written: `override` validates them again
        self.mode: PythonMode | None = mode
        if not isinstance(ignore_downstream_trigger_rules, bool):
            raise definition_error(
                f"task {self.task_id!r}: ignore_downstream_trigger_rules must be True or "
                f"False, got {ignore_downstream_trigger_rules!r}"
            )
        self.ignore_downstream_trigger_rules = ignore_downstream_trigger_rules
        self.signature = inspect.signature(function)
        functools.update_wrapper(self, function)

    def __repr__(self) -> str:
        return f"<@task {self.task_id}>"

    def _unique_id(self, dag: dag_mod.DAG) -> str:
        # Like Airflow: the second call of `f` in a DAG is `f__1`, then `f__2`... (in a
        # task group, among the group's ids). Returned without the group's prefix, which
        # the task adds itself.
        prefix = group_prefix(dag)
        if f"{prefix}{self.task_id}" not in dag.tasks:
            return self.task_id
        n = 1
        while f"{prefix}{self.task_id}__{n}" in dag.tasks:
            n += 1
        check_id(f"{prefix}{self.task_id}__{n}", "task id")
        return f"{self.task_id}__{n}"

    def __call__(self, *args: Any, **kwargs: Any) -> TaskRef:
        # Untyped on purpose: arguments may be `TaskRef`s standing for the real values.
        return self._create(args, kwargs, None)

    def override(self, *, task_id: str | None = None, **settings: Any) -> TaskFunction[P, R]:
        """The same function as another task: `f.override(task_id="load_eu", retries=5)()`
        (Airflow's name). Settings given here win over the decorator's."""
        return TaskFunction(
            self.function,
            task_id if task_id is not None else self.task_id,
            {**self._given, **settings},
            mode=self.mode,
            ignore_downstream_trigger_rules=self.ignore_downstream_trigger_rules,
            role=self.role,
            on_failure_fail_dagrun=self.on_failure_fail_dagrun,
            sensor=self.sensor,
        )

    def partial(self, **fixed: Any) -> PartialTaskFunction:
        """Arguments every mapped instance shares: `f.partial(y=1).expand(x=[1, 2])`."""
        return PartialTaskFunction(self, fixed)

    def expand(self, **mapped: Any) -> TaskRef:
        """A mapped task: one task instance per combination of the given lists (literal,
        or an upstream `@task`'s result, known at run time). Downstream tasks receive the
        list of the mapped instances' results."""
        return self.partial().expand(**mapped)

    def expand_kwargs(self, source: Any) -> TaskRef:
        """A mapped task: one task instance per dict of keyword arguments in `source`."""
        return self.partial().expand_kwargs(source)

    def _dag(self) -> dag_mod.DAG:
        dag = dag_mod.current_dag()
        if dag is None:
            raise definition_error(
                f"@task function {self.task_id!r} was called outside a `with DAG(...):` block; "
                "calling it creates a task, which must belong to a DAG"
            )
        return dag

    def _create(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        expansion: Expansion | None,
        mapped_names: tuple[str, ...] = (),
    ) -> TaskRef:
        dag = self._dag()
        local_id = self._unique_id(dag)
        task_id = f"{group_prefix(dag)}{local_id}"
        try:
            if expansion is None:
                self.signature.bind(*args, **kwargs)
            else:
                self.signature.bind_partial(*args, **kwargs, **dict.fromkeys(mapped_names))
        except TypeError as exc:
            raise definition_error(f"task {task_id!r}: bad arguments: {exc}") from None
        op_args = [_arg(v, f"argument {i}", task_id) for i, v in enumerate(args)]
        op_kwargs = {k: _arg(v, f"argument {k!r}", task_id) for k, v in kwargs.items()}
        task = PythonTask(
            local_id,
            self.function,
            op_args,
            op_kwargs,
            self.settings,
            mode=self.mode,
            ignore_downstream_trigger_rules=self.ignore_downstream_trigger_rules,
            sensor=self.sensor,
        )
        task.expansion = expansion
        for ref_id in arg_refs([*op_args, *op_kwargs.values()]):
            dag.get_task(ref_id) >> task
        if self.role == "setup":
            task.as_setup()
        elif self.role == "teardown":
            task.as_teardown(on_failure_fail_dagrun=self.on_failure_fail_dagrun)
        if expansion is not None:
            for ref_id in refs_of(expansion):
                dag.get_task(ref_id) >> task
        return TaskRef(task)


class PartialTaskFunction:
    """`f.partial(**fixed)`: a `@task` function waiting for `.expand` / `.expand_kwargs`."""

    def __init__(self, function: TaskFunction[..., Any], fixed: dict[str, Any]) -> None:
        if function.mode is not None:
            # Each instance's result would decide the skips of the same downstream tasks.
            raise definition_error(
                f"task {function.task_id!r}: a @task.{function.mode} task cannot be mapped"
            )
        self.function = function
        self.fixed = fixed

    def __repr__(self) -> str:
        return f"<@task {self.function.task_id}.partial>"

    def expand(self, **mapped: Any) -> TaskRef:
        fn = self.function
        doubled = sorted(set(mapped) & set(self.fixed))
        if doubled:
            raise definition_error(
                f"task {fn.task_id!r}: {', '.join(doubled)} given to both partial() and expand()"
            )
        expansion = product_expansion(mapped, fn.task_id, "python")
        return fn._create((), self.fixed, expansion, tuple(mapped))

    def expand_kwargs(self, source: Any) -> TaskRef:
        fn = self.function
        expansion = kwargs_expansion(source, fn.task_id, "python")
        names = {k for item in expansion["source"].get("value", []) for k in item}
        for i, item in enumerate(expansion["source"].get("value", [])):
            try:
                fn.signature.bind(**self.fixed, **item)
            except TypeError as exc:
                raise definition_error(
                    f"task {fn.task_id!r}: expand_kwargs item {i}: bad arguments: {exc}"
                ) from None
        return fn._create((), self.fixed, expansion, tuple(sorted(names)))


def _decorator(
    function: Callable[..., Any] | None,
    task_id: str | None,
    settings: dict[str, Any],
    mode: PythonMode | None,
    ignore_downstream_trigger_rules: bool = True,
    role: Role | None = None,
    on_failure_fail_dagrun: bool = False,
    sensor: SensorSettings | None = None,
) -> Any:
    def decorate(fn: Callable[..., Any]) -> TaskFunction[..., Any]:
        if not callable(fn):
            variant = mode or role
            name = "@task" if variant is None else f"@task.{variant}"
            raise definition_error(f"{name} must decorate a function, got {fn!r}")
        return TaskFunction(
            fn,
            task_id,
            settings,
            mode=mode,
            ignore_downstream_trigger_rules=ignore_downstream_trigger_rules,
            role=role,
            on_failure_fail_dagrun=on_failure_fail_dagrun,
            sensor=sensor,
        )

    if function is not None:
        return decorate(function)
    return decorate


class TaskDecorator:
    """`@task`: make a Python function a task; `@task(task_id=..., retries=3, ...)`.

    The task id defaults to the function name. Any task setting may be given;
    it wins over the DAG's defaults. The function's return value must be JSON.
    The variants `@task.branch` and `@task.short_circuit` decide, from the
    function's result, which downstream tasks are skipped.
    """

    @overload
    def __call__(self, function: Callable[P, R], /) -> TaskFunction[P, R]: ...

    @overload
    def __call__(
        self, /, *, task_id: str | None = None, **settings: Any
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...

    def __call__(
        self,
        function: Callable[..., Any] | None = None,
        /,
        *,
        task_id: str | None = None,
        **settings: Any,
    ) -> Any:
        return _decorator(function, task_id, settings, None)

    @overload
    def branch(self, function: Callable[P, R], /) -> TaskFunction[P, R]: ...

    @overload
    def branch(
        self, /, *, task_id: str | None = None, **settings: Any
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...

    def branch(
        self,
        function: Callable[..., Any] | None = None,
        /,
        *,
        task_id: str | None = None,
        **settings: Any,
    ) -> Any:
        """A task whose result is the id (or list of ids) of the direct downstream
        tasks to follow; the other direct downstream tasks are skipped, and the skips
        propagate by trigger rule (join the branches back with
        `trigger_rule="none_failed_min_one_success"`). A task group's id follows the
        group's tasks directly downstream; None follows nothing. Any other id fails
        the task, naming the valid ones (Airflow's `@task.branch`)."""
        return _decorator(function, task_id, settings, "branch")

    @overload
    def short_circuit(self, function: Callable[P, R], /) -> TaskFunction[P, R]: ...

    @overload
    def short_circuit(
        self,
        /,
        *,
        task_id: str | None = None,
        ignore_downstream_trigger_rules: bool = True,
        **settings: Any,
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...

    def short_circuit(
        self,
        function: Callable[..., Any] | None = None,
        /,
        *,
        task_id: str | None = None,
        ignore_downstream_trigger_rules: bool = True,
        **settings: Any,
    ) -> Any:
        """A task whose falsy result skips every task downstream of it, whatever their
        trigger rules; with `ignore_downstream_trigger_rules=False` only its direct
        downstream tasks are skipped and trigger rules decide the rest. A truthy
        result skips nothing (Airflow's `@task.short_circuit`)."""
        return _decorator(
            function, task_id, settings, "short_circuit", ignore_downstream_trigger_rules
        )

    @overload
    def setup(self, function: Callable[P, R], /) -> TaskFunction[P, R]: ...

    @overload
    def setup(
        self, /, *, task_id: str | None = None, **settings: Any
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...

    def setup(
        self,
        function: Callable[..., Any] | None = None,
        /,
        *,
        task_id: str | None = None,
        **settings: Any,
    ) -> Any:
        """A `@task` that is a setup task (Airflow's `@setup`): see `BaseTask.as_setup`."""
        return _decorator(function, task_id, settings, None, role="setup")

    @overload
    def teardown(self, function: Callable[P, R], /) -> TaskFunction[P, R]: ...

    @overload
    def teardown(
        self,
        /,
        *,
        task_id: str | None = None,
        on_failure_fail_dagrun: bool = False,
        **settings: Any,
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...

    def teardown(
        self,
        function: Callable[..., Any] | None = None,
        /,
        *,
        task_id: str | None = None,
        on_failure_fail_dagrun: bool = False,
        **settings: Any,
    ) -> Any:
        """A `@task` that is a teardown task (Airflow's `@teardown`): it runs once its
        upstream tasks are done, failed or not, if a setup task upstream of it succeeded
        (or it has none); see `BaseTask.as_teardown`. Its failure fails the run only with
        `on_failure_fail_dagrun=True`."""
        if not isinstance(on_failure_fail_dagrun, bool):
            raise definition_error(
                f"@task.teardown: on_failure_fail_dagrun must be True or False, "
                f"got {on_failure_fail_dagrun!r}"
            )
        return _decorator(
            function, task_id, settings, None, role="teardown",
            on_failure_fail_dagrun=on_failure_fail_dagrun,
        )  # fmt: skip

    @overload
    def sensor(self, function: Callable[P, R], /) -> TaskFunction[P, R]: ...

    @overload
    def sensor(
        self,
        /,
        *,
        task_id: str | None = None,
        poke_interval: float | timedelta = DEFAULT_POKE_INTERVAL,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        mode: SensorMode = "poke",
        soft_fail: bool = False,
        **settings: Any,
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...

    def sensor(
        self,
        function: Callable[..., Any] | None = None,
        /,
        *,
        task_id: str | None = None,
        poke_interval: float | timedelta = DEFAULT_POKE_INTERVAL,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        mode: SensorMode = "poke",
        soft_fail: bool = False,
        **settings: Any,
    ) -> Any:
        """A task that pokes until its function returns something truthy (Airflow's
        `@task.sensor`): falsy means "not yet", truthy means done and is the task's
        result (`SensorResult(done, value)` gives another result). Pokes are
        `poke_interval` seconds apart; `timeout` seconds after the first poke a
        "not yet" fails the task (no retry), or skips it with `soft_fail=True`.

        `mode="poke"` loops inside one try, holding its slot; `mode="reschedule"`
        runs one try per poke and holds nothing in between: the task waits as
        `up_for_reschedule` and the scheduler launches the next poke when it is due
        (see `miniflow.authoring.sensor`). `timeout` here is the sensor's; the
        per-try limit (a DAG's default `timeout`) still bounds each try."""
        name = task_id or getattr(function, "__name__", None)
        owner = f"@task.sensor {name!r}" if name else "@task.sensor"
        checked = sensor_settings(
            owner, poke_interval=poke_interval, timeout=timeout, mode=mode, soft_fail=soft_fail
        )
        return _decorator(function, task_id, settings, "sensor", sensor=checked)


task = TaskDecorator()
