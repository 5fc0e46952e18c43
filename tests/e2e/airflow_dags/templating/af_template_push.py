"""`ti.xcom_push(...)` inside a BashOperator's template (as Airflow's example_xcom does):
the value is pushed when the command is rendered, and the template renders "None"; an
XComArg in an f-string is the template pulling it."""

from datetime import datetime

from airflow import DAG
from airflow.decorators import task
from airflow.models.xcom_arg import XComArg
from airflow.operators.bash import BashOperator

with DAG("af_template_push", schedule=None, start_date=datetime(2024, 1, 1)):
    bash_push = BashOperator(
        task_id="bash_push",
        bash_command='echo "bash_push demo"  && '
        'echo "Manually set xcom value '
        '{{ ti.xcom_push(key="manually_pushed_value", value="manually_pushed_value") }}" && '
        'echo "pushed on {{ ti.xcom_push(key="day", value=ds) }}" && '
        'echo "value_by_return"',
    )
    bash_pull = BashOperator(
        task_id="bash_pull",
        bash_command='echo "The xcom pushed manually is '
        '{{ ti.xcom_pull(task_ids="bash_push", key="manually_pushed_value") }}" && '
        f'echo "The returned_value xcom is {XComArg(bash_push)}" && '
        f'echo "The day is {XComArg(bash_push, key="day")}"',
        do_xcom_push=False,
    )

    @task
    def python_pull(ti=None):
        return {
            "manual": ti.xcom_pull(task_ids="bash_push", key="manually_pushed_value"),
            "day": ti.xcom_pull(task_ids="bash_push", key="day"),
            "returned": ti.xcom_pull(task_ids="bash_push"),
        }

    bash_push >> [bash_pull, python_pull()]
