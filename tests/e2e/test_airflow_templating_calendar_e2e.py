"""Airflow DAG files using per-DAG macros and filters, the date/weekday branch operators
and DayOfWeekSensor, through the real `miniflow` command (`airflow check`, `dags test`)
with the local launcher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.e2e.conftest import Cli

FIXTURES = Path(__file__).parent / "airflow_dags"
DATE = "2024-05-01"  # a Wednesday, in the second quarter


def copy_dag(cli: Cli, path: Path) -> None:
    cli.dags.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, cli.dags / path.name)


def states(cli: Cli, dag_id: str) -> dict[str, str]:
    rows = json.loads(cli("tasks", "list", dag_id, "latest", "-o", "json").stdout)
    return {row["task_id"]: row["state"] for row in rows}


def result(cli: Cli, dag_id: str, task_id: str) -> object:
    return json.loads(cli("tasks", "result", dag_id, "latest", task_id).stdout)


def test_user_defined_macros_and_filters_reach_every_kind_of_template(sqlite_cli: Cli) -> None:
    path = FIXTURES / "templating" / "af_macros.py"
    checked = sqlite_cli("airflow", "check", str(path.parent)).stdout
    assert "af_macros.py: loads\n" in checked and "DAG af_macros (4 tasks)" in checked
    copy_dag(sqlite_cli, path)
    sqlite_cli("dags", "test", "af_macros", "--logical-date", DATE)
    assert states(sqlite_cli, "af_macros") == dict.fromkeys(
        ["bash", "python", "custom", "flow"], "success"
    )
    assert result(sqlite_cli, "af_macros", "bash") == "acme Q2 ACME!"  # rendered by miniflow
    assert result(sqlite_cli, "af_macros", "python") == "acme-Q2-HI!"  # op_args, in the worker
    assert result(sqlite_cli, "af_macros", "custom") == "Q2 ACME!"  # template_fields
    assert result(sqlite_cli, "af_macros", "flow") == "ACME! Q2"  # a TaskFlow literal argument


def test_calendar_branches_and_day_of_week_sensor_decide_on_the_logical_date(
    sqlite_cli: Cli,
) -> None:
    path = FIXTURES / "calendar" / "af_calendar.py"
    checked = sqlite_cli("airflow", "check", str(path.parent)).stdout
    assert "af_calendar.py: loads\n" in checked and "DAG af_calendar (10 tasks)" in checked
    copy_dag(sqlite_cli, path)
    sqlite_cli("dags", "test", "af_calendar", "--logical-date", DATE)
    assert states(sqlite_cli, "af_calendar") == {
        "morning": "success",  # midnight is before target_upper (12:00)
        "before_noon": "success",
        "after_noon": "skipped",
        "weekend": "success",  # a Wednesday: not the weekend
        "rest": "skipped",
        "work": "success",
        "join": "success",
        "midweek": "success",  # done at its first poke
        "after_midweek": "success",
        "sunday": "skipped",  # soft_fail once its 2 s timeout passed
    }


def test_xcom_push_in_a_bash_template_is_stored_for_downstream_tasks(sqlite_cli: Cli) -> None:
    copy_dag(sqlite_cli, FIXTURES / "templating" / "af_template_push.py")
    sqlite_cli("dags", "test", "af_template_push", "--logical-date", DATE)
    assert states(sqlite_cli, "af_template_push") == dict.fromkeys(
        ["bash_push", "bash_pull", "python_pull"], "success"
    )
    assert result(sqlite_cli, "af_template_push", "python_pull") == {
        "manual": "manually_pushed_value",
        "day": DATE,
        "returned": "value_by_return",
    }
    pushed = sqlite_cli("tasks", "logs", "af_template_push", "latest", "bash_push").stdout
    assert "Manually set xcom value None" in pushed  # Airflow renders the push as None too
    pulled = sqlite_cli("tasks", "logs", "af_template_push", "latest", "bash_pull").stdout
    assert "The xcom pushed manually is manually_pushed_value" in pulled
    assert "The returned_value xcom is value_by_return" in pulled  # f"{XComArg(op)}"
    assert f"The day is {DATE}" in pulled
