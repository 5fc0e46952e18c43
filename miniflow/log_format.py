"""The format of the log lines of long-running processes (`MINIFLOW_LOG_FORMAT`).

`text` is for people at a terminal; `json` is for log collectors (one JSON object per
line: `timestamp` in ISO 8601 UTC, `level`, `logger`, `message`, and `exception` with
the traceback when there is one; fields passed with `extra=` are kept). `auto`, the
default, is text when the handler writes to a terminal and JSON otherwise (a
container's log, a file, a pipe). The JSON comes from python-json-logger, not from a
hand-written formatter, so escaping and odd values are its business.

A line about one task carries `dag_id`, `run_id`, `task_id` and `try` as fields of
their own (JSON keys), so a collector can select a task's lines without parsing the
message: given explicitly with `extra=`, or taken from the first argument of the
message that names a try (an `AttemptKey`, or anything with those attributes), which
is how the scheduler and launchers already log tries. Called once by the CLI after
the config is read; never by library code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TASK_FIELDS = ("dag_id", "run_id", "task_id", "try")


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        timestamp=True,
        rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
    )


def _names_a_task(value: Any) -> bool:
    return all(hasattr(value, a) for a in ("dag_id", "run_id", "task_id"))


class TaskFields(logging.Filter):
    """Puts the ids of the task a line is about on the record (see the module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "dag_id", None) is not None:
            return True  # given with extra=
        args = record.args
        values: Any = args.values() if isinstance(args, Mapping) else (args or ())
        for value in values:
            if _names_a_task(value):
                record.dag_id = value.dag_id
                record.run_id = value.run_id
                record.task_id = value.task_id
                number = getattr(value, "try_number", None)
                if number is not None:
                    setattr(record, "try", number)  # `try` is a keyword
                break
        return True


def resolve(log_format: str, handler: logging.Handler) -> str:
    """`text` or `json` for this handler (`auto`: text only at a terminal)."""
    if log_format != "auto":
        return log_format
    stream = getattr(handler, "stream", None)
    isatty = getattr(stream, "isatty", None)
    try:
        return "text" if isatty is not None and isatty() else "json"
    except ValueError:  # a closed stream
        return "json"


def configure(log_format: str) -> None:
    """Give the root logger's handlers the format (`auto`, `text` or `json`) and the
    task fields."""
    for handler in logging.getLogger().handlers:
        chosen = resolve(log_format, handler)
        handler.setFormatter(
            json_formatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT)
        )
        if not any(isinstance(f, TaskFields) for f in handler.filters):
            handler.addFilter(TaskFields())
