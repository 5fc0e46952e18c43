"""What an Airflow callable sees when it runs in the worker: Airflow's context.

The context is miniflow's own (`get_current_context()`, built from the same names the
templates see) with `ti` able to `xcom_pull` / `xcom_push` where miniflow's task
instance can, and Airflow's rule for passing it: a callable receives the context
entries its signature names (`ds`, `ti`, `params`, ...) or all of them with `**kwargs`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from miniflow.airflow_compat import problems
from miniflow.authoring.context import get_current_context


class TaskInstance:
    """`ti` for Airflow code: miniflow's task instance, with Airflow's XCom methods."""

    def __init__(self, info: Any) -> None:
        self._info = info

    def __getattr__(self, name: str) -> Any:
        return getattr(self._info, name)

    def __repr__(self) -> str:
        return f"<TaskInstance {self._info!r}>"

    def xcom_pull(self, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._info, "xcom_pull", None)
        if method is None:
            raise problems.pending("xcom_pull")
        return method(*args, **kwargs)

    def xcom_push(self, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._info, "xcom_push", None)
        if method is None:
            raise problems.pending("xcom_push")
        return method(*args, **kwargs)


_extra: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "miniflow_airflow_extra_context", default=None
)


@contextlib.contextmanager
def extra_context(**entries: Any) -> Iterator[None]:
    """Context entries a task's wrapper adds (`templates_dict`) while it runs."""
    token = _extra.set({**(_extra.get() or {}), **entries})
    try:
        yield
    finally:
        _extra.reset(token)


def airflow_context(**extra: Any) -> dict[str, Any]:
    """The running task's context with Airflow's names (`extra` added over it)."""
    context = get_current_context()
    ti = TaskInstance(context["ti"])
    context.update(ti=ti, task_instance=ti, conf=None, templates_dict=None)
    context.update(_extra.get() or {})
    context.update(extra)
    return context


def with_context(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, given the context entries its signature asks for when it runs.

    A function that asks for none is returned as it is.
    """
    signature = inspect.signature(function)
    wants_all = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    named = [
        name
        for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name in CONTEXT_NAMES
    ]
    if not wants_all and not named:
        return function

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        return call_with_context(function, args, kwargs, airflow_context())

    # The task's arguments are the others: a call need not give `ds`, `ti`, ...
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for name, p in signature.parameters.items() if name not in named]
    )
    return call


def call_with_context(
    function: Callable[..., Any],
    args: tuple[Any, ...] | list[Any],
    kwargs: Mapping[str, Any],
    context: Mapping[str, Any],
) -> Any:
    """Call `function(*args, **kwargs)` plus the context entries it accepts (Airflow's
    rule: named parameters not given, or everything not given with `**kwargs`)."""
    signature = inspect.signature(function)
    given = signature.bind_partial(*args, **kwargs).arguments
    wants_all = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    extra: dict[str, Any] = {}
    for name, value in context.items():
        if name in given:
            continue
        param = signature.parameters.get(name)
        if param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            extra[name] = value
        elif param is None and wants_all:
            extra[name] = value
    return function(*args, **kwargs, **extra)


CONTEXT_NAMES = frozenset({
    "ds", "ds_nodash", "ts", "ts_nodash", "logical_date", "execution_date",
    "data_interval_start", "data_interval_end", "run_id", "dag_id", "task_id",
    "try_number", "params", "ti", "task_instance", "dag_run", "dag", "task", "macros",
    "var", "conn", "conf", "templates_dict",
    # Airflow 2's older names (`templates._airflow2_dates`)
    "next_execution_date", "next_ds", "next_ds_nodash", "prev_execution_date", "prev_ds",
    "prev_ds_nodash", "yesterday_ds", "yesterday_ds_nodash", "tomorrow_ds",
    "tomorrow_ds_nodash", "ts_nodash_with_tz", "task_instance_key_str",
})  # fmt: skip


def task_logger(name: str) -> logging.Logger:
    """`self.log` of an operator: INFO and up, on stdout (the task's log)."""
    logger = logging.getLogger(f"airflow.task.operators.{name}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)s - %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def render_value(value: Any, context: Mapping[str, Any], *, task_id: str, field: str) -> Any:
    """A templated field's value rendered: strings as Jinja2, containers item by item.

    The DAG's function macros and `user_defined_filters` take part, as they do in
    miniflow's own rendering (`templates.render_with_dag`); its JSON macros are in the
    context already."""
    from miniflow.airflow_compat.dags import loaded
    from miniflow.authoring.templates import with_filters

    dag = loaded(str(context.get("dag_id")))
    scope = dict(context)
    env = None
    if dag is not None:
        scope = {**dag.macro_functions, **scope}
        env = with_filters(dag.user_defined_filters) if dag.user_defined_filters else None
    return _render_tree(value, scope, env, task_id=task_id, field=field)


def _render_tree(value: Any, context: dict[str, Any], env: Any, *, task_id: str, field: str) -> Any:
    from miniflow.authoring.templates import render

    if isinstance(value, str):
        return render(value, context, task_id=task_id, field=field, env=env)
    if isinstance(value, list | tuple):
        items = [
            _render_tree(v, context, env, task_id=task_id, field=f"{field}[{i}]")
            for i, v in enumerate(value)
        ]
        return type(value)(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {
            k: _render_tree(v, context, env, task_id=task_id, field=f"{field}[{k!r}]")
            for k, v in value.items()
        }
    return value


def resolve_params(value: Any, context: Mapping[str, Any]) -> Any:
    """`value` with each `@dag` function parameter (a `DagParam`) replaced by the run's
    param value (its native type, which rendering the template would lose)."""
    from miniflow.airflow_compat.dags import DagParam

    if isinstance(value, DagParam):
        return context["params"][value.name]
    if isinstance(value, list | tuple):
        return type(value)(resolve_params(v, context) for v in value)
    if isinstance(value, dict):
        return {k: resolve_params(v, context) for k, v in value.items()}
    return value
