"""Sensors: `@task.sensor` functions that poke until something is there.

A sensor's function is called once per poke. A truthy return (or
`SensorResult(True, value)`) means done: the task succeeds and its result is the
value returned (`SensorResult.value` when given). A falsy return (or
`SensorResult(False)`) means "not yet": the sensor pokes again `poke_interval`
seconds later, until `timeout` seconds after its first poke; then it fails (no
retry, as Airflow's sensor timeout), or is skipped with `soft_fail=True`.
Exceptions fail the poke like any task failure (retries apply).

Modes:

- `"poke"`: one try calls the function in a loop, sleeping in between; the try
  holds its slot (and process or pod) all along. For short waits.
- `"reschedule"`: one try per poke. A "not yet" ends the try as
  `up_for_reschedule` with the time of the next poke; the scheduler launches the
  next poke then. In between, nothing runs and no limit (parallelism, pools,
  `max_active_tasks`) counts the sensor. Each poke is a try of its own in the
  task's history (its own log and attempt row); it does not use up a retry.

This module is pure (no database, no scheduler): the worker calls `poke_outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, get_args

from miniflow.authoring.dag import definition_error
from miniflow.authoring.serialized import SensorMode, SensorSettings

DEFAULT_POKE_INTERVAL = 60.0
DEFAULT_TIMEOUT = 7 * 24 * 3600.0  # Airflow's default: a week
SENSOR_MODES: tuple[str, ...] = get_args(SensorMode)


@dataclass(frozen=True, slots=True)
class SensorResult:
    """What a sensor's poke may return to say "done" with a result other than itself
    (Airflow's `PokeReturnValue(is_done, xcom_value)`): `SensorResult(True, path)`
    succeeds with `path` as the task's result; `SensorResult(False)` pokes again."""

    done: bool
    value: Any = None


def poke_outcome(returned: Any) -> tuple[bool, Any]:
    """(done, result) of one poke's return value."""
    if isinstance(returned, SensorResult):
        return bool(returned.done), returned.value
    return bool(returned), returned


def _seconds(value: Any, what: str, owner: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise definition_error(
            f"{owner}: {what} must be a number of seconds or a timedelta, got {value!r}"
        )
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise definition_error(f"{owner}: {what} must be finite, got {value!r}")
    if seconds < 0 or (positive and seconds == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise definition_error(f"{owner}: {what} must be {bound}, got {value!r}")
    return seconds


def sensor_settings(
    owner: str, *, poke_interval: Any, timeout: Any, mode: Any, soft_fail: Any
) -> SensorSettings:
    """Validated settings of a `@task.sensor`; a definition error names what is wrong."""
    if mode not in SENSOR_MODES:
        raise definition_error(
            f"{owner}: mode must be one of {', '.join(map(repr, SENSOR_MODES))}, got {mode!r}"
        )
    if not isinstance(soft_fail, bool):
        raise definition_error(f"{owner}: soft_fail must be True or False, got {soft_fail!r}")
    return {
        "poke_interval": _seconds(poke_interval, "poke_interval", owner, positive=True),
        "timeout": _seconds(timeout, "timeout", owner, positive=False),
        "mode": mode,
        "soft_fail": soft_fail,
    }
