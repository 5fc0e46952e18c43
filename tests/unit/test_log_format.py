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


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_at_a_terminal_and_json_elsewhere() -> None:
    assert log_format.resolve("auto", logging.StreamHandler(Tty())) == "text"
    assert log_format.resolve("auto", logging.StreamHandler(io.StringIO())) == "json"
    assert log_format.resolve("text", logging.StreamHandler(io.StringIO())) == "text"
    assert log_format.resolve("json", logging.StreamHandler(Tty())) == "json"


def test_a_line_about_a_try_carries_its_ids_as_fields() -> None:
    from miniflow.launchers.base import AttemptKey

    out = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(out)
    root.addHandler(handler)
    log = logging.getLogger("miniflow.test_task_fields")
    try:
        log_format.configure("auto")  # a StringIO is no terminal: JSON
        key = AttemptKey("etl", "manual__2026-01-01T00:00:00+00:00", "load", 2)
        log.warning("%s exited: code=%s", key, 1)
        log.warning("run %s finished", "etl/r1", extra={"dag_id": "etl", "run_id": "r1"})
        log.warning("nothing about a task")
    finally:
        root.removeHandler(handler)
    about_try, about_run, other = (json.loads(line) for line in out.getvalue().splitlines())
    assert about_try["message"].startswith("etl/manual__2026-01-01T00:00:00+00:00/load#2 exited")
    assert (about_try["dag_id"], about_try["task_id"], about_try["try"]) == ("etl", "load", 2)
    assert about_try["run_id"] == "manual__2026-01-01T00:00:00+00:00"
    assert (about_run["dag_id"], about_run["run_id"]) == ("etl", "r1")
    assert "task_id" not in about_run
    assert not {"dag_id", "run_id", "task_id", "try"} & other.keys()
