"""Airflow's sensor operators as miniflow sensors (`@task.sensor`'s machinery).

A `BaseSensorOperator` is a Python task in "sensor" mode: the worker calls its
`poke(context)` once per poke, `poke_interval` seconds apart, until it returns
something truthy (or `PokeReturnValue(True, value)`), or `timeout` seconds after the
first poke, when the task fails without a retry, or is skipped with `soft_fail=True`.
`mode="poke"` and `mode="reschedule"` are miniflow's modes of the same name.

| Airflow | here |
|---|---|
| a `BaseSensorOperator` subclass | its `poke(self, context)`, `template_fields` rendered |
| `PythonSensor(python_callable, op_args, op_kwargs, templates_dict)` | the callable per poke |
| `BashSensor(bash_command, env, cwd)` | done when the command exits 0 |
| `FileSensor(filepath, recursive)` | done when the path (a glob) matches a file |
| `TimeDeltaSensor(delta)` | done at `data_interval_end + delta` |
| `TimeSensor(target_time)`, `DateTimeSensor(target_time)` | done once that time has come |
"""

from __future__ import annotations

import glob
import os
import subprocess
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from miniflow.airflow_compat import problems, runtime
from miniflow.airflow_compat.operators import BaseOperator
from miniflow.authoring.sensor import (
    DEFAULT_POKE_INTERVAL,
    DEFAULT_TIMEOUT,
    SensorResult,
    sensor_settings,
)
from miniflow.authoring.taskflow import TaskRef
from miniflow.errors import FailTask, SkipTask


class BaseSensorOperator(BaseOperator):
    """Subclass it and write `poke(self, context)`; see the module's docstring."""

    def __init__(
        self,
        *,
        task_id: str,
        poke_interval: float | timedelta = DEFAULT_POKE_INTERVAL,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        mode: str = "poke",
        soft_fail: bool = False,
        exponential_backoff: bool = False,
        max_wait: Any = None,
        silent_fail: bool = False,
        never_fail: bool = False,
        **kwargs: Any,
    ) -> None:
        if exponential_backoff:
            problems.warn(
                "exponential_backoff", "a miniflow sensor pokes every poke_interval seconds"
            )
        self.poke_interval = poke_interval
        self.timeout = timeout
        self.soft_fail = soft_fail
        self.silent_fail = silent_fail
        self.never_fail = never_fail
        self._rendered = False
        settings = sensor_settings(
            f"sensor {task_id!r}",
            poke_interval=poke_interval,
            timeout=timeout,
            mode=mode,
            soft_fail=soft_fail,
        )
        self._register(task_id, self._poke_once, {}, kwargs, mode="sensor", sensor=settings)

    def poke(self, context: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement poke(self, context)")

    def execute(self, context: Any) -> Any:
        return self.poke(context)

    def _poke_once(self, **mapped: Any) -> SensorResult:
        """One poke, in the worker: done or not yet (miniflow's `SensorResult`)."""
        context = runtime.airflow_context(task=self)
        if not self._rendered:  # a "poke" mode try pokes the same object again
            for name, value in mapped.items():
                setattr(self, name, value)
            self.render_template_fields(context)
            self._rendered = True
        try:
            returned = self.poke(context)
        except (SkipTask, FailTask):
            raise
        except Exception as exc:
            if self.never_fail:
                raise SkipTask(f"never_fail: the poke raised {exc!r}") from exc
            if self.silent_fail:
                self.log.error("poke raised %r (silent_fail: poking on)", exc)
                return SensorResult(False)
            raise
        if isinstance(returned, SensorResult):
            return returned
        # A plain truthy poke is done with no result, as in Airflow (no XCom).
        return SensorResult(bool(returned), None)


def _no_refs(task_id: str, values: Sequence[Any]) -> None:
    if any(isinstance(v, TaskRef) for v in values):
        raise problems.unsupported(
            "a task's result as a sensor argument",
            f"sensor {task_id!r}: pull it inside the callable with "
            "ti.xcom_pull(task_ids=...) instead",
        )


class PythonSensor(BaseSensorOperator):
    template_fields: Sequence[str] = ("templates_dict", "callable_args", "callable_kwargs")

    def __init__(
        self,
        *,
        task_id: str,
        python_callable: Callable[..., Any],
        op_args: Sequence[Any] | None = None,
        op_kwargs: dict[str, Any] | None = None,
        templates_dict: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.python_callable = python_callable
        # Not `op_args`/`op_kwargs`: those are the Python task's argument references.
        self.callable_args = list(op_args or [])
        self.callable_kwargs = dict(op_kwargs or {})
        self.templates_dict = templates_dict
        _no_refs(task_id, [*self.callable_args, *self.callable_kwargs.values()])
        super().__init__(task_id=task_id, **kwargs)

    def poke(self, context: Any) -> Any:
        context["templates_dict"] = self.templates_dict
        return runtime.call_with_context(
            self.python_callable, self.callable_args, self.callable_kwargs, context
        )


class BashSensor(BaseSensorOperator):
    template_fields: Sequence[str] = ("bash_command", "env", "cwd")

    def __init__(
        self,
        *,
        task_id: str,
        bash_command: str,
        env: dict[str, str] | None = None,
        output_encoding: str = "utf-8",
        retry_exit_code: int | None = None,
        cwd: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.bash_command = bash_command
        self.env = env
        self.cwd = cwd
        self.retry_exit_code = retry_exit_code
        super().__init__(task_id=task_id, **kwargs)

    def poke(self, context: Any) -> bool:
        env = self.env if self.env is not None else dict(os.environ)
        env = {k: v for k, v in env.items() if k != "MINIFLOW_DATABASE_URL"}
        code = subprocess.run(
            ["bash", "-c", self.bash_command], env=env, cwd=self.cwd, check=False
        ).returncode
        if code == 0:
            return True
        if self.retry_exit_code is None or code == self.retry_exit_code:
            return False  # Airflow: any non-zero code pokes again unless retry_exit_code
        raise RuntimeError(f"bash command exited with code {code}")


class FileSensor(BaseSensorOperator):
    template_fields: Sequence[str] = ("filepath",)

    def __init__(
        self,
        *,
        task_id: str,
        filepath: str,
        fs_conn_id: str = "fs_default",
        recursive: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("deferrable"):
            raise problems.unsupported("deferrable")
        self.filepath = filepath
        self.fs_conn_id = fs_conn_id
        self.recursive = recursive
        super().__init__(task_id=task_id, **kwargs)

    def _base_path(self) -> str:
        """The `path` extra of the `fs_conn_id` connection ("" when there is none)."""
        from miniflow.authoring import lookups

        try:
            extra = lookups.get_connection(self.fs_conn_id).extra_dejson
        except lookups.NotDefined:
            return ""
        return str(extra.get("path", "")) if isinstance(extra, dict) else ""

    def poke(self, context: Any) -> bool:
        path = os.path.join(self._base_path(), self.filepath)
        for found in glob.glob(path, recursive=self.recursive):
            if os.path.isfile(found):
                return True
            if os.path.isdir(found):
                for _, _, files in os.walk(found):
                    if files:
                        return True
        return False


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class TimeDeltaSensor(BaseSensorOperator):
    """Done at the run's `data_interval_end` plus `delta`."""

    def __init__(self, *, task_id: str, delta: timedelta, **kwargs: Any) -> None:
        if kwargs.pop("deferrable", False):
            raise problems.unsupported("deferrable")
        self.delta = delta
        super().__init__(task_id=task_id, **kwargs)

    def poke(self, context: Any) -> bool:
        base = context.get("data_interval_end") or context["logical_date"]
        return datetime.now(UTC) >= _aware(base) + self.delta


class TimeSensor(BaseSensorOperator):
    """Done once the time of day `target_time` (UTC unless it says) has come today."""

    def __init__(self, *, task_id: str, target_time: time, **kwargs: Any) -> None:
        if kwargs.pop("deferrable", False):
            raise problems.unsupported("deferrable")
        self.target_time = target_time
        super().__init__(task_id=task_id, **kwargs)

    def poke(self, context: Any) -> bool:
        day: date = datetime.now(self.target_time.tzinfo or UTC).date()
        target = datetime.combine(day, self.target_time)
        return datetime.now(UTC) >= _aware(target)


class DateTimeSensor(BaseSensorOperator):
    """Done once `target_time` (a datetime, or a template rendering an ISO date-time)
    has come."""

    template_fields: Sequence[str] = ("target_time",)

    def __init__(self, *, task_id: str, target_time: str | datetime, **kwargs: Any) -> None:
        if kwargs.pop("deferrable", False):
            raise problems.unsupported("deferrable")
        self.target_time = target_time
        super().__init__(task_id=task_id, **kwargs)

    def poke(self, context: Any) -> bool:
        target = self.target_time
        if isinstance(target, str):
            target = datetime.fromisoformat(target.strip())
        return datetime.now(UTC) >= _aware(target)


EXPORTS: dict[str, Any] = {
    "BaseSensorOperator": BaseSensorOperator,
    "PythonSensor": PythonSensor,
    "BashSensor": BashSensor,
    "FileSensor": FileSensor,
    "TimeDeltaSensor": TimeDeltaSensor,
    "TimeSensor": TimeSensor,
    "DateTimeSensor": DateTimeSensor,
}
