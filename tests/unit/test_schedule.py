"""Unit tests for miniflow.authoring.schedule: cron table, DST, catchup, end_date, @once,
properties."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miniflow.authoring.schedule import DataInterval, Timetable, validate_schedule

BERLIN = ZoneInfo("Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def intervals(tt: Timetable, now: datetime, count: int) -> list[DataInterval]:
    out: list[DataInterval] = []
    last: DataInterval | None = None
    for _ in range(count):
        nxt = tt.next_scheduled(last, now)
        if nxt is None:
            break
        out.append(nxt)
        last = nxt
    return out


@pytest.mark.parametrize(
    "schedule",
    [
        None,
        "@once",
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
        "*/5 * * * *",
        "0 9 * * 1-5",
        "30 2 1,15 * *",
        "0 0 * * SUN",
    ],
)
def test_validate_accepts(schedule: str | None) -> None:
    validate_schedule(schedule)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("@every5m", "unknown schedule preset"),
        ("@midnightly", "unknown schedule preset"),
        ("* * * *", "expected 5 fields"),
        ("0 0 * * * *", "expected 5 fields"),
        ("61 * * * *", "invalid cron"),
        ("bogus cron string x", "invalid cron"),
        ("0 0 31 2 *", "never fires"),
        ("", "expected 5 fields"),
    ],
)
def test_validate_rejects(schedule: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_schedule(schedule)


def test_constructor_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown timezone"):
        Timetable("@daily", "Mars/Olympus", utc(2026, 1, 1), None, True)
    with pytest.raises(ValueError, match="timezone-aware"):
        Timetable("@daily", "UTC", datetime(2026, 1, 1), None, True)


# (schedule, timezone, start_date, expected first three intervals as (start, end) in UTC)
CRON_CASES = [
    (
        "@daily",
        "UTC",
        utc(2026, 1, 1),
        [
            (utc(2026, 1, 1), utc(2026, 1, 2)),
            (utc(2026, 1, 2), utc(2026, 1, 3)),
            (utc(2026, 1, 3), utc(2026, 1, 4)),
        ],
    ),
    (
        "@hourly",
        "UTC",
        utc(2026, 1, 1, 10, 30),
        [
            (utc(2026, 1, 1, 11), utc(2026, 1, 1, 12)),
            (utc(2026, 1, 1, 12), utc(2026, 1, 1, 13)),
            (utc(2026, 1, 1, 13), utc(2026, 1, 1, 14)),
        ],
    ),
    (
        "*/15 * * * *",
        "UTC",
        utc(2026, 1, 1, 0, 7),
        [
            (utc(2026, 1, 1, 0, 15), utc(2026, 1, 1, 0, 30)),
            (utc(2026, 1, 1, 0, 30), utc(2026, 1, 1, 0, 45)),
            (utc(2026, 1, 1, 0, 45), utc(2026, 1, 1, 1, 0)),
        ],
    ),
    (
        "0 9 * * 1-5",
        "UTC",
        utc(2026, 1, 2),  # Friday
        [
            (utc(2026, 1, 2, 9), utc(2026, 1, 5, 9)),
            (utc(2026, 1, 5, 9), utc(2026, 1, 6, 9)),
            (utc(2026, 1, 6, 9), utc(2026, 1, 7, 9)),
        ],
    ),
    (
        "@weekly",
        "UTC",
        utc(2026, 1, 1),  # Thursday; weeks start on Sunday
        [
            (utc(2026, 1, 4), utc(2026, 1, 11)),
            (utc(2026, 1, 11), utc(2026, 1, 18)),
            (utc(2026, 1, 18), utc(2026, 1, 25)),
        ],
    ),
    (
        "@monthly",
        "UTC",
        utc(2026, 1, 15),
        [
            (utc(2026, 2, 1), utc(2026, 3, 1)),
            (utc(2026, 3, 1), utc(2026, 4, 1)),
            (utc(2026, 4, 1), utc(2026, 5, 1)),
        ],
    ),
    (
        "@yearly",
        "UTC",
        utc(2026, 1, 1),
        [
            (utc(2026, 1, 1), utc(2027, 1, 1)),
            (utc(2027, 1, 1), utc(2028, 1, 1)),
            (utc(2028, 1, 1), utc(2029, 1, 1)),
        ],
    ),
    (
        "@daily",
        "Europe/Berlin",
        datetime(2026, 1, 1, tzinfo=BERLIN),
        [
            (utc(2025, 12, 31, 23), utc(2026, 1, 1, 23)),
            (utc(2026, 1, 1, 23), utc(2026, 1, 2, 23)),
            (utc(2026, 1, 2, 23), utc(2026, 1, 3, 23)),
        ],
    ),
    (
        "30 5 * * *",
        "Asia/Kolkata",
        utc(2026, 1, 1),
        [
            (utc(2026, 1, 1), utc(2026, 1, 2)),
            (utc(2026, 1, 2), utc(2026, 1, 3)),
            (utc(2026, 1, 3), utc(2026, 1, 4)),
        ],
    ),
    (
        "0 0 1,15 * *",
        "UTC",
        utc(2026, 1, 1),
        [
            (utc(2026, 1, 1), utc(2026, 1, 15)),
            (utc(2026, 1, 15), utc(2026, 2, 1)),
            (utc(2026, 2, 1), utc(2026, 2, 15)),
        ],
    ),
]


@pytest.mark.parametrize(("schedule", "tz", "start", "expected"), CRON_CASES)
def test_cron_table(
    schedule: str, tz: str, start: datetime, expected: list[tuple[datetime, datetime]]
) -> None:
    tt = Timetable(schedule, tz, start, None, catchup=True)
    got = intervals(tt, utc(2030, 1, 1), 3)
    assert [(i.start, i.end) for i in got] == expected
    assert all(i.start.tzinfo is UTC and i.end.tzinfo is UTC for i in got)


def _daily_runs_per_local_day(schedule: str, start: datetime, days: int) -> dict[object, int]:
    tt = Timetable(schedule, "Europe/Berlin", start, None, catchup=True)
    counts: dict[object, int] = {}
    for i in intervals(tt, utc(2030, 1, 1), days):
        day = i.start.astimezone(BERLIN).date()
        counts[day] = counts.get(day, 0) + 1
    return counts


def test_dst_spring_forward_daily_0230_runs_once_per_day() -> None:
    start = datetime(2026, 3, 26, tzinfo=BERLIN)
    tt = Timetable("30 2 * * *", "Europe/Berlin", start, None, catchup=True)
    got = intervals(tt, utc(2030, 1, 1), 6)
    starts = [i.start for i in got]
    assert starts == [
        utc(2026, 3, 26, 1, 30),
        utc(2026, 3, 27, 1, 30),
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 30),  # 02:30 does not exist: shifted forward to 03:30 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST again
        utc(2026, 3, 31, 0, 30),
    ]
    counts = _daily_runs_per_local_day("30 2 * * *", start, 10)
    assert set(counts.values()) == {1}
    assert len(counts) == 10


def test_dst_autumn_daily_0230_runs_once_per_day() -> None:
    start = datetime(2026, 10, 23, tzinfo=BERLIN)
    tt = Timetable("30 2 * * *", "Europe/Berlin", start, None, catchup=True)
    starts = [i.start for i in intervals(tt, utc(2030, 1, 1), 5)]
    assert starts == [
        utc(2026, 10, 23, 0, 30),
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # first 02:30 (CEST); the repeated one does not run
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
        utc(2026, 10, 27, 1, 30),
    ]
    counts = _daily_runs_per_local_day("30 2 * * *", start, 10)
    assert set(counts.values()) == {1}


def test_dst_hourly_runs_every_real_hour() -> None:
    spring = Timetable("@hourly", "Europe/Berlin", utc(2026, 3, 28, 22), None, catchup=True)
    got = intervals(spring, utc(2030, 1, 1), 8)
    assert all(i.end - i.start == timedelta(hours=1) for i in got)
    autumn = Timetable("@hourly", "Europe/Berlin", utc(2026, 10, 24, 22), None, catchup=True)
    got = intervals(autumn, utc(2030, 1, 1), 8)
    assert all(i.end - i.start == timedelta(hours=1) for i in got)


def test_dst_midnight_daily_interval_lengths() -> None:
    tt = Timetable("@daily", "Europe/Berlin", datetime(2026, 3, 28, tzinfo=BERLIN), None, True)
    lengths = [i.end - i.start for i in intervals(tt, utc(2030, 1, 1), 3)]
    assert lengths == [timedelta(hours=24), timedelta(hours=23), timedelta(hours=24)]


def test_catchup_true_starts_at_start_date() -> None:
    tt = Timetable("@daily", "UTC", utc(2026, 1, 1), None, catchup=True)
    first = tt.next_scheduled(None, utc(2026, 1, 10, 12))
    assert first == DataInterval(utc(2026, 1, 1), utc(2026, 1, 2))
    assert len(intervals(tt, utc(2026, 1, 10, 12), 20)) == 20  # never stops: not about due


def test_catchup_false_skips_to_latest_complete_interval() -> None:
    tt = Timetable("@daily", "UTC", utc(2026, 1, 1), None, catchup=False)
    now = utc(2026, 1, 10, 12)
    first = tt.next_scheduled(None, now)
    assert first == DataInterval(utc(2026, 1, 9), utc(2026, 1, 10))
    # a DAG that was off for a week after its last run gets only the latest interval
    last = DataInterval(utc(2026, 1, 2), utc(2026, 1, 3))
    assert tt.next_scheduled(last, now) == DataInterval(utc(2026, 1, 9), utc(2026, 1, 10))
    # the next one after that is the upcoming one, not due yet
    nxt = tt.next_scheduled(first, now)
    assert nxt == DataInterval(utc(2026, 1, 10), utc(2026, 1, 11))
    assert not Timetable.is_due(nxt, now)
    # exactly at the boundary the interval ending now is complete
    assert tt.next_scheduled(None, utc(2026, 1, 10)) == first


def test_catchup_false_nothing_complete_yet_gives_first_upcoming() -> None:
    tt = Timetable("@daily", "UTC", utc(2026, 1, 5, 6), None, catchup=False)
    got = tt.next_scheduled(None, utc(2026, 1, 5, 7))
    assert got == DataInterval(utc(2026, 1, 6), utc(2026, 1, 7))


def test_end_date_stops_runs() -> None:
    tt = Timetable("@daily", "UTC", utc(2026, 1, 1), utc(2026, 1, 3), catchup=True)
    got = intervals(tt, utc(2030, 1, 1), 10)
    # logical dates 1, 2, 3 Jan; none after end_date
    assert [i.start for i in got] == [utc(2026, 1, 1), utc(2026, 1, 2), utc(2026, 1, 3)]
    tt = Timetable("@daily", "UTC", utc(2026, 1, 1), utc(2026, 1, 2, 12), catchup=False)
    assert tt.next_scheduled(None, utc(2026, 6, 1)) is None


def test_once() -> None:
    start = utc(2026, 5, 1, 8)
    tt = Timetable("@once", "UTC", start, None, catchup=True)
    first = tt.next_scheduled(None, utc(2020, 1, 1))
    assert first == DataInterval(start, start)
    assert not Timetable.is_due(first, start - timedelta(seconds=1))
    assert Timetable.is_due(first, start)
    assert tt.next_scheduled(first, utc(2030, 1, 1)) is None
    assert (
        Timetable("@once", "UTC", start, utc(2026, 4, 1), True).next_scheduled(None, start) is None
    )


def test_no_schedule_and_no_start_date() -> None:
    assert (
        Timetable(None, "UTC", utc(2026, 1, 1), None, True).next_scheduled(None, utc(2030, 1, 1))
        is None
    )
    assert (
        Timetable("@daily", "UTC", None, None, True).next_scheduled(None, utc(2030, 1, 1)) is None
    )


def test_manual_interval() -> None:
    tt = Timetable("@daily", "UTC", utc(2026, 1, 1), None, True)
    assert tt.manual_interval(utc(2026, 1, 25, 1)) == DataInterval(
        utc(2026, 1, 24), utc(2026, 1, 25)
    )
    assert tt.manual_interval(utc(2026, 1, 25)) == DataInterval(utc(2026, 1, 24), utc(2026, 1, 25))
    ld = utc(2026, 1, 25, 1, 2, 3)
    assert Timetable(None, "UTC", None, None, True).manual_interval(ld) == DataInterval(ld, ld)
    assert Timetable("@once", "UTC", ld, None, True).manual_interval(ld) == DataInterval(ld, ld)


def test_from_serialized() -> None:
    dag = {
        "schedule": "30 2 * * *",
        "timezone": "Europe/Berlin",
        "start_date": "2026-03-26T00:00:00+01:00",
        "end_date": "2026-03-27T23:00:00",  # naive: read in the DAG timezone
        "catchup": True,
    }
    tt = Timetable.from_serialized(dag)  # type: ignore[arg-type]
    assert [i.start for i in intervals(tt, utc(2030, 1, 1), 5)] == [
        utc(2026, 3, 26, 1, 30),
        utc(2026, 3, 27, 1, 30),
    ]


SCHEDULES = [
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "*/7 * * * *",
    "30 2 * * *",
    "15 1-3 * * *",
    "0 9 * * 1-5",
    "0,30 2,3 * * *",
    "45 23 28-31 * *",
]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]


@settings(max_examples=150, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    zone=st.sampled_from(ZONES),
    start=st.datetimes(
        min_value=datetime(2024, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
    ),
    catchup=st.booleans(),
)
def test_property_intervals_monotonic_contiguous(
    schedule: str, zone: str, start: datetime, catchup: bool
) -> None:
    now = start - timedelta(days=1)  # nothing complete: catchup off behaves like on
    tt = Timetable(schedule, zone, start, None, catchup)
    got = intervals(tt, now, 40)
    assert len(got) == 40
    assert got[0].start >= start
    for prev, cur in itertools.pairwise(got):
        assert prev.start < prev.end
        assert cur.start == prev.end
    # manual intervals agree with the scheduled grid
    for i in got[1:5]:
        assert tt.manual_interval(i.end) == i
        assert tt.manual_interval(i.end + timedelta(seconds=1)) == i


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("start", [utc(2026, 3, 28, 20), utc(2026, 10, 24, 20), utc(2026, 3, 7)])
def test_intervals_contiguous_across_dst(schedule: str, zone: str, start: datetime) -> None:
    tt = Timetable(schedule, zone, start, None, catchup=True)
    got = intervals(tt, start, 200)
    for prev, cur in itertools.pairwise(got):
        assert prev.start < prev.end == cur.start
        assert tt.manual_interval(cur.start) == prev


def test_croniter_is_imported_only_to_evaluate_a_cron_string() -> None:
    """Its import runs `platform.architecture()`, a `file` subprocess: importing what
    `dags trigger` and run creation run, or checking a preset, never starts it."""
    code = (
        "import sys\n"
        "import miniflow.cli.operations, miniflow.scheduler.run_creation\n"
        "from miniflow.authoring.schedule import validate_schedule\n"
        "validate_schedule('@daily')\n"
        "assert 'croniter' not in sys.modules\n"
        "validate_schedule('*/5 * * * *')\n"
        "assert 'croniter' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
