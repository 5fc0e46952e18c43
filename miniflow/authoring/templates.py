"""Rendering of task templates (Bash command, Pod cmds/args, env values).

Templates are Jinja2 with `StrictUndefined`: a misspelt variable is an error
naming the task, the field and the variable, never a silently empty string in
a shell command. Compiled templates are cached by their source because the
scheduler renders thousands of fields per second, and strings without any
Jinja2 markup skip Jinja2 entirely.

jinja2 is imported lazily, on the first template that needs it: `import
miniflow` and the worker's start-up must not pay for it.
"""

from __future__ import annotations

import functools
import json
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from miniflow.authoring import lookups
from miniflow.authoring.serialized import SerializedTask
from miniflow.authoring.xcom import ReadOnlyXCom
from miniflow.errors import TemplateError

if TYPE_CHECKING:
    import jinja2

    from miniflow.authoring.dag import DAG

_MARKUP = ("{{", "{%", "{#")


def build_context(
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    try_number: int,
    logical_date: datetime,
    data_interval_start: datetime,
    data_interval_end: datetime,
    params: dict[str, Any],
    run_type: str = "manual",
    map_index: int = -1,
    conf: dict[str, Any] | None = None,
    user_macros: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The variables available to templates (and to `get_current_context()`; `map_index`:
    -1 unless a mapped instance).

    `run_type` is "scheduled", "manual" or "test" (`miniflow dags test`); `user_macros`
    are the DAG's `user_defined_macros` (JSON values; the context's own names win).

    `ds`, `ds_nodash`, `ts` and `ts_nodash` are formatted in the timezone of
    `logical_date` as given (the scheduler passes UTC). The names Airflow's templates
    use are here too, so a moved DAG's templates render unchanged: `dag_run` (`conf`,
    `run_id`, `logical_date`), `dag` and `task` (their ids), `macros` (`ds_add`,
    `ds_format`, `datetime`, `timedelta`, ...), `var.value.<key>` / `var.json.<key>`
    and `conn.<conn_id>` (looked up only when a template uses them).
    """
    return {
        **(user_macros or {}),
        "ds": logical_date.strftime("%Y-%m-%d"),
        "ds_nodash": logical_date.strftime("%Y%m%d"),
        "ts": logical_date.isoformat(),
        "ts_nodash": logical_date.strftime("%Y%m%dT%H%M%S"),
        "logical_date": logical_date,
        "data_interval_start": data_interval_start,
        "data_interval_end": data_interval_end,
        "run_id": run_id,
        "dag_id": dag_id,
        "task_id": task_id,
        "try_number": try_number,
        "map_index": map_index,
        "params": params,
        "run_type": run_type,
        "dag_run": SimpleNamespace(
            dag_id=dag_id,
            run_id=run_id,
            conf=dict(conf or {}),
            logical_date=logical_date,
            data_interval_start=data_interval_start,
            data_interval_end=data_interval_end,
        ),
        "dag": SimpleNamespace(dag_id=dag_id),
        "task": SimpleNamespace(task_id=task_id, dag_id=dag_id),
        "macros": MACROS,
        "var": lookups.VariableAccessor(),
        "conn": lookups.ConnectionAccessor(),
        **_airflow2_dates(dag_id, task_id, logical_date, data_interval_start, data_interval_end),
    }


def _airflow2_dates(
    dag_id: str, task_id: str, logical: datetime, start: datetime, end: datetime
) -> dict[str, Any]:
    """Airflow 2's older template names (removed in Airflow 3), still common in DAG files:
    `execution_date`, `next_ds` (the interval's end), `prev_ds` (one interval earlier),
    `yesterday_ds`, `tomorrow_ds`, `task_instance_key_str`, ..."""
    period = end - start
    previous = logical - period if period else None
    names: dict[str, Any] = {
        "execution_date": logical,
        "next_execution_date": end,
        "next_ds": end.strftime("%Y-%m-%d"),
        "next_ds_nodash": end.strftime("%Y%m%d"),
        "prev_execution_date": previous,
        "prev_ds": previous.strftime("%Y-%m-%d") if previous else None,
        "prev_ds_nodash": previous.strftime("%Y%m%d") if previous else None,
        "yesterday_ds": (logical - timedelta(days=1)).strftime("%Y-%m-%d"),
        "yesterday_ds_nodash": (logical - timedelta(days=1)).strftime("%Y%m%d"),
        "tomorrow_ds": (logical + timedelta(days=1)).strftime("%Y-%m-%d"),
        "tomorrow_ds_nodash": (logical + timedelta(days=1)).strftime("%Y%m%d"),
        "ts_nodash_with_tz": logical.strftime("%Y%m%dT%H%M%S%z"),
        "task_instance_key_str": f"{dag_id}__{task_id}__{logical.strftime('%Y%m%d')}",
    }
    return names


def ds_add(ds: str, days: int) -> str:
    """`macros.ds_add('2024-01-01', 5)` -> '2024-01-06' (days may be negative)."""
    return (datetime.strptime(ds, "%Y-%m-%d") + timedelta(days=days)).strftime("%Y-%m-%d")


def ds_format(ds: str, input_format: str, output_format: str) -> str:
    """`macros.ds_format('2024-01-05', '%Y-%m-%d', '%m-%d-%y')` -> '01-05-24'."""
    return datetime.strptime(str(ds), input_format).strftime(output_format)


MACROS = SimpleNamespace(
    ds_add=ds_add,
    ds_format=ds_format,
    datetime=datetime,
    timedelta=timedelta,
    time=time,
    uuid=uuid,
    random=random.random,
    json=json,
)
"""`macros` in templates: Airflow's default macros that need no Airflow."""


@functools.cache
def _environment() -> jinja2.Environment:
    import jinja2
    from jinja2.utils import missing

    class _Undefined(jinja2.StrictUndefined):
        """StrictUndefined whose error remembers the name and object looked up."""

        __slots__ = ()

        def __init__(
            self,
            hint: str | None = None,
            obj: Any = missing,
            name: str | None = None,
            exc: type[jinja2.TemplateRuntimeError] = jinja2.UndefinedError,
        ) -> None:
            def make_error(message: str | None = None) -> jinja2.TemplateRuntimeError:
                error = exc(message)
                error.miniflow_lookup = (name, obj, obj is not missing)  # type: ignore[attr-defined]
                return error

            super().__init__(hint, obj, name, make_error)  # type: ignore[arg-type]

    return jinja2.Environment(undefined=_Undefined, keep_trailing_newline=True, autoescape=False)


@functools.lru_cache(maxsize=4096)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template for `source` (cached); raises jinja2's syntax error."""
    return _environment().from_string(source)


def _variable_name(exc: Exception, context: dict[str, Any]) -> str:
    lookup = getattr(exc, "miniflow_lookup", None)
    if lookup is None:
        return str(exc)
    name, obj, has_obj = lookup
    if not has_obj:
        return str(name)
    for key, value in context.items():
        if value is obj:
            return f"{key}.{name}"
    return f"{name} (attribute of a {type(obj).__name__})"


def with_filters(filters: Mapping[str, Callable[..., Any]]) -> jinja2.Environment:
    """An environment like the shared one plus a DAG's `user_defined_filters` (its
    templates compile uncached: only a process that imported the DAG file renders them)."""
    env = _environment().overlay()
    env.filters.update(filters)
    return env


def render(
    template: str,
    context: dict[str, Any],
    *,
    task_id: str,
    field: str,
    env: jinja2.Environment | None = None,
) -> str:
    """Render one template; `TemplateError` naming task, field and variable on failure.

    `env`: an environment with a DAG's filters (`with_filters`); None: the shared one."""
    if not is_markup(template):
        return template
    import jinja2

    where = f"task {task_id!r}: {field}"
    try:
        compiled = compile_template(template) if env is None else env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"{where} has a template syntax error at line {exc.lineno}: {exc.message}"
        ) from exc
    try:
        return compiled.render(context)
    except jinja2.UndefinedError as exc:
        name = _variable_name(exc, context)
        raise TemplateError(f"{where} uses undefined variable {name!r}") from None
    except Exception as exc:
        raise TemplateError(f"{where} could not be rendered: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class RenderedFields:
    """The templated fields of one task, rendered for one attempt; `pushes`: what its
    templates pushed (`{{ ti.xcom_push(key, value) }}`, a Bash task's only), key → value."""

    bash_command: str | None
    cmds: list[str] | None
    args: list[str] | None
    env: dict[str, str]
    pushes: dict[str, Any] = field(default_factory=dict)


def is_markup(value: str) -> bool:
    """Whether `value` holds Jinja markup (else it renders as itself)."""
    return any(marker in value for marker in _MARKUP)


def plain_fields(task: SerializedTask) -> RenderedFields | None:
    """A task's fields as they are when none holds markup, else None. Most tasks have no
    template, and building a try's context (dates, params, macros) costs more than the
    rest of its spec."""
    command = task.get("command")
    cmds, args, env = task.get("cmds"), task.get("args"), task["env"]
    texts = [*(cmds or ()), *(args or ()), *env.values()]
    if command is not None:
        texts.append(command)
    if any(is_markup(text) for text in texts):
        return None
    return RenderedFields(
        command, None if cmds is None else list(cmds), None if args is None else list(args), dict(env)
    )


def render_task_fields(
    task: SerializedTask, context: dict[str, Any], *, env: jinja2.Environment | None = None
) -> RenderedFields:
    """Render a task's Bash command, Pod cmds/args and env values (`env`: see `render`)."""
    task_id = task["task_id"]

    def one(value: str, field: str) -> str:
        return render(value, context, task_id=task_id, field=field, env=env)

    def each(values: list[str] | None, field: str) -> list[str] | None:
        if values is None:
            return None
        return [one(v, f"{field}[{i}]") for i, v in enumerate(values)]

    command = task.get("command")
    bash_command = None if command is None else one(command, "command")
    cmds, args = each(task.get("cmds"), "cmds"), each(task.get("args"), "args")
    values = {key: one(value, f"env {key}") for key, value in task["env"].items()}
    xcom = getattr(context.get("ti"), "xcom", None)
    pushes = dict(xcom.pushed) if isinstance(xcom, ReadOnlyXCom) else {}
    return RenderedFields(bash_command, cmds, args, values, pushes)


def needs_dag_file(dag: Mapping[str, Any]) -> bool:
    """Whether the serialized DAG's templates use its function macros or filters, which
    only a process that imports its file can render."""
    return bool(dag.get("template_functions"))


def render_with_dag(dag: DAG, task: SerializedTask, context: dict[str, Any]) -> RenderedFields:
    """Render `task`'s fields with the functions of `dag` (a `DAG` imported from its file):
    its function macros as top-level names (the context's own names win, as for JSON
    macros) and its `user_defined_filters`."""
    given = {**dag.macro_functions, **context}
    filters = dag.user_defined_filters
    return render_task_fields(task, given, env=with_filters(filters) if filters else None)
