"""The schedule in words shown next to the cron string in the UI."""

from __future__ import annotations

import pytest

from miniflow.web.schedule_text import describe


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        (None, "only when triggered"),
        ("@daily", "every day at 00:00"),
        ("@hourly", "every hour"),
        ("@once", "once"),
        ("0 3 * * *", "every day at 03:00"),
        ("30 14 * * 1-5", "every weekday at 14:30"),
        ("15 * * * *", "every hour at minute 15"),
        ("*/5 * * * *", "every 5 minutes"),
        ("0 */6 * * *", "every 6 hours at minute 0"),
        ("0 9 * * 1", "every Monday at 09:00"),
        ("0 9 * * 7", "every Sunday at 09:00"),
        ("0 0 1 * *", "on the 1st of every month at 00:00"),
        ("0 0 22 * *", "on the 22nd of every month at 00:00"),
        ("0 0 11 * *", "on the 11th of every month at 00:00"),
        # not described rather than described wrong
        ("0 0 1 1 *", None),
        ("0 0 1 * 1", None),
        ("1,2 * * * *", None),
        ("0 25 * * *", None),
        ("*/0 * * * *", None),
        ("0 0 * * MON", None),
        ("bad", None),
    ],
)
def test_describe(schedule: str | None, words: str | None) -> None:
    assert describe(schedule) == words
