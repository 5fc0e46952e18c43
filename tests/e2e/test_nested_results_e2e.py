"""Task results inside a list or dict argument (`summarize([a(), b()])`, as Airflow
resolves nested XComArgs), through `miniflow dags test` with the local launcher: the
worker passes the upstream results in place, and the tasks that made them run first."""

from __future__ import annotations

import json

from tests.e2e.conftest import Cli


def test_results_inside_lists_and_dicts_reach_the_function(sqlite_cli: Cli) -> None:
    sqlite_cli.dag(
        "nested.py",
        """
        from miniflow import DAG, task

        @task
        def number(n):
            return n

        @task
        def summarize(values, extra):
            return {"sum": sum(values), "extra": extra}

        with DAG("nested"):
            a, b = number.override(task_id="a")(2), number.override(task_id="b")(5)
            summarize([a, b, 10], extra={"first": a, "rest": [b, "x"], "n": None})
        """,
    )
    sqlite_cli("dags", "test", "nested")
    shown = sqlite_cli("dags", "show", "nested").stdout
    assert "summarize" in shown and "a" in shown and "b" in shown
    result = json.loads(sqlite_cli("tasks", "result", "nested", "latest", "summarize").stdout)
    assert result == {"sum": 17, "extra": {"first": 2, "rest": [5, "x"], "n": None}}
    rows = json.loads(sqlite_cli("tasks", "list", "nested", "latest", "-o", "json").stdout)
    ends = {row["task_id"]: row for row in rows}
    assert {t: r["state"] for t, r in ends.items()} == dict.fromkeys(
        ("a", "b", "summarize"), "success"
    )
    started = ends["summarize"]["started_at"]
    assert all(ends[up]["ended_at"] <= started for up in ("a", "b"))
