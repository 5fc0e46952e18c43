"""Airflow's `DAG(...)` and `@dag`, mapped onto miniflow's `DAG`."""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from miniflow.airflow_compat import arguments, problems
from miniflow.authoring import dag as dag_mod
from miniflow.authoring.params import Param

# DAG keyword arguments accepted and ignored: UI, documentation, bookkeeping.
_IGNORED = frozenset({
    "doc_md", "owner_links", "access_control", "is_paused_upon_creation", "auto_register",
    "default_view", "orientation", "dag_display_name", "jinja_environment_kwargs",
    "template_undefined", "template_searchpath", "fileloc", "render_template_as_native_obj",
    "disable_bundle_versioning", "deadline",
})  # fmt: skip
_WARNED: dict[str, str] = {
    "dagrun_timeout": "runs have no overall timeout here: give tasks an execution_timeout",
    "fail_stop": "a failed task does not stop the other running tasks",
    "max_consecutive_failed_dag_runs": "the DAG is not paused after failed runs",
}


def _schedule(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        if value == "@continuous":
            raise problems.unsupported("@continuous schedule", "use a cron expression")
        return value
    if isinstance(value, timedelta):
        return _interval_cron(value)
    name = type(value).__name__
    if isinstance(value, list | tuple) or "Dataset" in name or "Asset" in name:
        raise problems.unsupported("Asset" if "Asset" in name else "Dataset")
    raise problems.unsupported("timetable" if "Timetable" in name else f"schedule={name}")


def _interval_cron(interval: timedelta) -> str:
    """A timedelta schedule as the cron expression with the same period, when there is
    one (a divisor of an hour or a day, a day, a week)."""
    seconds = int(interval.total_seconds())
    minutes, hours = seconds // 60, seconds // 3600
    cron = None
    if seconds <= 0 or seconds % 60:
        cron = None
    elif seconds == 7 * 86400:
        cron = "@weekly"
    elif seconds == 86400:
        cron = "@daily"
    elif seconds == 3600:
        cron = "@hourly"
    elif seconds < 3600 and 3600 % seconds == 0:
        cron = f"*/{minutes} * * * *"
    elif seconds < 86400 and seconds % 3600 == 0 and 24 % hours == 0:
        cron = f"0 */{hours} * * *"
    if cron is None:
        raise problems.unsupported("timedelta schedule")
    problems.warn(
        "timedelta schedule",
        f"schedule={interval!r} runs as {cron!r}: intervals start on the clock "
        "(midnight, the hour), not at start_date's time of day",
    )
    return cron


def _timezone_name(start: Any) -> str | None:
    tz = getattr(start, "tzinfo", None)
    name = getattr(tz, "key", None) or getattr(tz, "name", None)
    return name if (isinstance(name, str) and "/" in name) or name == "UTC" else None


# The DAGs this process defined, by id: the worker-side rendering of the layer's Python
# tasks (`runtime.render_value`) finds its DAG's function macros and filters here.
_LOADED: weakref.WeakValueDictionary[str, DAG] = weakref.WeakValueDictionary()


def loaded(dag_id: str) -> DAG | None:
    """The DAG `dag_id` as this process last defined it (None: not defined here)."""
    return _LOADED.get(dag_id)


class DAG(dag_mod.DAG):
    """Airflow's DAG: its keyword arguments mapped onto miniflow's (see the migration
    guide's table); refuses what would run differently."""

    def __init__(self, dag_id: str | None = None, **kwargs: Any) -> None:
        if dag_id is None:
            dag_id = kwargs.pop("dag_id", None)
        given = dict(kwargs)
        if "timetable" in given:
            raise problems.unsupported("timetable")
        native = inspect.signature(dag_mod.DAG.__init__).parameters
        for callback in ("on_success_callback", "on_failure_callback"):
            if callback not in native and given.pop(callback, None) is not None:
                raise problems.pending("callbacks")
        if given.pop("sla_miss_callback", None) is not None:
            raise problems.unsupported("sla_miss_callback")
        schedule = _schedule(given.pop("schedule", given.pop("schedule_interval", None)))
        default_args = dict(given.pop("default_args", None) or {})
        start_date = given.pop("start_date", None) or default_args.pop("start_date", None)
        end_date = given.pop("end_date", None) or default_args.pop("end_date", None)
        if "concurrency" in given:
            given["max_active_tasks"] = given.pop("concurrency")
        for name in list(given):
            if name in _IGNORED:
                given.pop(name)
            elif name in _WARNED:
                if given.pop(name) is not None:
                    problems.warn(name, _WARNED[name])
        if "catchup" not in given and schedule not in (None, "@once") and start_date:
            problems.warn(
                "catchup",
                "not given: Airflow 2 catches up by default, miniflow does not "
                "(Airflow 3 does not either); say catchup=True to keep Airflow 2's runs",
            )
        if "timezone" not in given and start_date is not None:
            tz = _timezone_name(start_date)
            if tz is not None:
                given["timezone"] = tz
        if isinstance(given.get("params"), dict):
            given["params"] = dict(given["params"])
        super().__init__(
            dag_id,  # miniflow's own check names a missing id
            schedule=schedule,
            start_date=start_date,
            end_date=end_date,
            default_args=arguments.task_settings(default_args),
            **given,
        )
        _LOADED[self.dag_id] = self

    @property
    def task_dict(self) -> dict[str, Any]:
        return self.tasks

    @property
    def task_ids(self) -> list[str]:
        return list(self.tasks)


def dag(dag_id_or_function: Any = None, /, **dag_kwargs: Any) -> Any:
    """`@dag` / `@dag(schedule=..., ...)`: calling the function builds the DAG (the
    function's body runs inside `with DAG(...)`) and returns it."""

    def decorate(function: Callable[..., Any]) -> Callable[..., DAG]:
        @functools.wraps(function)
        def build(*args: Any, **kwargs: Any) -> DAG:
            dag_id = dag_kwargs.get("dag_id") or function.__name__
            options = {k: v for k, v in dag_kwargs.items() if k != "dag_id"}
            if function.__doc__ and "description" not in options:
                options["description"] = function.__doc__.strip().splitlines()[0]
            # Airflow's rule: the function's parameters are DAG params (their defaults,
            # overridden by a run's conf); the body sees references to them.
            signature = inspect.signature(function)
            given = signature.bind_partial(*args, **kwargs).arguments
            named = [
                p for p in signature.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]  # fmt: skip
            params = dict(options.get("params") or {})
            for p in named:
                if p.name not in params:
                    value = given.get(p.name, p.default)
                    params[p.name] = Param() if value is inspect.Parameter.empty else value
            if params:
                options["params"] = params
            built = DAG(dag_id, **options)
            with built:
                function(**{p.name: DagParam(p.name) for p in named})
            return built

        return build

    if callable(dag_id_or_function):
        return decorate(dag_id_or_function)
    if dag_id_or_function is not None:
        dag_kwargs["dag_id"] = dag_id_or_function
    return decorate


class DagParam(str):
    """A `@dag` function's parameter inside its body: `{{ params.<name> }}` where a
    template renders it (operator fields), and the param's value itself where a task
    receives it as an argument (see `runtime.resolve_params`)."""

    name: str

    def __new__(cls, name: str) -> DagParam:
        made = super().__new__(cls, "{{ params.%s }}" % name)  # noqa: UP031 (Jinja braces)
        made.name = name
        return made


def days_ago(n: int, hour: int = 0, minute: int = 0) -> datetime:
    """Airflow 1/2's `days_ago`: midnight UTC `n` days ago."""
    from datetime import UTC

    today = datetime.now(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return today - timedelta(days=n)
