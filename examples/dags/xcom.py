"""XCom: values left by one task for others, by key, in code and in templates.

`produce` pushes a value under a key of its own besides returning its result; `report`
pulls both; `echo_count` reads one in its command template; `last_line` leaves the last
line it prints as its result (`push_result=True`), which `check` pulls.
"""

from datetime import datetime

from miniflow import DAG, Bash, get_current_context, task

with DAG(
    "example_xcom",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    tags=["example"],
    description="XCom push/pull by key, from templates, and a Bash task's last line",
):

    @task
    def produce() -> list[str]:
        get_current_context()["ti"].xcom_push("row_count", 3)
        return ["a", "b", "c"]

    @task
    def report() -> str:
        ti = get_current_context()["ti"]
        rows = ti.xcom_pull(task_ids="produce")
        count = ti.xcom_pull(task_ids="produce", key="row_count")
        assert rows == ["a", "b", "c"] and count == 3, (rows, count)
        return f"{count} rows"

    echo_count = Bash(
        "echo_count",
        "test '{{ ti.xcom_pull(task_ids=\"produce\", key=\"row_count\") }}' = 3 && echo ok",
    )
    last_line = Bash("last_line", 'echo working; echo \'{"files": 2}\'', push_result=True)

    @task
    def check() -> int:
        pushed = get_current_context()["ti"].xcom_pull(task_ids="last_line")
        assert pushed == {"files": 2}, pushed
        return int(pushed["files"])

    first = produce()
    first >> [report(), echo_count]
    last_line >> check()
