"""The definition side of mapping: `.partial(...)`, `.expand(...)`, `.expand_kwargs(...)`.

`@task` functions get `expand`, `partial` and `expand_kwargs` (`TaskFunction` calls
`expansion_for_function`); Bash and Pod tasks get `Bash.partial(task_id, ...)` returning
a `PartialTask`. Everything given is checked here, at definition time, so a mistake is a
`DagDefinitionError` naming the DAG file and line: unknown or doubled names, values that
are neither a list nor an upstream `@task` result, items a field cannot take, and
literal lists longer than `MINIFLOW_MAX_MAP_LENGTH`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from miniflow.authoring.dag import definition_error
from miniflow.authoring.mapping import (
    MAPPABLE,
    MapError,
    check_value,
    max_map_length,
    missing_field,
    too_long,
)
from miniflow.authoring.serialized import ArgRef, Expansion

if TYPE_CHECKING:
    from miniflow.authoring.tasks import BaseTask


def _limit() -> int:
    try:
        return max_map_length()
    except MapError as exc:
        raise definition_error(str(exc)) from None


def _ref_id(value: object) -> str | None:
    from miniflow.authoring.taskflow import TaskRef

    return value.task_id if isinstance(value, TaskRef) else None


def nested_ref(value: object) -> str | None:
    """The id of a task whose result sits in `value` or anywhere inside it (lists, dicts)."""
    if (ref := _ref_id(value)) is not None:
        return ref
    if isinstance(value, list | tuple | dict):
        inside = value.values() if isinstance(value, dict) else value
        return next((r for v in inside if (r := nested_ref(v)) is not None), None)
    return None


def _json(value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise definition_error(f"{what} must be JSON-serializable: {exc}") from None


def mapped_arg(value: object, name: str, task_id: str, kind: str) -> ArgRef:
    """One argument of `.expand(name=value)`: a literal list or an upstream's result."""
    ref = _ref_id(value)
    if ref is not None:
        return {"ref": ref}
    if isinstance(value, str | bytes | dict) or not isinstance(value, list | tuple):
        raise definition_error(
            f"task {task_id!r}: expand({name}=...) needs a list or the result of a @task "
            f"returning a list, got {value!r}"
        )
    items = list(value)
    if (inner := nested_ref(items)) is not None:
        raise definition_error(
            f"task {task_id!r}: expand({name}=...) holds the result of {inner!r}: a task's "
            f"result is mapped over as a whole (expand({name}=that_task())), not from inside a list"
        )
    _json(items, f"task {task_id!r}: expand({name}=...)")
    for i, item in enumerate(items):
        problem = check_value(kind, name, item)
        if problem is not None:
            raise definition_error(f"task {task_id!r}: expand({name}=...) item {i}: {problem}")
    return {"value": items}


def product_expansion(mapped: dict[str, Any], task_id: str, kind: str) -> Expansion:
    """The `Expansion` of `.expand(**mapped)`, checked."""
    if not mapped:
        raise definition_error(f"task {task_id!r}: expand() needs at least one argument to map")
    args = {name: mapped_arg(value, name, task_id, kind) for name, value in mapped.items()}
    length = 1
    for arg in args.values():
        length *= len(arg["value"]) if "value" in arg else 1
    limit = _limit()
    if length > limit:
        raise definition_error(str(too_long(task_id, f"expand({', '.join(args)})", length, limit)))
    return {"mode": "product", "args": args}


def kwargs_expansion(source: object, task_id: str, kind: str) -> Expansion:
    """The `Expansion` of `.expand_kwargs(source)`, checked."""
    ref = _ref_id(source)
    if ref is not None:
        return {"mode": "kwargs", "source": {"ref": ref}}
    if isinstance(source, str | bytes | dict) or not isinstance(source, list | tuple):
        raise definition_error(
            f"task {task_id!r}: expand_kwargs needs a list of dicts or the result of a @task "
            f"returning one, got {source!r}"
        )
    items = list(source)
    for i, item in enumerate(items):
        for name, value in item.items() if isinstance(item, dict) else ():
            if nested_ref(value) is not None:
                raise definition_error(
                    f"task {task_id!r}: expand_kwargs item {i}: {name} holds a task result; "
                    "pass the whole list as one task's result instead"
                )
    _json(items, f"task {task_id!r}: expand_kwargs")
    limit = _limit()
    if len(items) > limit:
        raise definition_error(str(too_long(task_id, "expand_kwargs", len(items), limit)))
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(k, str) for k in item):
            raise definition_error(
                f"task {task_id!r}: expand_kwargs item {i} must be a dict of names to values, "
                f"got {item!r}"
            )
        for name, value in item.items():
            problem = check_value(kind, name, value)
            if problem is not None:
                raise definition_error(f"task {task_id!r}: expand_kwargs item {i}: {problem}")
    return {"mode": "kwargs", "source": {"value": items}}


def refs_of(expansion: Expansion) -> list[str]:
    refs = (
        [expansion["source"]] if "source" in expansion else list(expansion.get("args", {}).values())
    )
    return [r["ref"] for r in refs if "ref" in r]


class PartialTask:
    """`Bash.partial(task_id, **fixed)` / `Pod.partial(...)`: a task waiting for `.expand`.

    Everything given here is the same for every mapped instance; `.expand(name=[...])`
    varies the mappable fields (Bash: command, env; Pod: image, command, args, env).
    """

    def __init__(self, cls: type[BaseTask], task_id: str, fixed: dict[str, Any]) -> None:
        self.cls = cls
        self.task_id = task_id
        self.fixed = fixed

    def __repr__(self) -> str:
        return f"<{self.cls.__name__}.partial {self.task_id}>"

    def _check_names(self, names: list[str]) -> None:
        kind = self.cls.kind
        for name in names:
            if name not in MAPPABLE[kind]:
                raise definition_error(
                    f"task {self.task_id!r}: {name!r} cannot be mapped on a "
                    f"{self.cls.__name__} task; mappable: {', '.join(MAPPABLE[kind])}"
                )
            if name in self.fixed:
                raise definition_error(
                    f"task {self.task_id!r}: {name!r} is given to both partial() and expand()"
                )

    def _create(self, names: list[str], expansion: Expansion) -> BaseTask:
        placeholders: dict[str, Any] = {}
        if "command" in names and self.cls.kind == "bash":
            placeholders["command"] = "mapped"
        if "image" in names:
            placeholders["image"] = "mapped"
        task = self.cls(self.task_id, **self.fixed, **placeholders)
        for name in placeholders:
            setattr(task, name, "")  # never used: each instance brings its own
        task.expansion = expansion
        for ref in refs_of(expansion):
            task.dag.get_task(ref) >> task
        return task

    def expand(self, **mapped: Any) -> BaseTask:
        """One task instance per combination of the given lists (literal, or an upstream
        `@task`'s result)."""
        self._check_names(list(mapped))
        expansion = product_expansion(mapped, self.task_id, self.cls.kind)
        return self._create(list(mapped), expansion)

    def expand_kwargs(self, source: Any) -> BaseTask:
        """One task instance per dict of `source` (a literal list, or an upstream `@task`'s
        result), each dict naming the fields it sets."""
        expansion = kwargs_expansion(source, self.task_id, self.cls.kind)
        names = sorted({k for item in expansion["source"].get("value", []) for k in item})
        self._check_names(names)
        for i, item in enumerate(expansion["source"].get("value", [])):
            missing = missing_field(self.cls.kind, self.fixed, item)
            if missing is not None:
                raise definition_error(
                    f"task {self.task_id!r}: expand_kwargs item {i} gives no {missing} "
                    "(nor does partial())"
                )
        if "ref" in expansion["source"] and self.cls.kind == "bash" and "command" not in self.fixed:
            names.append("command")  # each dict brings it (checked when expanded)
        if "ref" in expansion["source"] and self.cls.kind == "pod" and "image" not in self.fixed:
            names.append("image")
        return self._create(names, expansion)
