"""A schedule in words for the UI ("every day at 03:00"), for the common shapes only.

Anything not recognised returns None and the page shows the cron string alone:
a wrong description would be worse than none.
"""

from __future__ import annotations

PRESETS = {
    "@once": "once",
    "@hourly": "every hour",
    "@daily": "every day at 00:00",
    "@midnight": "every day at 00:00",
    "@weekly": "every Sunday at 00:00",
    "@monthly": "on the 1st of every month at 00:00",
    "@yearly": "every 1 January at 00:00",
    "@annually": "every 1 January at 00:00",
}
DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]


def _num(field: str, low: int, high: int) -> int | None:
    return int(field) if field.isdigit() and low <= int(field) <= high else None


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def describe(schedule: str | None) -> str | None:
    if schedule is None:
        return "only when triggered"
    if schedule in PRESETS:
        return PRESETS[schedule]
    fields = schedule.split()
    if len(fields) != 5:
        return None
    minute, hour, dom, month, dow = fields
    if month != "*":
        return None
    if minute.startswith("*/") and hour == dom == dow == "*":
        step = _num(minute[2:], 1, 59)
        return f"every {step} minutes" if step else None
    m = _num(minute, 0, 59)
    if m is None:
        return None
    if hour == dom == dow == "*":
        return f"every hour at minute {m}"
    if hour.startswith("*/") and dom == dow == "*":
        step = _num(hour[2:], 1, 23)
        return f"every {step} hours at minute {m}" if step else None
    h = _num(hour, 0, 23)
    if h is None:
        return None
    at = f"{h:02d}:{m:02d}"
    if dom == "*" and dow == "*":
        return f"every day at {at}"
    if dom == "*" and dow == "1-5":
        return f"every weekday at {at}"
    if dom == "*":
        day = _num(dow, 0, 7)
        return f"every {DAYS[day % 7]} at {at}" if day is not None else None
    if dow == "*":
        d = _num(dom, 1, 31)
        return f"on the {_ordinal(d)} of every month at {at}" if d else None
    return None
