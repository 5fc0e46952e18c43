"""Dynamic task mapping: one task, expanded at run time into one instance per item.

`f.expand(x=[1, 2, 3])`, `f.partial(y=1).expand(x=upstream())`, `f.expand_kwargs([...])`
for `@task` functions, and `Bash.partial(...).expand(command=[...])`, `Pod.partial(...)
.expand(args=[...])` create a *mapped task*: its serialized form carries an `expand`
(`miniflow.authoring.serialized.Expansion`). When the task may run, the scheduler turns
the expansion into a list of argument dicts (`expand_values`, pure: the caller resolves
upstream results) and creates one task instance per dict, numbered by `map_index`.

This module is imported by DAG files (the definition side), the scheduler and the worker
(`apply_map_args`): it stays pure Python.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from typing import Any

from miniflow.authoring.serialized import ArgRef, Expansion, SerializedTask

DEFAULT_MAX_MAP_LENGTH = 1024
MAX_MAP_LENGTH_VARIABLE = "MINIFLOW_MAX_MAP_LENGTH"

# What `.expand` may vary per kind of task (user-facing names; `@task`: any parameter).
MAPPABLE: dict[str, tuple[str, ...]] = {
    "bash": ("command", "env"),
    "pod": ("image", "command", "args", "env"),
}


class MapError(Exception):
    """An expansion cannot be made (not a list, too long, a bad item); says which and why."""


def max_map_length(environ: Mapping[str, str] | None = None) -> int:
    """`MINIFLOW_MAX_MAP_LENGTH` (default 1024): most mapped instances of one task in a run."""
    raw = (os.environ if environ is None else environ).get(MAX_MAP_LENGTH_VARIABLE)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_MAP_LENGTH
    try:
        value = int(raw)
    except ValueError:
        raise MapError(f"{MAX_MAP_LENGTH_VARIABLE} must be an integer, got {raw!r}") from None
    if value < 1:
        raise MapError(f"{MAX_MAP_LENGTH_VARIABLE} must be at least 1, got {value}")
    return value


def too_long(task_id: str, what: str, length: int, limit: int) -> MapError:
    return MapError(
        f"task {task_id!r}: {what} gives {length} mapped instances, more than the maximum "
        f"map length {limit} ({MAX_MAP_LENGTH_VARIABLE})"
    )


def check_value(kind: str, name: str, value: Any) -> str | None:
    """Why `value` cannot be the mapped `name` of a Bash or Pod task (None: it can)."""
    if kind == "python":
        return None
    if name in ("command", "image") and not (kind == "pod" and name == "command"):
        if not isinstance(value, str) or not value.strip():
            return f"{name} must be a non-empty string, got {value!r}"
        return None
    if name == "env":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return f"env must be a dict of strings to strings, got {value!r}"
        return None
    if name in ("command", "args"):  # pod
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{name} must be a list of strings, got {value!r}"
        return None
    return f"{name!r} cannot be mapped; mappable: {', '.join(MAPPABLE.get(kind, ()))}"


def missing_field(kind: str, fixed: Mapping[str, Any], item: Mapping[str, Any]) -> str | None:
    """The field a Bash (command) or Pod (image) instance lacks: given neither by the task
    (`fixed`: its arguments, or its serialized form where a mapped field is empty) nor by
    `item`."""
    need = {"bash": "command", "pod": "image"}.get(kind)
    if need is None or fixed.get(need) or need in item:
        return None
    return need


def expand_values(
    task: SerializedTask, resolve: Callable[[ArgRef], Any], limit: int
) -> list[dict[str, Any]]:
    """The arguments of each mapped instance of `task`, in map_index order.

    `resolve` turns an `ArgRef` into its value (a literal, or an upstream task's result).
    Raises `MapError` naming the task when a value is not a list, an item is not valid for
    the field, or there would be more than `limit` instances.
    """
    expansion: Expansion = task["expand"]
    task_id = task["task_id"]
    if expansion["mode"] == "kwargs":
        source = resolve(expansion["source"])
        what = _source_name(expansion["source"])
        if not isinstance(source, list):
            raise MapError(
                f"task {task_id!r}: expand_kwargs needs a list of dicts; {what} is "
                f"{_type_name(source)}"
            )
        if len(source) > limit:
            raise too_long(task_id, f"expand_kwargs over {what}", len(source), limit)
        out = []
        for i, item in enumerate(source):
            if not isinstance(item, dict) or not all(isinstance(k, str) for k in item):
                raise MapError(
                    f"task {task_id!r}: expand_kwargs item {i} of {what} is not a "
                    f"dict of names to values: {item!r}"
                )
            _check_items(task, item, f"item {i} of {what}")
            out.append(dict(item))
        return out
    lists: dict[str, list[Any]] = {}
    length = 1
    for name, ref in expansion.get("args", {}).items():
        value = resolve(ref)
        what = _source_name(ref)
        if not isinstance(value, list):
            raise MapError(
                f"task {task_id!r}: expand({name}=...) needs a list; {what} is {_type_name(value)}"
            )
        lists[name] = value
        length *= len(value)
        if length > limit:
            raise too_long(task_id, "expand(" + ", ".join(lists) + ")", length, limit)
    combos = [
        dict(zip(lists, values, strict=True)) for values in itertools.product(*lists.values())
    ]
    for i, combo in enumerate(combos):
        _check_items(task, combo, f"mapped instance {i}")
    return combos


def _check_items(task: SerializedTask, item: dict[str, Any], where: str) -> None:
    missing = missing_field(task["kind"], task, item)
    if missing is not None:
        raise MapError(f"task {task['task_id']!r}: {where}: no {missing} (nor in partial())")
    for name, value in item.items():
        problem = check_value(task["kind"], name, value)
        if problem is not None:
            raise MapError(f"task {task['task_id']!r}: {where}: {problem}")


def _source_name(ref: ArgRef) -> str:
    return f"the result of {ref['ref']!r}" if "ref" in ref else "the literal value"


def _type_name(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__} ({str(value)[:80]})"


def upstream_refs(task: SerializedTask) -> list[str]:
    """The tasks whose results the expansion of `task` reads."""
    expansion = task.get("expand")
    if expansion is None:
        return []
    refs = (
        [expansion["source"]] if "source" in expansion else list(expansion.get("args", {}).values())
    )
    return sorted({r["ref"] for r in refs if "ref" in r})


def apply_map_args(task: SerializedTask, map_args: Mapping[str, Any] | None) -> SerializedTask:
    """`task` as one mapped instance of it runs it: Bash / Pod fields replaced by the
    instance's values (a mapped `env` is merged over the task's); `@task` arguments are
    the worker's business (`execute.resolve_arguments`)."""
    if not map_args or task["kind"] == "python":
        return task
    out: dict[str, Any] = dict(task)
    for name, value in map_args.items():
        if name == "env":
            out["env"] = {**task["env"], **value}
        elif name == "command" and task["kind"] == "pod":
            out["cmds"] = list(value)
        elif name == "args":
            out["args"] = list(value)
        else:
            out[name] = value
    return out  # type: ignore[return-value]
