"""The format of the log lines of long-running processes (`MINIFLOW_LOG_FORMAT`).

`text` is for people at a terminal; `json` is for log collectors (one JSON object per
line: `timestamp` in ISO 8601 UTC, `level`, `logger`, `message`, and `exception` with
the traceback when there is one; fields passed with `extra=` are kept). The JSON comes
from python-json-logger, not from a hand-written formatter, so escaping and odd values
are its business. Called once by the CLI after the config is read; never by library code.
"""

from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        timestamp=True,
        rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
    )


def configure(log_format: str) -> None:
    """Give the root logger's handlers the format (`text` or `json`)."""
    formatter = json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
