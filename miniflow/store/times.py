"""How times are written for readers (the API, the pages, `--output json`, the findings
the sanity loop records): a module of its own so that writers of findings need not import
what the pages read with."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(value: datetime, timespec: str = "auto") -> str:
    """A time as the API, the pages and `--output json` write it: RFC 3339 in UTC with
    `Z` (what pydantic emits for the API's own models), e.g. 2026-01-01T06:00:00Z.
    `timespec="seconds"` for pages. A naive value is UTC (as the store writes it)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=timespec) + "Z"
