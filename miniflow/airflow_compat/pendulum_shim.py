"""A minimal `pendulum` for Airflow DAG files, served only where pendulum is not installed.

Airflow DAG files build their dates with `pendulum.datetime(2024, 1, 1, tz="UTC")`;
these return standard aware `datetime` / `timedelta` objects (no pendulum methods).
"""

from __future__ import annotations

from datetime import UTC, date, time, timedelta, tzinfo
from datetime import datetime as _datetime
from typing import Any
from zoneinfo import ZoneInfo

DateTime = _datetime
Date = date
Time = time
Duration = timedelta
UTC_ZONE = ZoneInfo("UTC")


def timezone(name: str | tzinfo) -> tzinfo:
    return ZoneInfo(name) if isinstance(name, str) else name


def _tz(tz: Any) -> tzinfo:
    return UTC_ZONE if tz is None else timezone(tz)


def datetime(
    year: int, month: int = 1, day: int = 1, hour: int = 0, minute: int = 0, second: int = 0,
    microsecond: int = 0, tz: Any = "UTC", **_: Any,
) -> _datetime:  # fmt: skip
    return _datetime(year, month, day, hour, minute, second, microsecond, tzinfo=_tz(tz))


def duration(**kwargs: Any) -> timedelta:
    weeks = kwargs.pop("weeks", 0)
    return timedelta(weeks=weeks, **kwargs)


def now(tz: Any = "UTC") -> _datetime:
    return _datetime.now(_tz(tz))


def today(tz: Any = "UTC") -> _datetime:
    return now(tz).replace(hour=0, minute=0, second=0, microsecond=0)


def yesterday(tz: Any = "UTC") -> _datetime:
    return today(tz) - timedelta(days=1)


def parse(text: str, tz: Any = "UTC", **_: Any) -> _datetime:
    value = _datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=_tz(tz))


def instance(value: _datetime, tz: Any = "UTC") -> _datetime:
    return value if value.tzinfo else value.replace(tzinfo=_tz(tz))


__all__ = ["UTC", "DateTime", "Duration", "datetime", "duration", "now", "parse", "timezone"]
