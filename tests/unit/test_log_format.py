"""MINIFLOW_LOG_FORMAT=json: one JSON object per line, with the fields collectors index."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime

from miniflow import log_format


def test_json_lines_carry_timestamp_level_logger_message_and_exception() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(log_format.json_formatter())
    log = logging.getLogger("miniflow.test_log_format")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("try %s of %s\nsecond line", 2, "etl", extra={"dag_id": "etl"})
        try:
            raise ValueError("bad value")
        except ValueError:
            log.exception("round failed")
    finally:
        log.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # a newline in a message stays inside its line
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "try 2 of etl\nsecond line"
    assert (first["level"], first["logger"], first["dag_id"]) == (
        "WARNING",
        "miniflow.test_log_format",
        "etl",
    )
    assert datetime.fromisoformat(first["timestamp"]).utcoffset() is not None
    assert "exception" not in first
    assert second["level"] == "ERROR"
    assert "ValueError: bad value" in second["exception"]


def test_configure_switches_the_root_handlers_both_ways() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        log_format.configure("json")
        assert isinstance(handler.formatter, type(log_format.json_formatter()))
        log_format.configure("text")
        assert handler.formatter is not None
        assert handler.formatter._fmt == log_format.TEXT_FORMAT
    finally:
        root.removeHandler(handler)
