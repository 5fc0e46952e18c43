"""Task settings, the task base class with `>>` / `<<`, and the Bash and Pod tasks.

Every task takes the same settings (retries, timeout, trigger rule, pool, pod
settings, ...), and a DAG may give defaults for them. They are validated and
normalized here, once, so that `serialize()` can emit exactly the contract of
`miniflow.authoring.serialized` and nothing downstream has to re-check user input.

Python (`@task`) tasks live in `miniflow.authoring.taskflow`; they share this base class.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, Union

from miniflow.authoring import dag as dag_mod
from miniflow.authoring.dag import DAG, check_id, check_json, definition_error, user_location
from miniflow.authoring.serialized import (
    TRIGGER_RULES,
    Expansion,
    PodSettings,
    SerializedTask,
    TaskKind,
    TriggerRule,
)

if TYPE_CHECKING:
    from miniflow.authoring.mapped import PartialTask
    from miniflow.authoring.taskgroup import TaskGroup

_IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")

# The task groups whose `with` block is executing, innermost last (see
# `miniflow.authoring.taskgroup`).
_groups: contextvars.ContextVar[tuple[TaskGroup, ...]] = contextvars.ContextVar(
    "miniflow_task_groups", default=()
)


def group_prefix(dag: DAG) -> str:
    """The id prefix of the innermost task group of `dag` being defined ("" outside one)."""
    groups = [g for g in _groups.get() if g.dag is dag]
    return groups[-1].prefix if groups else ""


class _Invalid(Exception):
    """A setting value is wrong; the message says what was expected."""


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise _Invalid(f"must be a timedelta, got {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise _Invalid(f"must not be negative, got {value!r}")
    return seconds


def _optional_duration(value: Any) -> float | None:
    return None if value is None else _duration(value)


def _retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Invalid(f"must be an integer >= 0, got {value!r}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"must be an integer, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be True or False, got {value!r}")
    return value


def _callbacks(value: Any) -> tuple[Any, ...]:
    found = tuple(value) if isinstance(value, list | tuple) else (value,)
    if value is None or not all(callable(f) for f in found):
        raise _Invalid(f"must be a callable or a list of callables, got {value!r}")
    return found


TEARDOWN_RULE: TriggerRule = "all_done_setup_success"
"""The trigger rule of every teardown task (and of no other task)."""

CALLBACKS = ("on_success_callback", "on_failure_callback", "on_retry_callback")
"""Task callbacks: run by the worker of a `@task` task once its outcome is recorded; for
Bash and Pod tasks, by a child process of the scheduler once it has committed the outcome
(`miniflow.scheduler.dag_callbacks`)."""

CALLBACK_KINDS = ("python", "bash", "pod")
"""The task kinds that run callbacks (an `Empty` task has no outcome of its own to report)."""


def _trigger_rule(value: Any) -> str:
    if value not in TRIGGER_RULES:
        raise _Invalid(f"unknown trigger rule {value!r}; valid rules: {', '.join(TRIGGER_RULES)}")
    return str(value)


def _optional_positive_int(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise _Invalid(f"must be an integer >= 1 or None, got {value!r}")
    return value


def _optional_str(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise _Invalid(f"must be a non-empty string, got {value!r}")
    return value


def _str_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _Invalid(f"must be a dict of strings to strings, got {value!r}")
    return dict(value)


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be a dict, got {value!r}")
    return dict(value)


def _dict_list(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str | bytes | dict) or not isinstance(value, Sequence):
        raise _Invalid(f"must be a list of dicts, got {value!r}")
    if not all(isinstance(item, dict) for item in value):
        raise _Invalid(f"must be a list of dicts, got {value!r}")
    return [dict(item) for item in value]


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise _Invalid(f"must be a list of strings, got {value!r}")
    if not all(isinstance(item, str) for item in value):
        raise _Invalid(f"must be a list of strings, got {value!r}")
    return list(value)


def _pull_policy(value: Any) -> str:
    if value not in _IMAGE_PULL_POLICIES:
        raise _Invalid(f"must be one of {', '.join(_IMAGE_PULL_POLICIES)}, got {value!r}")
    return str(value)


def _security_context(value: Any) -> dict[str, Any] | None:
    return None if value is None else _dict(value)


# Settings outside the `pod` dict: name -> (normalizer, default when unset).
_TASK_SETTINGS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "retries": (_retries, 0),
    "retry_delay": (_duration, 300.0),
    "retry_exponential_backoff": (_bool, False),
    "max_retry_delay": (_optional_duration, None),
    "timeout": (_optional_duration, None),
    "trigger_rule": (_trigger_rule, "all_success"),
    "pool": (_optional_str, None),
    "priority": (_int, 1),
    "env": (_str_dict, {}),
    **dict.fromkeys(CALLBACKS, (_callbacks, ())),
    # a mapped task: at most this many of its mapped instances queued or running at once
    # (across the DAG's runs, like Airflow's max_active_tis_per_dag)
    "max_active_mapped": (_optional_positive_int, None),
    # wait until the same task (same map index) of the run before (by logical date)
    # succeeded or was skipped; a DAG's first run is not held (Airflow's depends_on_past)
    "depends_on_past": (_bool, False),
    # depends_on_past, and also the previous run's direct downstream tasks of this one
    # succeeded or were skipped (Airflow's wait_for_downstream)
    "wait_for_downstream": (_bool, False),
}
# Settings that go into the `pod` dict (keys of `PodSettings`).
_POD_SETTINGS: dict[str, Callable[[Any], Any]] = {
    "namespace": _optional_str,
    "image": _optional_str,
    "resources": _dict,
    "node_selector": _str_dict,
    "tolerations": _dict_list,
    "affinity": _dict,
    "service_account": _optional_str,
    "labels": _str_dict,
    "annotations": _str_dict,
    "volumes": _dict_list,
    "volume_mounts": _dict_list,
    "image_pull_policy": _pull_policy,
    "image_pull_secrets": _str_list,
    "security_context": _security_context,
    "pod_override": _dict,
}
SETTING_NAMES: tuple[str, ...] = (*_TASK_SETTINGS, *_POD_SETTINGS)


AIRFLOW_NAMES = {
    "schedule_interval": "schedule",
    "bash_command": "command",
    "execution_timeout": "timeout",
    "priority_weight": "priority",
}
"""Airflow keywords with a different name here: named in the error of a moved DAG file."""


_DAG_KEYWORDS = (
    "schedule", "start_date", "end_date", "catchup", "timezone", "max_active_runs",
    "max_active_tasks", "params", "tags", "description", "default_args",
    "on_success_callback", "on_failure_callback", "user_defined_macros", "user_defined_filters",
)  # fmt: skip


def _did_you_mean(name: str, for_dag: bool) -> str:
    import difflib

    known = (*SETTING_NAMES, *_DAG_KEYWORDS) if for_dag else SETTING_NAMES
    match = AIRFLOW_NAMES.get(name) or next(
        iter(difflib.get_close_matches(name, known, n=1, cutoff=0.8)), None
    )
    return f" (did you mean {match!r}?)" if match else ""


def validate_settings(
    settings: dict[str, Any], owner: str, *, for_dag: bool = False
) -> dict[str, Any]:
    """Normalize task settings given by a user; raise on unknown names or bad values.

    `None` for a pod setting means "not set" (except `security_context`, where
    None opts out of the restricted default), so it is kept as given.
    """
    normalized: dict[str, Any] = {}
    for name, value in settings.items():
        if name in _TASK_SETTINGS:
            normalizer = _TASK_SETTINGS[name][0]
        elif name in _POD_SETTINGS:
            normalizer = _POD_SETTINGS[name]
        else:
            kind = "DAG keyword or default_args key" if for_dag else "keyword argument"
            raise definition_error(
                f"{owner}: unknown {kind} {name!r}{_did_you_mean(name, for_dag)}; "
                f"task settings are: {', '.join(SETTING_NAMES)}"
            )
        try:
            unset = value is None and (name in _POD_SETTINGS or name in CALLBACKS)
            normalized[name] = (
                () if unset and name in CALLBACKS else (value if unset else normalizer(value))
            )
        except _Invalid as exc:
            raise definition_error(f"{owner}: {name} {exc}") from None
        if name in _POD_SETTINGS:
            check_json(normalized[name], f"{owner}: {name}")
    return normalized


class DependencyMixin:
    """`>>` and `<<` for tasks, references to their results and task groups.

    A task stands for itself on both sides of `>>`; a task group stands for its
    leaves upstream of `>>` and for its roots downstream of it.
    """

    def dependency_task(self) -> BaseTask:
        raise NotImplementedError

    def upstream_side(self) -> list[BaseTask]:
        """The tasks that `self >> x` makes upstream of x."""
        return [self.dependency_task()]

    def downstream_side(self) -> list[BaseTask]:
        """The tasks that `x >> self` makes downstream of x."""
        return [self.dependency_task()]

    def __rshift__(self, other: DependencyTarget) -> DependencyTarget:
        _link_all(self.upstream_side(), _tasks_of(other, upstream=False))
        return other

    def __lshift__(self, other: DependencyTarget) -> DependencyTarget:
        _link_all(_tasks_of(other, upstream=True), self.downstream_side())
        return other

    def __rrshift__(self, other: DependencyTarget) -> DependencyMixin:
        # `[a, b] >> self`
        _link_all(_tasks_of(other, upstream=True), self.downstream_side())
        return self

    def __rlshift__(self, other: DependencyTarget) -> DependencyMixin:
        # `[a, b] << self`
        _link_all(self.upstream_side(), _tasks_of(other, upstream=False))
        return self


DependencyTarget: TypeAlias = Union[DependencyMixin, Sequence[DependencyMixin]]  # noqa: UP007


def _tasks_of(target: object, *, upstream: bool) -> list[BaseTask]:
    items = target if isinstance(target, list | tuple | set | frozenset) else [target]
    tasks = []
    for item in items:
        if not isinstance(item, DependencyMixin):
            hint = " (a @task function must be called: `f()`)" if callable(item) else ""
            raise definition_error(
                f"cannot set a dependency on {item!r}: expected a task or a list of tasks{hint}"
            )
        tasks.extend(item.upstream_side() if upstream else item.downstream_side())
    return tasks


def _link_all(upstream: list[BaseTask], downstream: list[BaseTask]) -> None:
    for up in upstream:
        for down in downstream:
            _link(up, down)


def _link(upstream: BaseTask, downstream: BaseTask) -> None:
    if upstream.dag is not downstream.dag:
        raise definition_error(
            f"cannot set dependency {upstream.task_id!r} >> {downstream.task_id!r}: tasks belong "
            f"to different DAGs ({upstream.dag.dag_id!r} and {downstream.dag.dag_id!r})"
        )
    if upstream is downstream:
        raise definition_error(f"cycle: {upstream.task_id} >> {upstream.task_id}")
    if downstream.task_id in upstream.downstream_ids:
        return
    # A new edge closes a cycle only if `downstream` already reaches `upstream`;
    # checking now (not only at the end) lets the error name the offending line.
    # The cheap guard keeps building large fan-in/fan-out DAGs linear.
    back = None
    if upstream.upstream_ids and downstream.downstream_ids:
        back = upstream.dag.find_path(downstream.task_id, upstream.task_id)
    if back is not None:
        raise definition_error(f"cycle: {' >> '.join([upstream.task_id, *back])}")
    upstream.downstream_ids.add(downstream.task_id)
    downstream.upstream_ids.add(upstream.task_id)


class BaseTask(DependencyMixin):
    """What every task kind shares: id, DAG, settings, dependencies."""

    kind: TaskKind

    def __init__(self, task_id: str, settings: dict[str, Any], *, dag: DAG | None = None) -> None:
        self.filename, self.lineno = user_location()
        owner = dag if dag is not None else dag_mod.current_dag()
        if owner is None:
            raise definition_error(
                f"task {task_id!r} must be created inside a `with DAG(...):` block"
            )
        self.dag: DAG = owner
        groups = [g for g in _groups.get() if g.dag is owner]
        prefix = groups[-1].prefix if groups else ""
        self.task_id = check_id(
            f"{prefix}{task_id}" if isinstance(task_id, str) else task_id, "task id"
        )
        self.settings = validate_settings(settings, f"task {self.task_id!r}")
        self.upstream_ids: set[str] = set()
        self.downstream_ids: set[str] = set()
        self.group_defaults: dict[str, Any] = groups[-1].task_defaults if groups else {}
        self.task_group_id: str | None = groups[-1].group_id if groups else None
        self.is_setup = False
        self.is_teardown = False
        self.on_failure_fail_dagrun = False
        if self.settings.get("trigger_rule") == TEARDOWN_RULE:
            raise definition_error(
                f"task {self.task_id!r}: trigger rule {TEARDOWN_RULE!r} is the rule of teardown "
                "tasks; mark the task with `.as_teardown(setups=...)` instead"
            )
        given = [c for c in CALLBACKS if self.settings.get(c)]
        if given and self.kind not in CALLBACK_KINDS:
            raise definition_error(
                f"task {self.task_id!r}: {', '.join(given)}: task callbacks run for @task, "
                f"Bash and Pod tasks, not for {self.kind} tasks"
            )
        self.expansion: Expansion | None = None  # set by `.expand` / `.expand_kwargs`
        owner.add_task(self)
        for group in groups:  # nested groups: a task belongs to each enclosing one
            group.members.append(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.dag.dag_id}.{self.task_id}>"

    def dependency_task(self) -> BaseTask:
        return self

    def as_setup(self) -> BaseTask:
        """Mark this task as a setup task (Airflow's `as_setup()`); returns the task.

        Teardowns downstream of it run only if it (or another setup upstream of them)
        succeeded; clearing a task downstream of it clears it and its teardowns too.
        """
        if self.is_teardown:
            raise definition_error(f"task {self.task_id!r} is a teardown: it cannot be a setup")
        self.is_setup = True
        return self

    def as_teardown(
        self,
        *,
        setups: DependencyTarget | None = None,
        on_failure_fail_dagrun: bool | None = None,
    ) -> BaseTask:
        """Mark this task as a teardown task; returns the task.

        `setups` (tasks or task results) become setup tasks upstream of this one. A
        teardown runs once everything upstream of it is done, whether it succeeded or
        failed, if one of the setup tasks upstream of it (at any depth) succeeded or it
        has none; it is skipped when all of them failed or were skipped. Its own failure
        does not fail the run unless `on_failure_fail_dagrun=True`.
        """
        if self.is_setup:
            raise definition_error(f"task {self.task_id!r} is a setup: it cannot be a teardown")
        rule = self.settings.get("trigger_rule")
        if rule is not None and rule != TEARDOWN_RULE:
            raise definition_error(
                f"task {self.task_id!r}: a teardown's trigger rule is always {TEARDOWN_RULE!r} "
                f"(it runs whatever its upstream tasks did); drop trigger_rule={rule!r}"
            )
        if on_failure_fail_dagrun is not None:
            if not isinstance(on_failure_fail_dagrun, bool):
                raise definition_error(
                    f"task {self.task_id!r}: on_failure_fail_dagrun must be True or False, "
                    f"got {on_failure_fail_dagrun!r}"
                )
            self.on_failure_fail_dagrun = on_failure_fail_dagrun
        self.is_teardown = True
        if setups is not None:
            found = _tasks_of(setups, upstream=True)
            for setup in found:
                setup.as_setup()
            _link_all(found, [self])
        return self

    @classmethod
    def partial(cls, task_id: str, **fixed: Any) -> PartialTask:
        """A mapped task in the making: `Bash.partial("t", env=...).expand(command=[...])`.

        `fixed` is what every mapped instance shares (any argument of the task); see
        `miniflow.authoring.mapped.PartialTask`.
        """
        from miniflow.authoring.mapped import PartialTask

        if cls.kind not in ("bash", "pod"):
            raise definition_error(f"{cls.__name__} tasks cannot be mapped")
        return PartialTask(cls, task_id, fixed)

    def __enter__(self) -> BaseTask:
        """`with t.as_teardown(setups=s): ...`: the tasks created in the block run between
        the teardown's setups and the teardown (Airflow's form)."""
        if not self.is_teardown:
            raise definition_error(
                f"`with` on task {self.task_id!r}: only a teardown task opens a block "
                "(`with t.as_teardown(setups=s): ...`)"
            )
        self._before_block = set(self.dag.tasks)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            return
        created = [t for tid, t in self.dag.tasks.items() if tid not in self._before_block]
        inside = {t.task_id for t in created}
        setups = [self.dag.tasks[u] for u in sorted(self.upstream_ids)]
        setups = [u for u in setups if u.is_setup and u.task_id not in inside]
        for made in created:
            if made is self or made.is_setup:
                continue
            if not made.upstream_ids & inside:
                _link_all(setups, [made])
            if not made.downstream_ids & inside:
                _link(made, self)

    def effective_settings(self) -> dict[str, Any]:
        """Settings after inheritance: built-in default < DAG default < task group default
        < the task's own."""
        merged: dict[str, Any] = {name: default for name, (_, default) in _TASK_SETTINGS.items()}
        merged.update(self.dag.task_defaults)
        merged.update(self.group_defaults)
        merged.update(self.settings)
        merged["env"] = {
            **self.dag.task_defaults.get("env", {}),
            **self.group_defaults.get("env", {}),
            **self.settings.get("env", {}),
        }
        return merged

    def _serialize_common(self) -> SerializedTask:
        settings = self.effective_settings()
        pod: dict[str, Any] = {}
        for name in _POD_SETTINGS:
            if name in settings and (settings[name] is not None or name == "security_context"):
                pod[name] = settings[name]
        pod = json.loads(json.dumps(pod))  # deep copy: the result must not alias our state
        data: SerializedTask = {
            "task_id": self.task_id,
            "kind": self.kind,
            "upstream": sorted(self.upstream_ids),
            "trigger_rule": TEARDOWN_RULE if self.is_teardown else settings["trigger_rule"],
            "retries": settings["retries"],
            "retry_delay": settings["retry_delay"],
            "retry_exponential_backoff": settings["retry_exponential_backoff"],
            "max_retry_delay": settings["max_retry_delay"],
            "timeout": settings["timeout"],
            "pool": settings["pool"],
            "priority": settings["priority"],
            "env": dict(settings["env"]),
            "pod": PodSettings(**pod),
            **self._serialize_mapping(settings),  # type: ignore[typeddict-item]
        }
        if settings["depends_on_past"] or settings["wait_for_downstream"]:
            data["depends_on_past"] = True
        if settings["wait_for_downstream"]:
            data["wait_for_downstream"] = True
        if self.is_setup:
            data["setup"] = True
        if self.is_teardown:
            data["teardown"] = True
            if self.on_failure_fail_dagrun:
                data["on_failure_fail_dagrun"] = True
        # DAG or group defaults may name callbacks for every task: Empty tasks run none.
        callbacks = [c for c in CALLBACKS if settings.get(c)] if self.kind in CALLBACK_KINDS else []
        if callbacks:
            data["callbacks"] = callbacks
        if self.task_group_id is not None:
            data["task_group"] = self.task_group_id
        return data

    def _serialize_mapping(self, settings: dict[str, Any]) -> dict[str, Any]:
        if self.expansion is None:
            return {}
        out: dict[str, Any] = {"expand": json.loads(json.dumps(self.expansion))}
        if settings.get("max_active_mapped") is not None:
            out["max_active_mapped"] = settings["max_active_mapped"]
        return out

    def serialize(self) -> SerializedTask:
        """This task's part of the serialized DAG."""
        return self._serialize_common()


class Bash(BaseTask):
    """Run a shell command (a Jinja2 template) in a worker pod."""

    kind: TaskKind = "bash"

    def __init__(
        self,
        task_id: str,
        command: str | None = None,
        env: dict[str, str] | None = None,
        skip_on_exit_code: int | Sequence[int] | None = None,
        push_result: bool = False,
        **settings: Any,
    ) -> None:
        if not isinstance(push_result, bool):
            raise definition_error(
                f"task {task_id!r}: push_result must be True or False, got {push_result!r}"
            )
        self.push_result = push_result
        if command is None:  # `bash_command=` from Airflow: say so before "no command"
            validate_settings(settings, f"task {task_id!r}")
        if not isinstance(command, str) or not command.strip():
            raise definition_error(f"task {task_id!r}: command must be a non-empty string")
        self.command = command
        self.skip_on_exit_code = _exit_codes(skip_on_exit_code, task_id)
        if env is not None:
            settings["env"] = env
        dag = settings.pop("dag", None)
        super().__init__(task_id, settings, dag=dag)

    def serialize(self) -> SerializedTask:
        data = self._serialize_common()
        data["command"] = self.command
        if self.skip_on_exit_code:
            data["skip_on_exit_code"] = list(self.skip_on_exit_code)
        if self.push_result:
            data["push_result"] = True
        return data


def _exit_codes(value: object, task_id: str) -> list[int]:
    """`skip_on_exit_code` as a sorted list: exit codes 1-255 (0 is success)."""
    if value is None:
        return []
    codes = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        isinstance(codes, str | bytes)
        or not isinstance(codes, Sequence)
        or not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 255 for c in codes)
    ):
        raise definition_error(
            f"task {task_id!r}: skip_on_exit_code must be an exit code from 1 to 255 or a "
            f"list of them, got {value!r}"
        )
    return sorted(set(codes))


def _optional_str_list(value: object, task_id: str, what: str) -> list[str] | None:
    if value is None:
        return None
    try:
        return _str_list(value)
    except _Invalid as exc:
        raise definition_error(f"task {task_id!r}: {what} {exc}") from None


class Pod(BaseTask):
    """Run any image with its own entrypoint; launched directly by the scheduler.

    `command` replaces the image's entrypoint (None keeps it), `args` its
    arguments; both are lists of Jinja2 templates. Exit code 0 means success.

    `push_result=True` (Airflow's `do_xcom_push`): the container writes its result,
    small JSON, to its termination message file `/dev/termination-log`; the
    scheduler reads it from the pod status it already watches (no sidecar, no exec,
    no extra request) and stores it as the task's result, which downstream `@task`s
    receive like any `@task` result: pass `pod.output` as an argument. Kubernetes
    keeps at most 4096 bytes of it; invalid JSON, no result or a larger one fails
    the try, saying why. `result_file` names another file for images that write their
    result elsewhere (it becomes the pod's `terminationMessagePath`).
    """

    kind: TaskKind = "pod"

    def __init__(
        self,
        task_id: str,
        image: str | None = None,
        command: list[str] | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        push_result: bool = False,
        result_file: str | None = None,
        **settings: Any,
    ) -> None:
        if not isinstance(image, str) or not image.strip():
            raise definition_error(
                f"Pod task {task_id!r} needs an image, e.g. Pod({task_id!r}, image='busybox:1.36')"
            )
        self.image = image
        self.command = _optional_str_list(command, task_id, "command")
        self.args = _optional_str_list(args, task_id, "args")
        if not isinstance(push_result, bool):
            raise definition_error(
                f"task {task_id!r}: push_result must be True or False, got {push_result!r}"
            )
        self.push_result = push_result
        if result_file is not None and (
            not push_result or not isinstance(result_file, str) or not result_file.startswith("/")
        ):
            raise definition_error(
                f"task {task_id!r}: result_file must be an absolute path, with "
                f"push_result=True, got {result_file!r}"
            )
        self.result_file = result_file
        if env is not None:
            settings["env"] = env
        dag = settings.pop("dag", None)
        super().__init__(task_id, settings, dag=dag)

    def serialize(self) -> SerializedTask:
        data = self._serialize_common()
        # The DAG-level `image` default is the worker image: it does not apply here.
        data["pod"].pop("image", None)
        data["image"] = self.image
        data["cmds"] = self.command
        data["args"] = self.args
        if self.push_result:
            data["push_result"] = True
        if self.result_file is not None:
            data["result_file"] = self.result_file
        return data

    @property
    def output(self) -> Any:
        """The task's result, as an argument of a `@task` (`push_result=True` only);
        like a `@task`'s return value, it makes this task an upstream."""
        from miniflow.authoring.taskflow import TaskRef

        if not self.push_result:
            raise definition_error(
                f"task {self.task_id!r}: .output is the result a Pod task writes to "
                "/dev/termination-log; create it with push_result=True"
            )
        return TaskRef(self)


class Empty(BaseTask):
    """A task that runs nothing: a join or a fork point for dependencies.

    The scheduler marks it `success` (or `skipped` / `upstream_failed`, per its trigger
    rule) itself as soon as it is decided: no process, no pod, no launch cost.
    """

    kind: TaskKind = "empty"

    def __init__(self, task_id: str, **settings: Any) -> None:
        dag = settings.pop("dag", None)
        super().__init__(task_id, settings, dag=dag)
