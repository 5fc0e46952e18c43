"""Branching, task groups, Empty joins, a short-circuit and a typed param.

`route` follows one of two task groups by the `rows` param; the other group is
skipped, and `done` (none_failed_min_one_success) joins whichever ran. `Empty`
tasks cost no process or pod. Try `miniflow dags trigger example_branching
--conf '{"rows": 500}'` to take the other branch, or `{"rows": -1}` to see a
typed param refuse a conf.
"""

from datetime import datetime

from miniflow import DAG, Bash, Empty, Param, TaskGroup, get_current_context, task

with DAG(
    "example_branching",
    start_date=datetime(2026, 1, 1),
    params={"rows": Param(50, type="integer", minimum=0, description="rows to process")},
    tags=["example"],
):
    start = Empty("start")

    @task.branch
    def route() -> str:
        rows = get_current_context()["params"]["rows"]
        return "heavy" if rows > 100 else "light"

    with TaskGroup("light") as light:
        Bash("count", "echo counting {{ params.rows }} rows") >> Bash("load", "echo loaded")

    with TaskGroup("heavy") as heavy:
        Bash("partition", "echo partitioning {{ params.rows }} rows")

    done = Empty("done", trigger_rule="none_failed_min_one_success")

    @task.short_circuit
    def anything_to_report() -> bool:
        return get_current_context()["params"]["rows"] > 0

    report = Bash("report", "echo processed {{ params.rows }} rows on {{ ds }}")
    start >> route() >> [light, heavy] >> done >> anything_to_report() >> report
