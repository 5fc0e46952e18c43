"""Airflow's calendar branches and sensor, on miniflow's `@task.branch` and sensors.

| Airflow | here |
|---|---|
| `BaseBranchOperator` subclass (`choose_branch(self, context)`) | a Python task in branch mode |
| `BranchDateTimeOperator(target_lower, target_upper, ...)` | a branch on the time |
| `BranchDayOfWeekOperator(week_day, ...)` | a branch on the day of the week |
| `DayOfWeekSensor(week_day, ...)` | a sensor poking the day of the week |
| `WeekDay` | the same enum (ISO day numbers) |

Semantics are Airflow's (its providers' `operators/datetime.py`, `operators/weekday.py`,
`sensors/weekday.py`): "now" is the system clock in UTC, or the run's logical date with
`use_task_logical_date=True`; naive targets are in the DAG's timezone; a `time` target is
on now's (UTC) date, and an upper bound before the lower one moves to the next day.
`BranchDayOfWeekOperator` takes the system clock's day in the DAG's timezone,
`DayOfWeekSensor` in UTC (as Airflow does).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from miniflow.airflow_compat.operators import BaseOperator
from miniflow.airflow_compat.sensors import BaseSensorOperator
from miniflow.authoring import dag as dag_mod
from miniflow.authoring.serialized import PythonMode


def utcnow() -> datetime:
    """The system clock (UTC): the "now" of these operators unless they use the run's
    logical date. A function so tests can fix it."""
    return datetime.now(UTC)


@enum.unique
class WeekDay(enum.IntEnum):
    """Airflow's `WeekDay`: the days of the week as ISO numbers (Monday is 1)."""

    MONDAY = 1
    TUESDAY = 2
    WEDNESDAY = 3
    THURSDAY = 4
    FRIDAY = 5
    SATURDAY = 6
    SUNDAY = 7

    @classmethod
    def get_weekday_number(cls, week_day_str: str) -> WeekDay:
        """The day named `week_day_str` (its full name, any case)."""
        name = week_day_str.upper()
        if name not in cls.__members__:
            raise AttributeError(f'Invalid Week Day passed: "{week_day_str}"')
        return cls[name]

    @classmethod
    def convert(cls, day: str | WeekDay) -> int:
        return day if isinstance(day, WeekDay) else cls.get_weekday_number(day)

    @classmethod
    def validate_week_day(cls, week_day: str | WeekDay | Iterable[str | WeekDay]) -> set[int]:
        """`week_day` (a name, a `WeekDay`, or a collection of either) as ISO numbers."""
        if isinstance(week_day, WeekDay):
            return {week_day}
        if isinstance(week_day, str):
            return {cls.convert(week_day)}
        if not isinstance(week_day, Iterable):
            raise TypeError(
                f"Unsupported Type for week_day parameter: {type(week_day)}. Input should be "
                "iterable type: str, set, list, dict or Weekday enum type"
            )
        return {cls.convert(item) for item in week_day}


def _week_days(task_id: str, week_day: Any) -> set[int]:
    """`WeekDay.validate_week_day`, its error a definition error naming the task."""
    try:
        return WeekDay.validate_week_day(week_day)
    except (AttributeError, TypeError) as exc:
        raise dag_mod.definition_error(f"task {task_id!r}: week_day: {exc}") from None


def _follow(ids: str | Iterable[str]) -> str | list[str]:
    """Task ids to follow as miniflow's branch result (a string or a list)."""
    return ids if isinstance(ids, str) else list(ids)


def _logical_date_flag(kwargs: dict[str, Any], given: bool) -> bool:
    """`use_task_logical_date`, or one of Airflow 2's older names for it."""
    for old in ("use_task_execution_date", "use_task_execution_day"):
        if old in kwargs:
            given = bool(kwargs.pop(old)) or given
    return given


class BaseBranchOperator(BaseOperator):
    """Subclass it and write `choose_branch(self, context)`: the task id(s) to follow
    (miniflow's `@task.branch` result); the other direct downstream tasks are skipped."""

    _mode: PythonMode | None = "branch"

    def choose_branch(self, context: Any) -> str | Iterable[str] | None:
        raise NotImplementedError(
            f"{type(self).__name__} must implement choose_branch(self, context)"
        )

    def execute(self, context: Any) -> Any:
        chosen = self.choose_branch(context)
        return chosen if chosen is None else _follow(chosen)


def _as_target(task_id: str, name: str, value: Any) -> datetime | time | None:
    if value is None or isinstance(value, datetime | time):
        return value
    raise dag_mod.definition_error(
        f"task {task_id!r}: {name} must be a datetime, a time or None, got {value!r}"
    )


def target_times_as_dates(
    base: datetime, lower: datetime | time | None, upper: datetime | time | None
) -> tuple[datetime | None, datetime | None]:
    """The bounds as datetimes: a `time` on `base`'s date; an upper bound before the lower
    one is on the next day (Airflow's rule; two datetimes are taken as they are)."""
    if isinstance(lower, datetime) and isinstance(upper, datetime):
        return lower, upper
    if isinstance(lower, time):
        lower = datetime.combine(base.date(), lower)
    if isinstance(upper, time):
        upper = datetime.combine(base.date(), upper)
    if lower is None or upper is None:
        return lower, upper
    if _aware(upper, UTC) < _aware(lower, UTC):
        upper += timedelta(days=1)
    return lower, upper


def _aware(value: datetime, zone: Any) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=zone)


class BranchDateTimeOperator(BaseBranchOperator):
    """Follows `follow_task_ids_if_true` when now is within [target_lower, target_upper]
    (either may be None, not both), `follow_task_ids_if_false` otherwise."""

    def __init__(
        self,
        *,
        task_id: str,
        follow_task_ids_if_true: str | Iterable[str],
        follow_task_ids_if_false: str | Iterable[str],
        target_lower: datetime | time | None,
        target_upper: datetime | time | None,
        use_task_logical_date: bool = False,
        **kwargs: Any,
    ) -> None:
        self.use_task_logical_date = _logical_date_flag(kwargs, use_task_logical_date)
        if target_lower is None and target_upper is None:
            raise dag_mod.definition_error(
                f"task {task_id!r}: both target_upper and target_lower are None; at least "
                "one must be given to compare with the current datetime"
            )
        self.target_lower = _as_target(task_id, "target_lower", target_lower)
        self.target_upper = _as_target(task_id, "target_upper", target_upper)
        self.follow_task_ids_if_true = follow_task_ids_if_true
        self.follow_task_ids_if_false = follow_task_ids_if_false
        super().__init__(task_id=task_id, **kwargs)

    def choose_branch(self, context: Any) -> str | Iterable[str]:
        now = context["logical_date"] if self.use_task_logical_date else utcnow()
        now = _aware(now, UTC)
        zone = ZoneInfo(self.dag.timezone)
        lower, upper = target_times_as_dates(now, self.target_lower, self.target_upper)
        if upper is not None and _aware(upper, zone) < now:
            return self.follow_task_ids_if_false
        if lower is not None and _aware(lower, zone) > now:
            return self.follow_task_ids_if_false
        return self.follow_task_ids_if_true


class BranchDayOfWeekOperator(BaseBranchOperator):
    """Follows `follow_task_ids_if_true` on the days of `week_day`, else
    `follow_task_ids_if_false`."""

    def __init__(
        self,
        *,
        task_id: str,
        follow_task_ids_if_true: str | Iterable[str],
        follow_task_ids_if_false: str | Iterable[str],
        week_day: str | WeekDay | Iterable[str | WeekDay],
        use_task_logical_date: bool = False,
        **kwargs: Any,
    ) -> None:
        self.use_task_logical_date = _logical_date_flag(kwargs, use_task_logical_date)
        self.week_day = week_day
        self._week_day_num = _week_days(task_id, week_day)
        self.follow_task_ids_if_true = follow_task_ids_if_true
        self.follow_task_ids_if_false = follow_task_ids_if_false
        super().__init__(task_id=task_id, **kwargs)

    def choose_branch(self, context: Any) -> str | Iterable[str]:
        if self.use_task_logical_date:
            now = context["logical_date"]
        else:
            now = utcnow().astimezone(ZoneInfo(self.dag.timezone))
        if now.isoweekday() in self._week_day_num:
            return self.follow_task_ids_if_true
        return self.follow_task_ids_if_false


class DayOfWeekSensor(BaseSensorOperator):
    """Waits until a day of `week_day` (the logical date's with `use_task_logical_date`:
    then it is done at once, or never)."""

    def __init__(
        self,
        *,
        task_id: str,
        week_day: str | WeekDay | Iterable[str | WeekDay],
        use_task_logical_date: bool = False,
        **kwargs: Any,
    ) -> None:
        self.use_task_logical_date = _logical_date_flag(kwargs, use_task_logical_date)
        self.week_day = week_day
        self._week_day_num = _week_days(task_id, week_day)
        super().__init__(task_id=task_id, **kwargs)

    def poke(self, context: Any) -> bool:
        now = context["logical_date"] if self.use_task_logical_date else utcnow()
        self.log.info("Poking until weekday is in %s, today is %s", self.week_day,
                      WeekDay(now.isoweekday()).name)  # fmt: skip
        return now.isoweekday() in self._week_day_num


EXPORTS: dict[str, Any] = {
    "BaseBranchOperator": BaseBranchOperator,
    "BranchDateTimeOperator": BranchDateTimeOperator,
    "BranchDayOfWeekOperator": BranchDayOfWeekOperator,
    "DayOfWeekSensor": DayOfWeekSensor,
    "WeekDay": WeekDay,
    "target_times_as_dates": target_times_as_dates,
}
