"""TaskFlow (`@task`, `@task.branch`, `@task_group`, ...) and `TaskGroup`, mapped onto
miniflow's own decorators and groups.

A decorated function gets the Airflow context entries its signature asks for
(`ti`, `ds`, `**context`, ...) and its call returns an `XComArg` (a miniflow task
result with Airflow's methods). Variants miniflow does not have are refused by name.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable
from typing import Any

import miniflow
from miniflow.airflow_compat import arguments, problems, runtime
from miniflow.airflow_compat.dags import DagParam
from miniflow.airflow_compat.operators import AirflowMixin, XComArg, pick
from miniflow.authoring import taskgroup
from miniflow.authoring.taskflow import TaskRef
from miniflow.errors import SkipTask

# Variants with no miniflow equivalent: `@task.<name>` -> problems' construct name.
_REFUSED = {
    "virtualenv": "task.virtualenv",
    "external_python": "task.external_python",
    "docker": "task.docker",
    "kubernetes": "task.kubernetes",
    "pyspark": "task.virtualenv",
    "branch_virtualenv": "task.virtualenv",
    "branch_external_python": "task.external_python",
}


# Variants that are miniflow decorators of the same name, once miniflow has them.
_NATIVE = ("sensor", "setup", "teardown")


def _native(mode: str) -> None:
    if getattr(miniflow.task, mode, None) is None:
        raise problems.pending("task.sensor" if mode == "sensor" else mode)


class AirflowTaskFunction:
    """A TaskFlow function: calling it in a DAG adds a miniflow Python task."""

    def __init__(
        self,
        function: Callable[..., Any],
        options: dict[str, Any],
        mode: str | None,
    ) -> None:
        self.function = function
        self.options = options
        self.mode = mode
        functools.update_wrapper(self, function)
        self._inner = self._build({})

    def _build(
        self,
        items: dict[int | str, str],
        params: dict[int | str, str] | None = None,
        templated: set[int | str] | None = None,
    ) -> Any:
        options = dict(self.options)
        templates_dict = options.pop("templates_dict", None)
        exts = tuple(options.pop("templates_exts", None) or ())
        task_id = options.pop("task_id", None)
        do_xcom_push = options.pop("do_xcom_push", True)
        ignore = options.pop("ignore_downstream_trigger_rules", True)
        if self.mode == "bash" and not options.pop("append_env", False) and options.get("env"):
            problems.warn("env", "miniflow adds env to the worker's environment (append_env=True)")
        settings = arguments.task_settings(options)
        function = runtime.with_context(self.function)
        if not do_xcom_push and self.mode is None:
            function = _no_result(function)
        if self.mode == "bash":
            function = _bash(function)
        if items:
            function = _picking(function, items)
        if params:
            function = _with_params(function, params)
        if templated or templates_dict is not None:
            function = _rendering(function, templated or set(), templates_dict, exts)
        decorator = miniflow.task
        if self.mode in _NATIVE:
            native = getattr(decorator, self.mode)
            return native(task_id=task_id, **settings)(function)
        if self.mode == "branch":
            return decorator.branch(task_id=task_id, **settings)(function)
        if self.mode == "short_circuit":
            return decorator.short_circuit(
                task_id=task_id, ignore_downstream_trigger_rules=ignore, **settings
            )(function)
        return decorator(task_id=task_id, **settings)(function)

    def __call__(self, *args: Any, **kwargs: Any) -> XComArg:
        items: dict[int | str, str] = {}
        params: dict[int | str, str] = {}
        places: list[tuple[int | str, Any]] = [*enumerate(args), *kwargs.items()]
        for where, value in places:
            if isinstance(value, XComArg) and value.item is not None:
                items[where] = value.item
            if isinstance(value, DagParam):
                params[where] = value.name
        # Airflow renders a TaskFlow call's literal arguments as templates.
        templated = {
            where
            for where, value in places
            if not isinstance(value, TaskRef | DagParam) and _has_text(value)
        }
        if not items and not params and not templated and "templates_dict" not in self.options:
            return XComArg(self._inner(*args, **kwargs))
        # `f(result["k"])`: pass the whole result, and take item "k" out when f runs; a
        # `@dag` function's parameter is the run's param value when the task runs.
        args = tuple(XComArg(a.task) if isinstance(a, XComArg) else a for a in args)
        kwargs = {k: XComArg(v.task) if isinstance(v, XComArg) else v for k, v in kwargs.items()}
        return XComArg(self._build(items, params, templated)(*args, **kwargs))

    def override(self, **options: Any) -> AirflowTaskFunction:
        return AirflowTaskFunction(self.function, {**self.options, **options}, self.mode)

    def __getattr__(self, name: str) -> Any:
        if name in ("expand", "partial", "expand_kwargs"):
            method = getattr(self._inner, name, None)
            if method is None:
                raise problems.pending(name)
            return method
        raise AttributeError(name)


def _picking(function: Callable[..., Any], items: dict[int | str, str]) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        args = tuple(pick(a, items.get(i)) for i, a in enumerate(args))
        kwargs = {k: pick(v, items.get(k)) for k, v in kwargs.items()}
        return function(*args, **kwargs)

    return call


def _with_params(function: Callable[..., Any], params: dict[int | str, str]) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        values = runtime.airflow_context()["params"]
        args = tuple(values[params[i]] if i in params else a for i, a in enumerate(args))
        kwargs = {k: values[params[k]] if k in params else v for k, v in kwargs.items()}
        return function(*args, **kwargs)

    return call


def _has_text(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, list | tuple):
        return any(_has_text(v) for v in value)
    if isinstance(value, dict):
        return any(_has_text(v) for v in value.values())
    return False


def _rendering(
    function: Callable[..., Any],
    templated: set[int | str],
    templates_dict: dict[str, Any] | None,
    exts: tuple[str, ...],
) -> Callable[..., Any]:
    """The literal arguments at `templated` rendered when the task runs, and
    `templates_dict` rendered into the context (a value ending in one of `exts` is read
    from that file, next to the DAG file, first: Airflow's `templates_exts`)."""
    filename, _ = problems.location()
    folder = os.path.dirname(os.path.abspath(filename)) if filename else os.getcwd()

    def render(value: Any, context: dict[str, Any], task_id: str, field: str) -> Any:
        if isinstance(value, str) and exts and value.endswith(exts):
            with open(os.path.join(folder, value), encoding="utf-8") as fh:
                value = fh.read()
        return runtime.render_value(value, context, task_id=task_id, field=field)

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        context = runtime.airflow_context()
        task_id = str(context["task_id"])
        args = tuple(
            render(a, context, task_id, f"op_args[{i}]") if i in templated else a
            for i, a in enumerate(args)
        )
        kwargs = {
            k: render(v, context, task_id, k) if k in templated else v for k, v in kwargs.items()
        }
        if templates_dict is None:
            return function(*args, **kwargs)
        rendered = {
            k: render(v, context, task_id, f"templates_dict[{k!r}]")
            for k, v in templates_dict.items()
        }
        with runtime.extra_context(templates_dict=rendered):
            return function(*args, **kwargs)

    return call


def _no_result(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)

    return call


def _bash(function: Callable[..., Any]) -> Callable[..., Any]:
    """`@task.bash`: the function returns the command (a template), which runs in bash
    when the task runs; exit code 99 skips the task, as BashOperator's default."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> None:
        command = function(*args, **kwargs)
        if not isinstance(command, str) or not command.strip():
            raise ValueError(f"@task.bash must return a non-empty command string, got {command!r}")
        context = runtime.airflow_context()
        command = runtime.render_value(
            command, context, task_id=str(context["task_id"]), field="bash_command"
        )
        env = {k: v for k, v in os.environ.items() if k != "MINIFLOW_DATABASE_URL"}
        code = subprocess.run(["bash", "-c", command], env=env, check=False).returncode
        if code == 99:
            raise SkipTask(f"bash command exited with code {code}")
        if code != 0:
            raise RuntimeError(f"bash command exited with code {code}")

    return call


class TaskDecorator:
    """Airflow's `task`: `@task`, `@task(...)`, `@task.branch`, `@task.short_circuit`,
    `@task.bash`, `@task.python`."""

    def _decorate(self, function: Any, options: dict[str, Any], mode: str | None) -> Any:
        for name in ("python_callable",):
            if name in options:
                function = options.pop(name)
        if function is not None:
            return AirflowTaskFunction(function, options, mode)
        return lambda fn: AirflowTaskFunction(fn, options, mode)

    def __call__(self, python_callable: Any = None, **options: Any) -> Any:
        return self._decorate(python_callable, options, None)

    def python(self, python_callable: Any = None, **options: Any) -> Any:
        return self._decorate(python_callable, options, None)

    def branch(self, python_callable: Any = None, **options: Any) -> Any:
        return self._decorate(python_callable, options, "branch")

    def short_circuit(self, python_callable: Any = None, **options: Any) -> Any:
        return self._decorate(python_callable, options, "short_circuit")

    def bash(self, python_callable: Any = None, **options: Any) -> Any:
        return self._decorate(python_callable, options, "bash")

    def sensor(self, python_callable: Any = None, **options: Any) -> Any:
        _native("sensor")
        return self._decorate(python_callable, options, "sensor")

    def setup(self, python_callable: Any = None, **options: Any) -> Any:
        _native("setup")
        return self._decorate(python_callable, options, "setup")

    def teardown(self, python_callable: Any = None, **options: Any) -> Any:
        _native("teardown")
        return self._decorate(python_callable, options, "teardown")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in _REFUSED:
            raise problems.unsupported(_REFUSED[name])
        raise problems.unsupported(f"task.{name}", "not a TaskFlow variant miniflow has")


task = TaskDecorator()


class TaskGroup(AirflowMixin, taskgroup.TaskGroup):
    """Airflow's TaskGroup: UI arguments accepted and ignored."""

    def __init__(self, group_id: str | None = None, **kwargs: Any) -> None:
        for name in ("tooltip", "ui_color", "ui_fgcolor", "add_suffix_on_collision",
                     "parent_group", "dag", "group_display_name"):  # fmt: skip
            kwargs.pop(name, None)
        if group_id is None:
            group_id = kwargs.pop("group_id")
        default_args = kwargs.pop("default_args", None)
        prefix = kwargs.pop("prefix_group_id", True)
        settings = arguments.task_settings({**(default_args or {}), **kwargs})
        super().__init__(group_id, prefix_group_id=prefix, **settings)


def task_group(python_callable: Any = None, **kwargs: Any) -> Any:
    """Airflow's `@task_group`."""
    for name in ("tooltip", "ui_color", "ui_fgcolor", "add_suffix_on_collision"):
        kwargs.pop(name, None)
    default_args = kwargs.pop("default_args", None)
    group_id = kwargs.pop("group_id", None)
    prefix = kwargs.pop("prefix_group_id", True)
    settings = arguments.task_settings({**(default_args or {}), **kwargs})
    build = taskgroup.task_group(group_id=group_id, prefix_group_id=prefix, **settings)
    if python_callable is not None:
        return _GroupFunction(build(python_callable))
    return lambda fn: _GroupFunction(build(fn))


class _GroupFunction:
    """A `@task_group` function; mapping a whole group is refused by name."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        functools.update_wrapper(self, inner.function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("expand", "partial", "expand_kwargs"):
            raise problems.unsupported(
                "mapped task group",
                "mapping a whole @task_group is not supported: map the tasks inside it "
                "(`.expand` on each @task)",
            )
        return getattr(self._inner, name)


def setup(python_callable: Any = None, **kwargs: Any) -> Any:
    """Airflow's `@setup` (miniflow's `@task.setup`)."""
    return task.setup(python_callable, **kwargs)


def teardown(python_callable: Any = None, **kwargs: Any) -> Any:
    """Airflow's `@teardown` (miniflow's `@task.teardown`)."""
    return task.teardown(python_callable, **kwargs)
