"""XCom: values tasks leave for others, pulled by task id and key.

A `@task`'s result is its `return_value` (kept on its task instance, as before); a task
may also push values under keys of its own (`ti.xcom_push(key, value)`), and pull any of
them (`ti.xcom_pull(task_ids="t", key=...)`), in its code and in templates
(`{{ ti.xcom_pull(task_ids='t') }}`). A Bash task with `push_result=True` leaves the last
line it prints as its result. Pure: `XComData` answers pulls from rows the caller read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RETURN_VALUE = "return_value"


class XComError(Exception):
    """A push or pull that cannot be done (a reserved key, a value that is not JSON...)."""


@dataclass(frozen=True)
class XComData:
    """The results and pushed values of (some tasks of) one run.

    `results`: (task_id, map_index) → result of the task instance (map_index -1: an
    unmapped task, or a mapped task's own row); `values`: (task_id, map_index, key) →
    pushed value.
    """

    results: Mapping[tuple[str, int], Any] = field(default_factory=dict)
    values: Mapping[tuple[str, int, str], Any] = field(default_factory=dict)

    def pull(
        self,
        task_ids: str | Iterable[str] | None,
        key: str = RETURN_VALUE,
        map_indexes: int | Iterable[int] | None = None,
        default: Any = None,
    ) -> Any:
        """One task's value (`task_ids` a string) or a list of them, one per task id.

        A mapped task's value is the list of its mapped instances' values (in map_index
        order), or one instance's with `map_indexes=N`.
        """
        if task_ids is None:
            raise XComError("xcom_pull needs task_ids: the task (or list of tasks) to pull from")
        if isinstance(task_ids, str):
            return self._one(task_ids, key, map_indexes, default)
        return [self._one(t, key, map_indexes, default) for t in task_ids]

    def _one(self, task_id: str, key: str, map_indexes: Any, default: Any) -> Any:
        if key == RETURN_VALUE:
            found = {i: v for (t, i), v in self.results.items() if t == task_id}
        else:
            found = {i: v for (t, i, k), v in self.values.items() if t == task_id and k == key}
        instances = sorted(i for i in found if i >= 0)
        if isinstance(map_indexes, int):
            return found.get(map_indexes, default)
        if map_indexes is not None:
            wanted = list(map_indexes)
            return [found.get(i, default) for i in wanted]
        if instances:
            return [found[i] for i in instances]
        return found.get(-1, default)


def check_value(value: Any, max_bytes: int, what: str) -> Any:
    """`value` as JSON will store it; `XComError` if not JSON or larger than `max_bytes`."""
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise XComError(f"{what} must be JSON-serializable: {exc}") from None
    if len(encoded.encode()) > max_bytes:
        raise XComError(
            f"{what} is {len(encoded.encode())} bytes as JSON, more than the limit "
            f"{max_bytes} (MINIFLOW_MAX_RESULT_BYTES)"
        )
    return json.loads(encoded)


def pushed_line(output: str | None) -> Any:
    """A Bash task's result from its output: the last non-empty line, as JSON if it is
    JSON, else as the string."""
    lines = [line for line in (output or "").splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1].strip()
    try:
        return json.loads(last)
    except ValueError:
        return last


class ReadOnlyXCom:
    """XCom as templates see it: pulls from values read before rendering.

    With `collect_pushes` (a Bash task's fields), a push (`{{ ti.xcom_push(key, value) }}`,
    which renders as "None", as in Airflow) is kept in `pushed` for the scheduler to store
    before it launches the try (`scheduler.claims`); otherwise a push is an error.
    """

    def __init__(self, data: XComData | None = None, *, collect_pushes: bool = False) -> None:
        self.data = data or XComData()
        self.collect_pushes = collect_pushes
        self.pushed: dict[str, Any] = {}

    def push(self, key: str, value: Any) -> None:
        if not self.collect_pushes:
            raise XComError(
                "xcom_push is not available here: in templates, only a Bash task's fields may push"
            )
        if not isinstance(key, str) or not key or key == RETURN_VALUE:
            raise XComError(
                f"xcom_push key must be a non-empty string other than {RETURN_VALUE!r}, got {key!r}"
            )
        self.pushed[key] = value

    def pull(self, task_ids: Any, key: str, map_indexes: Any, default: Any) -> Any:
        return self.data.pull(task_ids, key, map_indexes, default)


def _template_fields(task: Mapping[str, Any]) -> list[Any]:
    fields: list[Any] = [task.get("command"), *(task.get("cmds") or []), *(task.get("args") or [])]
    return fields + list(task.get("env", {}).values())


def uses_xcom(task: Mapping[str, Any]) -> bool:
    """True if a templated field of `task` (command, cmds, args, env) pulls or pushes XCom:
    only then are the run's values read before rendering."""
    return any(
        isinstance(f, str) and ("xcom_pull" in f or "xcom_push" in f)
        for f in _template_fields(task)
    )


def template_xcom(task: Mapping[str, Any], data: XComData | None) -> ReadOnlyXCom:
    """The XCom `task`'s templates see: `data` to pull from; pushes collected for a Bash
    task (whose fields may push), refused for others."""
    return ReadOnlyXCom(data, collect_pushes=task.get("kind") == "bash")
