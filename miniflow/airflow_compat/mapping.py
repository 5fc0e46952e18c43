"""Operators' dynamic task mapping: `Op.partial(task_id=..., ...).expand(...)` and
`.expand_kwargs(...)`, mapped onto miniflow's own mapped tasks.

The operator is built once from the `partial` arguments (a mapped field gets a
placeholder), then given the `Expansion` miniflow's `.expand` makes, so the scheduler
creates one task instance per item exactly as for `Bash.partial(...).expand(...)` or a
mapped `@task`:

| Airflow | mapped miniflow field |
|---|---|
| `BashOperator`: `bash_command`, `env` | Bash `command`, `env` |
| `KubernetesPodOperator`: `image`, `cmds`, `arguments`, `env_vars` | Pod `image`, `command`,
  `args`, `env` |
| `PythonOperator`: `op_args`, `op_kwargs` | the Python task's mapped arguments |
| a `BaseOperator` subclass: any constructor argument | set on the operator before `execute` |
"""

from __future__ import annotations

from typing import Any

from miniflow.airflow_compat import problems
from miniflow.authoring.dag import definition_error
from miniflow.authoring.mapped import kwargs_expansion, product_expansion, refs_of
from miniflow.authoring.serialized import Expansion
from miniflow.authoring.taskflow import TaskRef


class OperatorPartial:
    """`Op.partial(**fixed)`: an operator waiting for `.expand` / `.expand_kwargs`."""

    def __init__(self, cls: Any, fixed: dict[str, Any]) -> None:
        task_id = fixed.get("task_id")
        if not isinstance(task_id, str):
            raise definition_error(f"{cls.__name__}.partial() needs task_id=")
        self.cls = cls
        self.task_id = task_id
        self.fixed = fixed

    def __repr__(self) -> str:
        return f"<{self.cls.__name__}.partial {self.task_id}>"

    def _check(self, names: list[str]) -> None:
        mappable = self.cls.mapped_fields()
        for name in names:
            if mappable is not None and name not in mappable:
                raise definition_error(
                    f"task {self.task_id!r}: {name!r} cannot be mapped on a "
                    f"{self.cls.__name__}; mappable: {', '.join(mappable)}"
                )
            if name in self.fixed:
                raise definition_error(
                    f"task {self.task_id!r}: {name!r} is given to both partial() and expand()"
                )

    def _native(self, name: str) -> str:
        mappable = self.cls.mapped_fields()
        return name if mappable is None else mappable[name]

    def expand(self, **mapped: Any) -> Any:
        """One task instance per combination of the given lists (literal, or an upstream
        task's result)."""
        self._check(list(mapped))
        converted = {self._native(name): self._value(name, value) for name, value in mapped.items()}
        expansion = product_expansion(converted, self.task_id, self.cls.kind)
        return self._create(list(mapped), expansion)

    def expand_kwargs(self, source: Any) -> Any:
        """One task instance per dict of `source` (a literal list of dicts, or an upstream
        task's result), each naming the arguments it sets."""
        if _item_ref(source):
            raise problems.unsupported(
                "expand_kwargs over an item", "map over the whole result of a task"
            )
        if isinstance(source, TaskRef):
            needed = self.cls.required_fields(self.fixed)
            if self.cls.mapped_fields() is not None and self.cls.kind != "python":
                problems.warn(
                    "expand_kwargs",
                    "each dict must use miniflow's field names ("
                    + ", ".join(f"{k} -> {v}" for k, v in self.cls.mapped_fields().items())
                    + ") when it comes from a task's result",
                )
            expansion = kwargs_expansion(source, self.task_id, self.cls.kind)
            return self._create(needed, expansion)
        if not isinstance(source, list | tuple):
            return self._create([], kwargs_expansion(source, self.task_id, self.cls.kind))
        names: list[str] = []
        items = []
        for item in source:
            if not isinstance(item, dict):
                items.append(item)  # miniflow's check names it
                continue
            self._check(list(item))
            names.extend(n for n in item if n not in names)
            items.append({self._native(n): self._item(n, v) for n, v in item.items()})
        expansion = kwargs_expansion(items, self.task_id, self.cls.kind)
        for name in self.cls.required_fields(self.fixed):
            if name not in names:
                missing = [i for i, item in enumerate(source) if name not in item]
                if missing:
                    raise definition_error(
                        f"task {self.task_id!r}: expand_kwargs item {missing[0]} gives no "
                        f"{name} (nor does partial())"
                    )
        return self._create(names, expansion)

    def _value(self, name: str, value: Any) -> Any:
        if _item_ref(value):
            raise problems.unsupported(
                f"expand({name}=result[key])", "map over the whole result of a task"
            )
        if isinstance(value, TaskRef):
            self.cls.check_mapped_ref(name, self.fixed)
            return value
        if isinstance(value, list | tuple):
            return [self._item(name, v) for v in value]
        return value  # miniflow's check names what is wrong

    def _item(self, name: str, value: Any) -> Any:
        return self.cls.mapped_item(name, value, self.fixed)

    def _create(self, names: list[str], expansion: Expansion) -> Any:
        placeholders = self.cls.placeholders(names, self.fixed)
        task = self.cls(**self.fixed, **placeholders)
        task.clear_placeholders(list(placeholders))
        task.expansion = expansion
        for ref in refs_of(expansion):
            task.dag.get_task(ref) >> task
        return task


def _item(value: Any) -> str | None:
    return getattr(value, "item", None) if isinstance(value, TaskRef) else None


def _item_ref(value: Any) -> bool:
    return _item(value) is not None
