"""Airflow 3.x import paths (`airflow.sdk`, the standard provider), run unmodified by
miniflow's Airflow layer (a test fixture): TaskFlow with multiple_outputs, branch,
short-circuit, @task.bash, @task_group, and a PythonOperator reading a TaskFlow result.
"""

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import Label, Param, dag, get_current_context, task, task_group


@dag(
    schedule="0 6 * * *",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    params={"n": Param(3, type="integer", minimum=1)},
    tags=["airflow3"],
)
def af3_taskflow():
    @task
    def extract():
        return {"a": 1, "b": 2}

    @task(multiple_outputs=True)
    def split(data: dict):
        return {"total": sum(data.values()), "count": len(data)}

    @task
    def report(total, count, ti=None, **context):
        return {
            "total": total,
            "count": count,
            "n": context["params"]["n"],
            "ds": get_current_context()["ds"],
            "task": ti.task_id,
        }

    @task.branch
    def pick(total):
        return "big" if total > 2 else "small"

    @task.short_circuit
    def go_on():
        return True

    @task.bash
    def shout(total):
        return f"echo total is {total} on {{{{ ds }}}}"

    @task_group
    def finish(value):
        @task
        def double(v):
            return v * 2

        return double(value)

    big = EmptyOperator(task_id="big")
    small = EmptyOperator(task_id="small")
    done = EmptyOperator(task_id="done", trigger_rule="none_failed_min_one_success")

    parts = split(extract())
    report(parts["total"], parts["count"])
    pick(parts["total"]) >> Label("size") >> [big, small] >> done
    go_on() >> shout(parts["total"])
    finish(parts["total"])
    PythonOperator(
        task_id="also", python_callable=lambda value: value + 1, op_args=[parts["count"]]
    )


af3_taskflow()
