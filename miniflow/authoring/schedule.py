"""Cron schedules, data intervals and catchup: pure functions of time.

Why this module exists: deciding *which* interval the next scheduled run covers
is the one piece of scheduling logic that must be exactly right across DST
changes, unaligned start dates, catchup on/off and end dates; keeping it free
of I/O lets it be tested with a big table and property tests.

Semantics (Airflow's): a run for the data interval [a, b) happens at b and its
``logical_date`` is a. ``@once`` is the single interval [start_date,
start_date], due at start_date. No run has a logical_date after end_date.

Cron strings are evaluated on wall-clock time in the DAG's timezone and every
result is converted to UTC:

* a wall time that does not exist (spring forward) is shifted forward by the
  gap, so "30 2 * * *" still runs exactly once that day;
* a wall time that occurs twice (fall back) runs once (the first occurrence),
  except for crons whose hour field covers every hour ("*/15 * * * *",
  "0 * * * *"): those run in each real hour, both occurrences included.

This module must never read the clock, touch the database or import the
scheduler: "now" is always an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from miniflow.authoring.serialized import SerializedDag


@cache
def _croniter() -> Any:  # the croniter class (the package has no type hints)
    """croniter, imported when a cron expression is first evaluated: its import runs
    `platform.architecture()`, which starts the `file` command on the interpreter (a
    fork of this process, ~6 ms), in every process that imports it. A process that
    evaluates no cron expression never pays for it: a command triggering a DAG without
    a schedule, the parse of a DAG whose schedule is a preset, a scheduler whose DAGs
    have no schedule or `@once` (the other presets are cron expressions to it)."""
    from croniter import croniter

    return croniter


PRESETS: dict[str, str | None] = {
    "@once": None,
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
}

# Larger than any UTC-offset change of a real timezone (the largest is 2 h):
# wall times further than this from an instant can never map across it.
_WINDOW = timedelta(hours=3)
_MAX_SCAN = 2000


def validate_schedule(schedule: str | None) -> None:
    """Raise ValueError with a clear message if `schedule` is not usable."""
    if schedule is None or schedule in PRESETS:
        return
    if not isinstance(schedule, str):
        raise ValueError(
            f"schedule must be a cron string or a preset, not {type(schedule).__name__}"
        )
    if schedule.startswith("@"):
        raise ValueError(f"unknown schedule preset {schedule!r}; use one of {', '.join(PRESETS)}")
    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError(
            f"invalid cron schedule {schedule!r}: expected 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    croniter = _croniter()
    if not croniter.is_valid(schedule):
        raise ValueError(f"invalid cron schedule {schedule!r}")
    try:
        croniter(schedule, datetime(2000, 1, 1)).get_next(datetime)
    except ValueError as exc:  # CroniterBadDateError: e.g. "0 0 31 2 *"
        raise ValueError(f"cron schedule {schedule!r} never fires") from exc


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}") from exc


def _aware_utc(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class DataInterval:
    """The span of data a run covers: [start, end), both aware UTC datetimes."""

    start: datetime
    end: datetime


class _Cron:
    """The set of fire instants (UTC) of a 5-field cron in a timezone."""

    def __init__(self, expression: str, tz: ZoneInfo) -> None:
        self.expression = expression
        self.tz = tz
        hours = _croniter()(expression).expanded[1]
        every_hour = "*" in hours or len(set(hours)) >= 24
        self.folds: tuple[int, ...] = (0, 1) if every_hour else (0,)

    def _wall(self, t: datetime) -> datetime:
        return t.astimezone(self.tz).replace(tzinfo=None)

    def _instants(self, wall: datetime) -> set[datetime]:
        return {wall.replace(tzinfo=self.tz, fold=f).astimezone(UTC) for f in self.folds}

    def _steady(self, t: datetime) -> bool:
        """True when the UTC offset does not change within _WINDOW of t."""
        return (t - _WINDOW).astimezone(self.tz).utcoffset() == (t + _WINDOW).astimezone(
            self.tz
        ).utcoffset()

    def after(self, t: datetime, *, inclusive: bool = False) -> datetime:
        """The first fire instant > t (>= t when inclusive)."""
        start = self._wall(t) - (timedelta(seconds=1) if inclusive else timedelta(0))
        if self._steady(t):
            wall: datetime = _croniter()(self.expression, start).get_next(datetime)
            fire: datetime = wall.replace(tzinfo=self.tz).astimezone(UTC)
            if (fire > t or (inclusive and fire == t)) and self._steady(fire):
                return fire
        # Near a DST change wall order and instant order disagree: scan every
        # wall time around t and take the smallest instant that qualifies.
        it = _croniter()(self.expression, self._wall(t - _WINDOW) - timedelta(minutes=1))
        best: tuple[datetime, datetime] | None = None
        for _ in range(_MAX_SCAN):
            wall = it.get_next(datetime)
            if best is not None and wall > best[1] + _WINDOW:
                return best[0]
            for fire in self._instants(wall):
                if (fire > t or (inclusive and fire == t)) and (best is None or fire < best[0]):
                    best = (fire, wall)
        raise ValueError(f"cron {self.expression!r}: no fire time found after {t.isoformat()}")

    def before(self, t: datetime, *, inclusive: bool = False) -> datetime:
        """The last fire instant < t (<= t when inclusive)."""
        wall_t = self._wall(t)
        start = wall_t + (timedelta(seconds=1) if inclusive else timedelta(0))
        if self._steady(t):
            wall: datetime = _croniter()(self.expression, start).get_prev(datetime)
            fire: datetime = wall.replace(tzinfo=self.tz).astimezone(UTC)
            if (fire < t or (inclusive and fire == t)) and self._steady(fire):
                return fire
        it = _croniter()(self.expression, self._wall(t + _WINDOW) + timedelta(minutes=1))
        best: tuple[datetime, datetime] | None = None
        for _ in range(_MAX_SCAN):
            wall = it.get_prev(datetime)
            if best is not None and wall < best[1] - _WINDOW:
                return best[0]
            for fire in self._instants(wall):
                if (fire < t or (inclusive and fire == t)) and (best is None or fire > best[0]):
                    best = (fire, wall)
        raise ValueError(f"cron {self.expression!r}: no fire time found before {t.isoformat()}")


class Timetable:
    """When a DAG's scheduled runs happen and which data interval each covers."""

    def __init__(
        self,
        schedule: str | None,
        timezone: str,
        start_date: datetime | None,
        end_date: datetime | None,
        catchup: bool,
    ) -> None:
        validate_schedule(schedule)
        self.schedule = schedule
        self.timezone = timezone
        self.tz = _zone(timezone)
        self.start_date = _aware_utc(start_date, "start_date")
        self.end_date = _aware_utc(end_date, "end_date")
        self.catchup = catchup
        expression = PRESETS.get(schedule, schedule) if schedule is not None else None
        self._cron = _Cron(expression, self.tz) if expression is not None else None

    @classmethod
    def from_serialized(cls, dag: SerializedDag) -> Timetable:
        """Build from a serialized DAG; naive ISO strings are read in the DAG timezone."""
        tz = _zone(dag["timezone"])

        def parse(value: str | None) -> datetime | None:
            if value is None:
                return None
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=tz)

        return cls(
            dag["schedule"],
            dag["timezone"],
            parse(dag["start_date"]),
            parse(dag["end_date"]),
            dag["catchup"],
        )

    def __repr__(self) -> str:
        return (
            f"Timetable({self.schedule!r}, {self.timezone!r}, start_date={self.start_date}, "
            f"end_date={self.end_date}, catchup={self.catchup})"
        )

    def next_scheduled(self, last: DataInterval | None, now: datetime) -> DataInterval | None:
        """The interval the next scheduled run covers, due or not; None if no more runs.

        `last` is the interval of the latest scheduled run (None: no run yet).
        A DAG without start_date has no scheduled runs.
        """
        now = _aware_utc(now, "now") or now
        if self.schedule is None or self.start_date is None:
            return None
        if self._cron is None:  # @once
            if last is not None or self._past_end(self.start_date):
                return None
            return DataInterval(self.start_date, self.start_date)
        cron = self._cron
        start = cron.after(self.start_date, inclusive=True)
        if last is not None:
            start = max(start, last.end)
        if not self.catchup:
            latest_end = cron.before(now, inclusive=True)
            start = max(start, cron.before(latest_end))
        if self._past_end(start):
            return None
        return DataInterval(start, cron.after(start))

    def manual_interval(self, logical_date: datetime) -> DataInterval:
        """Interval of a manual run: the latest complete interval ending at/before it."""
        logical_date = _aware_utc(logical_date, "logical_date") or logical_date
        if self._cron is None:
            return DataInterval(logical_date, logical_date)
        end = self._cron.before(logical_date, inclusive=True)
        return DataInterval(self._cron.before(end), end)

    @staticmethod
    def is_due(interval: DataInterval, now: datetime) -> bool:
        """A run for `interval` is due once its end has passed."""
        return interval.end <= now

    def _past_end(self, logical_date: datetime) -> bool:
        return self.end_date is not None and logical_date > self.end_date
