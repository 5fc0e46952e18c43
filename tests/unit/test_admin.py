"""Admin helpers behind the CLI: next-run display and downstream selection for clear."""

from __future__ import annotations

from datetime import UTC, datetime

from miniflow import DAG, Bash
from miniflow.cli.operations import _next_run, downstream_of


def _dag(**kw: object) -> dict:  # type: ignore[type-arg]
    with DAG("d", **kw) as dag:  # type: ignore[arg-type]
        a = Bash("a", "true")
        b = Bash("b", "true")
        c = Bash("c", "true")
        Bash("other", "true")
        a >> b >> c
    return dict(dag.serialize("d.py"))


def test_next_run_follows_the_last_scheduled_interval() -> None:
    dag = _dag(schedule="@daily", start_date=datetime(2026, 1, 1), catchup=True)
    last = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    assert _next_run(dag, last) == datetime(2026, 1, 3, tzinfo=UTC)  # type: ignore[arg-type]
    assert _next_run(dag, None) == datetime(2026, 1, 2, tzinfo=UTC)  # type: ignore[arg-type]


def test_unscheduled_dag_has_no_next_run() -> None:
    assert _next_run(_dag(), None) is None  # type: ignore[arg-type]


def test_downstream_of_includes_the_task_and_everything_after_it() -> None:
    assert downstream_of(_dag(), "b") == ["b", "c"]  # type: ignore[arg-type]
    assert downstream_of(_dag(), "a") == ["a", "b", "c"]  # type: ignore[arg-type]
