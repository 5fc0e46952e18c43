"""The worker's one clock: every timestamp it writes or prints comes from `now()`.

Tz-aware UTC, always (the store rejects naive datetimes), and one place to
look when following what time a heartbeat or an outcome carries.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time, tz-aware UTC."""
    return datetime.now(UTC)


def stamp() -> str:
    """`now()` as the ISO-8601 prefix of streamed output lines (milliseconds)."""
    return now().isoformat(timespec="milliseconds")
