"""`{{ ti.xcom_push(key, value) }}` in a Bash task's template, through `miniflow dags
test` with the local launcher (which runs the command the scheduler rendered): the value
is stored before the command runs; a value over the limit fails the try before it starts."""

from __future__ import annotations

import json

from tests.e2e.conftest import Cli


def test_bash_template_pushes_are_stored_before_the_command_runs(sqlite_cli: Cli) -> None:
    sqlite_cli.extra_env["MINIFLOW_MAX_RESULT_BYTES"] = "64"
    sqlite_cli.dag(
        "pushing.py",
        """
        from miniflow import DAG, Bash, task

        with DAG("pushing"):
            push = Bash("push", "echo pushed {{ ti.xcom_push('day', ds) }} "
                                "{{ ti.xcom_push('rows', [1, 2]) }}")
            pull = Bash("pull", "echo rows={{ ti.xcom_pull(task_ids='push', key='rows') }}")
            too_big = Bash("too_big", "echo {{ ti.xcom_push('blob', 'x' * 100) }}")

            @task
            def read(ti=None):
                from miniflow import get_current_context

                ti = get_current_context()["ti"]
                return [ti.xcom_pull("push", key="day"), ti.xcom_pull("push", key="rows")]

            push >> [pull, read()]
        """,
    )
    sqlite_cli("dags", "test", "pushing", "--logical-date", "2024-05-01", expect=1)
    rows = json.loads(sqlite_cli("tasks", "list", "pushing", "latest", "-o", "json").stdout)
    found = {row["task_id"]: row for row in rows}
    assert {t: r["state"] for t, r in found.items()} == {
        "push": "success",
        "pull": "success",
        "read": "success",
        "too_big": "failed",
    }
    read = json.loads(sqlite_cli("tasks", "result", "pushing", "latest", "read").stdout)
    assert read == ["2024-05-01", [1, 2]]
    push_log = sqlite_cli("tasks", "logs", "pushing", "latest", "push").stdout
    assert "pushed None None" in push_log  # a push renders as None, as in Airflow
    assert "rows=[1, 2]" in sqlite_cli("tasks", "logs", "pushing", "latest", "pull").stdout
    error = json.dumps(found["too_big"])
    assert "xcom 'blob' pushed by a template" in error and "MINIFLOW_MAX_RESULT_BYTES" in error
