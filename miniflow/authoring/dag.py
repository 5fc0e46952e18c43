"""The `DAG` object users write in their DAG files, and its validation.

A DAG file is plain Python: `with DAG(...):` pushes the DAG on a "current DAG"
stack so the tasks created inside attach to it. Everything a user can get wrong
is checked here, at definition time, and reported as a `DagDefinitionError`
naming the file and line of the offending user code, so the parser can show an
import error instead of the scheduler failing later.

This module must stay light (no jinja2, no croniter, no database at import
time): the worker imports it on every task start. `DAG.serialize()` is the only
way out to the rest of miniflow, which never sees these Python objects.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import sys
from collections.abc import Iterator
from datetime import date, datetime, tzinfo
from types import TracebackType
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from miniflow.authoring.serialized import FORMAT_VERSION, SerializedDag
from miniflow.errors import DagDefinitionError

if TYPE_CHECKING:
    from miniflow.authoring.params import ParamSpec
    from miniflow.authoring.tasks import BaseTask

SCHEDULE_PRESETS: tuple[str, ...] = ("@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly")

# Ids end up as Kubernetes label values, so they follow the label-value rules.
_ID_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
ID_RULES = (
    "ids must be usable as Kubernetes label values: 1-63 characters, letters, digits, "
    "'-', '_', '.', starting and ending with a letter or digit"
)

# The miniflow package (this module's parent package), not only the authoring API.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_EXAMPLES_DIR = os.path.join(_PACKAGE_DIR, "examples") + os.sep

# The DAGs whose `with` block is executing, innermost last.
_current: contextvars.ContextVar[tuple[DAG, ...]] = contextvars.ContextVar(
    "miniflow_current_dag", default=()
)
# Lists collecting every DAG constructed while they are active (see `capture`).
_captures: contextvars.ContextVar[tuple[list[DAG], ...]] = contextvars.ContextVar(
    "miniflow_dag_captures", default=()
)


def user_location() -> tuple[str | None, int | None]:
    """File and line of the innermost frame outside the miniflow package.

    That is the line of the user's DAG file that triggered the current call;
    example DAGs shipped inside the package count as user code.
    """
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        internal = filename.startswith(_PACKAGE_DIR) and not filename.startswith(_EXAMPLES_DIR)
        if not internal:
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None, None


def definition_error(
    message: str, location: tuple[str | None, int | None] | None = None
) -> DagDefinitionError:
    """A `DagDefinitionError` located at `location`, or at the calling user code."""
    filename, lineno = location if location is not None else user_location()
    return DagDefinitionError(message, filename=filename, lineno=lineno)


def check_id(value: object, what: str) -> str:
    """Return `value` if it is a valid dag/task id, else raise naming the rules."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise definition_error(f"invalid {what} {value!r}: {ID_RULES}")
    return value


def check_json(value: object, what: str) -> None:
    """Raise unless `value` survives `json.dumps` (the serialized DAG is plain JSON)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise definition_error(f"{what} must be JSON-serializable: {exc}") from exc


def check_callbacks(value: object, what: str) -> tuple[Any, ...]:
    """A callback setting as a tuple of callables: None, one callable or a list of them."""
    if value is None:
        return ()
    found = tuple(value) if isinstance(value, list | tuple) else (value,)
    if not all(callable(f) for f in found):
        raise definition_error(f"{what} must be a callable or a list of callables, got {value!r}")
    return found


def current_dag() -> DAG | None:
    """The DAG whose `with` block is executing, if any."""
    stack = _current.get()
    return stack[-1] if stack else None


@contextlib.contextmanager
def capture() -> Iterator[list[DAG]]:
    """Collect every DAG constructed inside the block, in construction order."""
    found: list[DAG] = []
    token = _captures.set((*_captures.get(), found))
    try:
        yield found
    finally:
        _captures.reset(token)


def _check_timezone(name: object) -> ZoneInfo:
    if not isinstance(name, str):
        raise definition_error(f"timezone must be an IANA name string, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: "America" is a dir
        raise definition_error(
            f"unknown timezone {name!r} (expected an IANA name such as 'UTC' or 'Europe/Paris')"
        ) from exc


def _check_schedule(schedule: object) -> str | None:
    if schedule is None:
        return None
    if not isinstance(schedule, str):
        raise definition_error(
            f"schedule must be None, a cron string or one of {', '.join(SCHEDULE_PRESETS)}; "
            f"got {schedule!r}"
        )
    if schedule in SCHEDULE_PRESETS:
        return schedule
    # The same check the scheduler's timetable applies (lazy: keep `import miniflow` fast),
    # so a DAG that loads is a DAG that can be scheduled.
    from miniflow.authoring.schedule import validate_schedule

    try:
        validate_schedule(schedule)
    except ValueError as exc:
        raise definition_error(
            f"invalid schedule {schedule!r}: {exc} "
            f"(use a 5-field cron expression or one of {', '.join(SCHEDULE_PRESETS)})"
        ) from None
    return schedule


def _check_date(value: object, what: str, tz: tzinfo) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise definition_error(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        value = value.replace(tzinfo=tz)
    return value


def _check_positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise definition_error(f"{what} must be an integer >= 1, got {value!r}")
    return value


_TEMPLATE_NAMES = frozenset(
    {
        "ds", "ds_nodash", "ts", "ts_nodash", "logical_date", "data_interval_start",
        "data_interval_end", "run_id", "dag_id", "task_id", "try_number", "params", "run_type",
        "ti", "task_instance",
    }
)  # fmt: skip
"""The template context's own names (`templates.build_context`): a macro may not hide one."""


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise definition_error(f"{what}: {name!r} is not a template name")
    return name


def _check_macros(macros: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """`user_defined_macros` split into JSON values (rendered anywhere) and functions
    (rendered by a process that imports the DAG file: `miniflow.parsing.render_child`)."""
    if macros is None:
        return {}, {}
    if not isinstance(macros, dict):
        raise definition_error(f"user_defined_macros must be a dict, got {macros!r}")
    values: dict[str, Any] = {}
    functions: dict[str, Any] = {}
    for name, value in macros.items():
        _check_name(name, "user_defined_macros")
        if name in _TEMPLATE_NAMES:
            raise definition_error(
                f"user_defined_macros: {name!r} is a name of the template context already"
            )
        if callable(value):
            functions[name] = value
        else:
            check_json(value, f"user_defined_macros[{name!r}]")
            values[name] = value
    return values, functions


def _check_filters(filters: object) -> dict[str, Any]:
    """`user_defined_filters`: a dict of names to callables."""
    if filters is None:
        return {}
    if not isinstance(filters, dict):
        raise definition_error(f"user_defined_filters must be a dict, got {filters!r}")
    for name, value in filters.items():
        _check_name(name, "user_defined_filters")
        if not callable(value):
            raise definition_error(
                f"user_defined_filters[{name!r}] must be a callable, got {value!r}"
            )
    return dict(filters)


AIRFLOW_ONLY_DEFAULTS = frozenset({"owner", "email", "email_on_failure", "email_on_retry"})
"""`default_args` keys from Airflow DAG files that are accepted and ignored."""


class DAG:
    """A workflow: tasks, their dependencies, and when to run them.

    Use it as a context manager; tasks created inside the `with` block belong
    to it. Several DAGs may be defined in one file.

    `schedule` is None (manual runs only), a cron expression or a preset
    (@once @hourly @daily @weekly @monthly @yearly). Naive `start_date` and
    `end_date` are interpreted in the DAG's `timezone` (an IANA name);
    aware datetimes are kept as given.

    Any task setting (retries, retry_delay, timeout, trigger_rule, pool,
    priority, image, resources, env, ...) may be given as a keyword or in
    `default_args` to become the default of every task of the DAG; keywords
    win over `default_args`, a task's own value wins over both. `env` is the
    exception: the DAG's env is merged under each task's env.

    `on_success_callback` / `on_failure_callback` (a callable or a list) run when a run
    ends, in a child process of the scheduler (`miniflow.scheduler.dag_callbacks`); task
    callbacks go in `default_args`. `user_defined_macros` are values every template of
    the DAG sees as top-level names; `user_defined_filters` are Jinja filters. JSON values
    are rendered anywhere; if the DAG has functions among its macros or any filter, its
    templates are rendered by a process that imports the DAG file (a child of the
    scheduler, or the worker), which only such DAGs pay for.
    """

    def __init__(
        self,
        dag_id: str,
        *,
        schedule: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        catchup: bool = False,
        timezone: str = "UTC",
        max_active_runs: int = 16,
        max_active_tasks: int = 32,
        params: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        description: str | None = None,
        default_args: dict[str, Any] | None = None,
        on_success_callback: Any = None,
        on_failure_callback: Any = None,
        user_defined_macros: dict[str, Any] | None = None,
        user_defined_filters: dict[str, Any] | None = None,
        **task_defaults: Any,
    ) -> None:
        from miniflow.authoring import params as params_mod  # both import this module: import at
        from miniflow.authoring import tasks  # call time

        self.filename, self.lineno = user_location()
        self.dag_id = check_id(dag_id, "dag id")
        self.schedule = _check_schedule(schedule)
        self.timezone = timezone
        tz = _check_timezone(timezone)
        self.start_date = _check_date(start_date, "start_date", tz)
        self.end_date = _check_date(end_date, "end_date", tz)
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise definition_error(
                f"end_date {self.end_date.isoformat()} is before start_date "
                f"{self.start_date.isoformat()}"
            )
        if not isinstance(catchup, bool):
            raise definition_error(f"catchup must be True or False, got {catchup!r}")
        self.catchup = catchup
        self.max_active_runs = _check_positive_int(max_active_runs, "max_active_runs")
        self.max_active_tasks = _check_positive_int(max_active_tasks, "max_active_tasks")
        if params is not None and not isinstance(params, dict):
            raise definition_error(f"params must be a dict, got {params!r}")
        self.params: dict[str, Any] = {}
        self.param_specs: dict[str, ParamSpec] = {}
        for key, value in (params or {}).items():
            if isinstance(value, params_mod.Param):
                self.param_specs[key] = value.spec(key)
                if not value.required:
                    self.params[key] = value.default
            else:
                self.params[key] = value
        check_json(self.params, "params")
        required = sorted(k for k, spec in self.param_specs.items() if spec["required"])
        if required and self.schedule is not None:
            raise definition_error(
                f"DAG {dag_id!r} has a schedule, so its params need defaults (a scheduled run "
                f"has no conf): {', '.join(map(repr, required))} have none"
            )
        if tags is None:
            tags = []
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise definition_error(f"tags must be a list of strings, got {tags!r}")
        self.tags = list(tags)
        if description is not None and not isinstance(description, str):
            raise definition_error(f"description must be a string, got {description!r}")
        self.description = description
        self.user_defined_macros, self.macro_functions = _check_macros(user_defined_macros)
        self.user_defined_filters = _check_filters(user_defined_filters)
        if default_args is not None and not isinstance(default_args, dict):
            raise definition_error(f"default_args must be a dict, got {default_args!r}")
        # Airflow DAG files often carry these in default_args; they mean nothing here
        # (no e-mail is sent), so a moved DAG still loads.
        given = {k: v for k, v in (default_args or {}).items() if k not in AIRFLOW_ONLY_DEFAULTS}
        defaults = {**given, **task_defaults}
        self.task_defaults: dict[str, Any] = tasks.validate_settings(
            defaults, f"DAG {dag_id!r}", for_dag=True
        )
        # DAG-level callbacks (a run ended); task callbacks come from default_args.
        self.callbacks: dict[str, tuple[Any, ...]] = {}
        for name, value in (
            ("on_success_callback", on_success_callback),
            ("on_failure_callback", on_failure_callback),
        ):
            found_callbacks = check_callbacks(value, f"DAG {dag_id!r}: {name}")
            if found_callbacks:
                self.callbacks[name] = found_callbacks
        self.tasks: dict[str, BaseTask] = {}
        for found in _captures.get():
            found.append(self)

    def __repr__(self) -> str:
        return f"<DAG {self.dag_id!r}: {len(self.tasks)} tasks>"

    def __enter__(self) -> DAG:
        _current.set((*_current.get(), self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = _current.get()
        if stack and stack[-1] is self:
            _current.set(stack[:-1])
        if exc_type is None:
            self.check_cycles()

    def get_task(self, task_id: str) -> BaseTask:
        """The task `task_id`; `KeyError` naming the DAG if there is none."""
        try:
            return self.tasks[task_id]
        except KeyError:
            raise KeyError(f"DAG {self.dag_id!r} has no task {task_id!r}") from None

    def add_task(self, task: BaseTask) -> None:
        """Attach `task`; called by the task constructors."""
        if task.task_id in self.tasks:
            raise definition_error(
                f"duplicate task id {task.task_id!r} in DAG {self.dag_id!r}",
                (task.filename, task.lineno),
            )
        self.tasks[task.task_id] = task

    def find_path(self, start: str, goal: str) -> list[str] | None:
        """A downstream path of task ids from `start` to `goal`, if one exists."""
        parents: dict[str, str | None] = {start: None}
        todo = [start]
        while todo:
            current = todo.pop()
            if current == goal:
                path: list[str] = []
                node: str | None = current
                while node is not None:
                    path.append(node)
                    node = parents[node]
                return path[::-1]
            for nxt in sorted(self.tasks[current].downstream_ids):
                if nxt not in parents:
                    parents[nxt] = current
                    todo.append(nxt)
        return None

    def check_cycles(self) -> None:
        """Raise a `DagDefinitionError` naming the first cycle found, if any."""
        white, grey, black = 0, 1, 2
        color = dict.fromkeys(self.tasks, white)
        for root in self.tasks:
            if color[root] != white:
                continue
            # Iterative DFS: deep chains must not hit the recursion limit.
            path = [root]
            iters = [iter(sorted(self.tasks[root].downstream_ids))]
            color[root] = grey
            while iters:
                nxt = next(iters[-1], None)
                if nxt is None:
                    color[path.pop()] = black
                    iters.pop()
                elif color[nxt] == grey:
                    cycle = [*path[path.index(nxt) :], nxt]
                    raise definition_error(
                        f"cycle in DAG {self.dag_id!r}: {' >> '.join(cycle)}",
                        (self.filename, self.lineno),
                    )
                elif color[nxt] == white:
                    color[nxt] = grey
                    path.append(nxt)
                    iters.append(iter(sorted(self.tasks[nxt].downstream_ids)))

    def serialize(self, fileloc: str, lineno: int | None = None) -> SerializedDag:
        """The plain-JSON form of this DAG (see `miniflow.authoring.serialized`).

        `fileloc` is the DAG file's path relative to the DAGs folder;
        `lineno` defaults to the line of the `DAG(...)` call.
        """
        self.check_cycles()
        data: SerializedDag = {
            "format_version": FORMAT_VERSION,
            "dag_id": self.dag_id,
            "fileloc": fileloc,
            "lineno": lineno if lineno is not None else (self.lineno or 0),
            "schedule": self.schedule,
            "start_date": self.start_date.isoformat() if self.start_date else None,
            "end_date": self.end_date.isoformat() if self.end_date else None,
            "catchup": self.catchup,
            "timezone": self.timezone,
            "max_active_runs": self.max_active_runs,
            "max_active_tasks": self.max_active_tasks,
            "params": json.loads(json.dumps(self.params)),
            "param_specs": json.loads(json.dumps(self.param_specs)),
            "tags": list(self.tags),
            "description": self.description,
            "tasks": {task_id: task.serialize() for task_id, task in self.tasks.items()},
        }
        if self.callbacks:
            data["callbacks"] = sorted(self.callbacks)
        if self.user_defined_macros:
            data["user_defined_macros"] = json.loads(json.dumps(self.user_defined_macros))
        if self.macro_functions or self.user_defined_filters:
            # The callables stay in the file: whoever renders imports it (see `templates`).
            data["template_functions"] = sorted(self.macro_functions) + sorted(
                f"|{name}" for name in self.user_defined_filters
            )
        return data
