"""`LatestOnly`: skip the tasks after it unless the run covers the latest interval.

Airflow's `LatestOnlyOperator`, as a miniflow task: a run of a scheduled DAG that
is not the latest one (a catch-up or backfilled interval, a run started late)
skips the tasks directly downstream, and trigger rules carry the skip further.
Manual and test runs never skip, as in Airflow.

It is a `@task`-like Python task whose function is miniflow's, not the user's:
the worker imports the DAG file and finds it like any `@task` (a short-circuit
task with `ignore_downstream_trigger_rules=False`), so nothing else in miniflow
knows it exists.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from miniflow.authoring import dag as dag_mod
from miniflow.authoring.context import get_current_context
from miniflow.authoring.dag import definition_error
from miniflow.authoring.taskflow import PythonTask


def is_latest(dag: dag_mod.DAG, context: dict[str, Any], now: datetime) -> bool:
    """True unless `context` is a scheduled run whose interval is no longer the latest.

    The latest interval is the one whose end has passed and whose successor's end has
    not (Airflow: `data_interval_end < now <= next data_interval_end`).
    """
    if context.get("run_type") != "scheduled" or dag.schedule in (None, "@once"):
        return True
    from miniflow.authoring.schedule import DataInterval, Timetable

    end: datetime = context["data_interval_end"]
    if now < end:
        return True  # not due yet (a clock skew): nothing later exists either
    # catchup=True: the plain next interval, not the one a no-catch-up DAG would jump to.
    timetable = Timetable(dag.schedule, dag.timezone, dag.start_date, None, True)
    following = timetable.next_scheduled(DataInterval(context["data_interval_start"], end), now)
    return following is None or now < following.end


class LatestOnly(PythonTask):
    """`LatestOnly("latest_only")`: the tasks directly downstream run only in the run of the
    latest scheduled interval (and in manual runs); otherwise they are skipped and trigger
    rules decide the rest (`none_failed`-like rules still run after it)."""

    def __init__(self, task_id: str, **settings: Any) -> None:
        dag = dag_mod.current_dag()
        if dag is None:
            raise definition_error(
                f"task {task_id!r} must be created inside a `with DAG(...):` block"
            )
        owner = dag

        def latest_only() -> bool:
            return is_latest(owner, get_current_context(), datetime.now(UTC))

        latest_only.__qualname__ = f"LatestOnly.{task_id}"
        super().__init__(
            task_id,
            latest_only,
            [],
            {},
            settings,
            mode="short_circuit",
            ignore_downstream_trigger_rules=False,
        )
