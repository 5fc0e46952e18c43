"""Airflow's core operators as miniflow tasks.

Each operator *is* the miniflow task it maps onto (a subclass adding Airflow's
constructor and methods), so everything downstream of authoring — serialization,
the scheduler, the worker — sees ordinary `Bash`, `Empty` and Python tasks:

| Airflow | miniflow |
|---|---|
| `BashOperator` | `Bash` (`bash_command` -> `command`, `skip_on_exit_code` default 99) |
| `PythonOperator` | a Python task calling `python_callable` with Airflow's context rules |
| `BranchPythonOperator`, `ShortCircuitOperator` | `@task.branch`, `@task.short_circuit` |
| `EmptyOperator` | `Empty` |
| a `BaseOperator` subclass | a Python task: `template_fields` rendered, then `execute` |
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
from collections.abc import Callable, Sequence
from typing import Any

from miniflow.airflow_compat import arguments, problems, runtime
from miniflow.authoring import dag as dag_mod
from miniflow.authoring.serialized import ArgRef, PythonMode, SensorSettings
from miniflow.authoring.taskflow import PythonTask, TaskRef
from miniflow.authoring.tasks import Bash, DependencyMixin, Empty, Pod, validate_settings


def _defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The operator's arguments over its own `default_args` (the DAG's apply later)."""
    own = kwargs.pop("default_args", None) or {}
    kwargs.pop("task_group", None)
    return {**own, **kwargs}


class Label:
    """`a >> Label("why") >> b`: an edge label; the dependency is kept, the label dropped
    (miniflow's graph does not show labels)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.sources: list[Any] = []
        self.targets: list[Any] = []

    def __repr__(self) -> str:
        return f"Label({self.label!r})"

    def __rshift__(self, other: Any) -> Any:
        for source in self.sources:
            source >> other
        return other

    def __rrshift__(self, other: Any) -> Label:
        self.sources.extend(other if isinstance(other, list | tuple) else [other])
        return self

    def __lshift__(self, other: Any) -> Any:
        for target in self.targets:
            target << other
        return other

    def __rlshift__(self, other: Any) -> Label:
        self.targets.extend(other if isinstance(other, list | tuple) else [other])
        return self


class AirflowMixin(DependencyMixin):
    """Airflow's dependency methods on miniflow tasks, groups and task results."""

    def __rshift__(self, other: Any) -> Any:
        if isinstance(other, Label):
            other.sources.append(self)
            return other
        return super().__rshift__(other)

    def __lshift__(self, other: Any) -> Any:
        if isinstance(other, Label):
            other.targets.append(self)
            return other
        return super().__lshift__(other)

    def set_downstream(self, other: Any, edge_modifier: Any = None) -> None:
        self >> other

    def set_upstream(self, other: Any, edge_modifier: Any = None) -> None:
        self << other


class XComArg(AirflowMixin, TaskRef):
    """The future result of a Python task (`op.output`, a TaskFlow call's return)."""

    def __init__(self, operator: Any, key: str = "return_value") -> None:
        task = operator.task if isinstance(operator, TaskRef) else operator
        pushed = getattr(task, "push_result", False)  # Bash / Pod results (do_xcom_push)
        if isinstance(task, Bash | Pod) and not pushed:
            raise problems.unsupported(
                "XComArg", f"{task.task_id!r} was created with do_xcom_push=False: it has no result"
            )
        if not isinstance(task, PythonTask | Bash | Pod):
            raise problems.unsupported(
                "XComArg", f"{task!r} has no result: only Python, Bash and Pod tasks have one"
            )
        # `result["k"]` of a `multiple_outputs` task: item `k` of the task's result (a
        # dict), taken out by the consuming task when it runs.
        self.item: str | None = None if key == "return_value" else key
        super().__init__(task)

    @property
    def operator(self) -> Any:
        return self.task

    @property
    def key(self) -> str:
        return self.item or "return_value"

    def __str__(self) -> str:
        """Airflow's rule: in a string (an f-string in a templated field), the template
        that pulls the value when the field is rendered (no dependency is added)."""
        key = "" if self.item is None else f", key={self.item!r}"
        return "{{ ti.xcom_pull(task_ids=%r%s) }}" % (self.task_id, key)  # noqa: UP031

    def __getitem__(self, key: str) -> XComArg:
        if self.item is not None:
            raise problems.pending("xcom_pull")
        return XComArg(self.task, key)

    def resolve(self, context: Any) -> Any:
        raise problems.pending("xcom_pull")


def pick(value: Any, item: str | None) -> Any:
    """Item `item` of an upstream result (the whole result for None)."""
    if item is None:
        return value
    if not isinstance(value, dict) or item not in value:
        raise KeyError(f"the upstream result has no item {item!r} (multiple_outputs)")
    return value[item]


class OperatorMixin(AirflowMixin):
    """What every mapped operator has: Airflow's attributes and class-level mapping."""

    template_fields: Sequence[str] = ()
    template_ext: Sequence[str] = ()
    ui_color = "#fff"

    @property
    def output(self) -> XComArg:
        return XComArg(self)

    @property
    def trigger_rule(self) -> str:
        return str(self.effective_settings()["trigger_rule"])  # type: ignore[attr-defined]

    @trigger_rule.setter
    def trigger_rule(self, value: str) -> None:
        """`op.trigger_rule = TriggerRule.NONE_FAILED` after creation, as Airflow allows."""
        task_id = self.task_id  # type: ignore[attr-defined]
        self.settings.update(  # type: ignore[attr-defined]
            validate_settings({"trigger_rule": str(value)}, f"task {task_id!r}")
        )

    @property
    def log(self) -> Any:
        return runtime.task_logger(type(self).__name__)

    @classmethod
    def partial(cls, task_id: str | None = None, **kwargs: Any) -> Any:
        """`Op.partial(task_id=..., **fixed).expand(field=[...])`: see `mapping`."""
        from miniflow.airflow_compat.mapping import OperatorPartial

        return OperatorPartial(cls, {"task_id": task_id, **kwargs})

    def expand(self, **kwargs: Any) -> Any:
        raise problems.unsupported(
            "expand", f"call {type(self).__name__}.partial(task_id=..., ...).expand(...)"
        )

    # What `mapping.OperatorPartial` asks of each operator class.
    @classmethod
    def mapped_fields(cls) -> dict[str, str] | None:
        """Airflow argument -> the miniflow field it maps (None: any argument)."""
        return {}

    @classmethod
    def required_fields(cls, fixed: dict[str, Any]) -> list[str]:
        """Arguments each mapped instance must bring when `partial` does not."""
        return []

    @classmethod
    def placeholders(cls, names: list[str], fixed: dict[str, Any]) -> dict[str, Any]:
        """Constructor values standing in for mapped arguments."""
        return {}

    def clear_placeholders(self, names: list[str]) -> None:
        """Forget the placeholders: each mapped instance brings its own value."""

    @classmethod
    def mapped_item(cls, name: str, value: Any, fixed: dict[str, Any]) -> Any:
        """One literal item of a mapped argument, as the miniflow field takes it."""
        return value

    @classmethod
    def check_mapped_ref(cls, name: str, fixed: dict[str, Any]) -> None:
        """Refuse an argument mapped over a task's result that cannot be converted."""


class BashOperator(OperatorMixin, Bash):
    template_fields: Sequence[str] = ("bash_command", "env", "cwd")

    def __init__(
        self,
        *,
        task_id: str,
        bash_command: str,
        env: dict[str, str] | None = None,
        append_env: bool = False,
        output_encoding: str = "utf-8",
        skip_on_exit_code: int | Sequence[int] | None = 99,
        cwd: str | None = None,
        do_xcom_push: bool = True,
        **kwargs: Any,
    ) -> None:
        output_processor = kwargs.pop("output_processor", None)
        if output_processor is not None and output_processor is not json.loads:
            raise problems.unsupported(
                "output_processor",
                "a Bash task's result is its last line, parsed as JSON when it is JSON "
                "(output_processor=json.loads is accepted: it is what happens)",
            )
        if kwargs.get("multiple_outputs"):
            problems.warn(
                "multiple_outputs",
                "a Bash task's keys are items of its result (`op.output['key']`), not "
                "separate XComs for ti.xcom_pull(key=...)",
            )
        pulled: list[TaskRef] = []
        bash_command = _pulled(bash_command, pulled)
        if env is not None:
            env = {k: _pulled(v, pulled) for k, v in env.items()}
        settings = arguments.task_settings(_defaults(kwargs))
        self.do_xcom_push = do_xcom_push
        command = _template_file(bash_command, self.template_ext_for_bash)
        if env is not None and not append_env:
            problems.warn("env", "miniflow adds env to the worker's environment (append_env=True)")
        if cwd is not None:
            command = f"cd {shlex.quote(cwd)} && {command}"
        self.bash_command = command
        self.cwd = cwd
        super().__init__(
            task_id,
            command=command,
            env=env,
            skip_on_exit_code=skip_on_exit_code,
            # Airflow pushes the last line of output as the task's XCom by default.
            push_result=bool(do_xcom_push),
            **settings,
        )
        for ref in pulled:
            ref >> self

    template_ext_for_bash = (".sh", ".bash")

    @classmethod
    def mapped_fields(cls) -> dict[str, str] | None:
        return {"bash_command": "command", "env": "env"}

    @classmethod
    def required_fields(cls, fixed: dict[str, Any]) -> list[str]:
        return [] if "bash_command" in fixed else ["bash_command"]

    @classmethod
    def placeholders(cls, names: list[str], fixed: dict[str, Any]) -> dict[str, Any]:
        return {"bash_command": "mapped"} if "bash_command" in names else {}

    def clear_placeholders(self, names: list[str]) -> None:
        if "bash_command" in names:
            self.command = self.bash_command = ""

    @classmethod
    def mapped_item(cls, name: str, value: Any, fixed: dict[str, Any]) -> Any:
        if name != "bash_command" or not isinstance(value, str):
            return value
        command = _template_file(value, cls.template_ext_for_bash)
        cwd = fixed.get("cwd")
        return f"cd {shlex.quote(cwd)} && {command}" if cwd else command

    @classmethod
    def check_mapped_ref(cls, name: str, fixed: dict[str, Any]) -> None:
        if name == "bash_command" and fixed.get("cwd"):
            raise problems.unsupported(
                "cwd with bash_command mapped over a task's result",
                "give the commands as a literal list, or `cd` inside each command",
            )


def _pulled(value: Any, refs: list[TaskRef]) -> Any:
    """A task's result in a templated field (`bash_command=t.output`) as the template
    pulling it when the field is rendered; the task is added to `refs` (upstream)."""
    if not isinstance(value, TaskRef):
        return value
    refs.append(value)
    item = getattr(value, "item", None)
    pull = f"ti.xcom_pull(task_ids={value.task_id!r})"
    return "{{ " + (pull if item is None else f"{pull}[{item!r}]") + " }}"


def _template_file(command: str, extensions: Sequence[str]) -> str:
    """Airflow reads a `bash_command` ending in `.sh` from a file next to the DAG file
    (a trailing space opts out): so does this, when the DAG file is imported."""
    if not isinstance(command, str) or not command.endswith(tuple(extensions)):
        return command
    filename, _ = problems.location()
    folder = os.path.dirname(os.path.abspath(filename)) if filename else os.getcwd()
    path = os.path.join(folder, command)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        raise problems.unsupported(
            "bash_command template file",
            f"{command!r} ends in .sh, so Airflow reads it as a template file, but "
            f"{path} cannot be read (add a trailing space to run it as a command)",
        ) from None


class EmptyOperator(OperatorMixin, Empty):
    def __init__(self, *, task_id: str, **kwargs: Any) -> None:
        super().__init__(task_id, **arguments.task_settings(_defaults(kwargs)))


DummyOperator = EmptyOperator


def _refs(args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, ArgRef]:
    """Task results passed to an operator, as the worker's argument references."""
    refs: dict[str, ArgRef] = {}
    for i, value in enumerate(args):
        if isinstance(value, TaskRef):
            refs[f"op_args_{i}"] = {"ref": value.task_id}
    for key, value in kwargs.items():
        if isinstance(value, TaskRef):
            refs[f"op_kwargs_{key}"] = {"ref": value.task_id}
    return refs


class _PythonOperatorBase(OperatorMixin, PythonTask):
    """A Python task whose worker-side function is built by the operator."""

    def _register(
        self,
        task_id: str,
        function: Callable[..., Any],
        refs: dict[str, ArgRef],
        kwargs: dict[str, Any],
        *,
        mode: PythonMode | None = None,
        ignore_downstream_trigger_rules: bool = True,
        sensor: SensorSettings | None = None,
    ) -> None:
        self.do_xcom_push = bool(kwargs.get("do_xcom_push", True))
        settings = arguments.task_settings(_defaults(kwargs))
        dag = settings.pop("dag", None)
        token = None
        if dag is not None and dag_mod.current_dag() is not dag:
            token = dag_mod._current.set((*dag_mod._current.get(), dag))
        try:
            PythonTask.__init__(
                self,
                task_id,
                function,
                [],
                refs,
                settings,
                mode=mode,
                ignore_downstream_trigger_rules=ignore_downstream_trigger_rules,
                sensor=sensor,
            )
        finally:
            if token is not None:
                dag_mod._current.reset(token)
        for ref in refs.values():
            self.dag.get_task(ref["ref"]) >> self


class PythonOperator(_PythonOperatorBase):
    template_fields: Sequence[str] = ("templates_dict", "callable_args", "callable_kwargs")
    _mode: PythonMode | None = None

    def __init__(
        self,
        *,
        task_id: str,
        python_callable: Callable[..., Any],
        op_args: Sequence[Any] | None = None,
        op_kwargs: dict[str, Any] | None = None,
        templates_dict: dict[str, Any] | None = None,
        templates_exts: Sequence[str] | None = None,
        ignore_downstream_trigger_rules: bool = True,
        **kwargs: Any,
    ) -> None:
        if not callable(python_callable):
            raise dag_mod.definition_error(
                f"task {task_id!r}: python_callable must be callable, got {python_callable!r}"
            )
        self.python_callable = python_callable
        # Not `op_args`/`op_kwargs`: those are the Python task's argument references.
        self.callable_args = list(op_args or [])
        self.callable_kwargs = dict(op_kwargs or {})
        self.templates_dict = templates_dict
        refs = _refs(self.callable_args, self.callable_kwargs)
        self._register(
            task_id,
            self._run,
            refs,
            kwargs,
            mode=self._mode,
            ignore_downstream_trigger_rules=ignore_downstream_trigger_rules,
        )

    @classmethod
    def mapped_fields(cls) -> dict[str, str] | None:
        return {"op_args": "op_args", "op_kwargs": "op_kwargs"}

    def _run(self, **resolved: Any) -> Any:
        """In the worker: upstream results in, templates rendered, the callable called."""
        if "op_args" in resolved or "op_kwargs" in resolved:  # a mapped instance's own
            return self._run_mapped(resolved.pop("op_args", None), resolved.pop("op_kwargs", None))
        args = [
            pick(resolved[f"op_args_{i}"], getattr(v, "item", None))
            if isinstance(v, TaskRef)
            else v
            for i, v in enumerate(self.callable_args)
        ]
        kwargs = {
            k: pick(resolved[f"op_kwargs_{k}"], getattr(v, "item", None))
            if isinstance(v, TaskRef)
            else v
            for k, v in self.callable_kwargs.items()
        }
        return self._call(args, kwargs)

    def _run_mapped(self, args: Any, kwargs: Any) -> Any:
        if args is not None and not isinstance(args, list):
            raise TypeError(f"a mapped op_args item must be a list, got {args!r}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"a mapped op_kwargs item must be a dict, got {kwargs!r}")
        return self._call(
            list(self.callable_args if args is None else args),
            {**self.callable_kwargs, **(kwargs or {})},
        )

    def _call(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        context = runtime.airflow_context(task=self)
        args, kwargs = (
            runtime.resolve_params(args, context),
            runtime.resolve_params(kwargs, context),
        )
        render = runtime.render_value
        args = render(args, context, task_id=self.task_id, field="op_args")
        kwargs = render(kwargs, context, task_id=self.task_id, field="op_kwargs")
        if self.templates_dict is not None:
            context["templates_dict"] = render(
                self.templates_dict, context, task_id=self.task_id, field="templates_dict"
            )
        result = runtime.call_with_context(self.python_callable, args, kwargs, context)
        return result if self.do_xcom_push or self._mode is not None else None


class BranchPythonOperator(PythonOperator):
    _mode: PythonMode | None = "branch"


class ShortCircuitOperator(PythonOperator):
    _mode: PythonMode | None = "short_circuit"


class BaseOperator(_PythonOperatorBase):
    """Subclass it and write `execute(self, context)`: it runs in the worker as a Python
    task, with the attributes named in `template_fields` rendered first."""

    _mode: PythonMode | None = None  # "branch": `BaseBranchOperator`

    def __init__(self, *, task_id: str, **kwargs: Any) -> None:
        self._register(task_id, self._run, {}, kwargs, mode=self._mode)

    def execute(self, context: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement execute(self, context)")

    def pre_execute(self, context: Any) -> None:
        """Called before `execute` (Airflow's hook)."""

    def post_execute(self, context: Any, result: Any = None) -> None:
        """Called after `execute` (Airflow's hook)."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        # `self.values = values` where `values` is a task's result (`op.output`): that
        # task runs first, and the field is its result when rendered (Airflow's rule).
        if isinstance(value, TaskRef) and name in self.template_fields and "dag" in vars(self):
            value >> self

    def render_template_fields(self, context: Any) -> None:
        """Each of `template_fields` rendered; a string ending in one of `template_ext`
        is read from that file (next to the DAG file) first, as Airflow does. A field
        holding a task's result (`op.output`) becomes that result."""
        folder = os.path.dirname(os.path.abspath(self.dag.filename or "."))
        for name in self.template_fields:
            value = getattr(self, name, None)
            if isinstance(value, TaskRef):
                pulled = context["ti"].xcom_pull(task_ids=value.task_id)
                setattr(self, name, pick(pulled, getattr(value, "item", None)))
                continue
            if (
                isinstance(value, str)
                and self.template_ext
                and value.endswith(tuple(self.template_ext))
            ):
                with open(os.path.join(folder, value), encoding="utf-8") as fh:
                    value = fh.read()
            setattr(
                self,
                name,
                runtime.render_value(value, context, task_id=self.task_id, field=name),
            )

    @classmethod
    def mapped_fields(cls) -> dict[str, str] | None:
        return None  # any constructor argument

    @classmethod
    def placeholders(cls, names: list[str], fixed: dict[str, Any]) -> dict[str, Any]:
        return dict.fromkeys(names)

    def _run(self, **mapped: Any) -> Any:
        # A mapped instance: its arguments set as the constructor would have stored them
        # (the constructor itself ran once, with placeholders, when the DAG was defined).
        for name, value in mapped.items():
            setattr(self, name, value)
        context = runtime.airflow_context(task=self)
        self.render_template_fields(context)
        self.pre_execute(context)
        result = self.execute(context)
        self.post_execute(context, result)
        return result if self.do_xcom_push or self._mode is not None else None


def chain(*tasks: Any) -> None:
    """`chain(a, [b, c], d)`: a >> b, a >> c, b >> d, c >> d; two adjacent lists must have
    the same length and are linked pairwise (Airflow's rule)."""
    for up, down in itertools.pairwise(tasks):
        up_list = isinstance(up, list | tuple)
        down_list = isinstance(down, list | tuple)
        if up_list and down_list:
            if len(up) != len(down):
                raise dag_mod.definition_error(
                    f"chain: adjacent lists must have the same length, got {len(up)} and "
                    f"{len(down)}"
                )
            for a, b in zip(up, down, strict=True):
                a >> b
        elif up_list:
            for a in up:
                a >> down
        else:
            up >> down


def cross_downstream(from_tasks: Sequence[Any], to_tasks: Any) -> None:
    """Every task of `from_tasks` upstream of every task of `to_tasks`."""
    for task in from_tasks:
        task >> to_tasks


def chain_linear(*elements: Any) -> None:
    """Every task of each element upstream of every task of the next."""
    for up, down in itertools.pairwise(elements):
        for a in up if isinstance(up, list | tuple) else [up]:
            a >> down
