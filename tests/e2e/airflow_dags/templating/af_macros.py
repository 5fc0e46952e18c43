"""user_defined_macros (a value and a function) and user_defined_filters, seen by every
kind of template: BashOperator, PythonOperator op_args, a custom operator's
template_fields and a TaskFlow call's literal argument."""

from datetime import datetime

from airflow import DAG
from airflow.decorators import task
from airflow.models.baseoperator import BaseOperator
from airflow.operators.bash import BashOperator
from airflow.operators.python import PythonOperator


def shout(text):
    return text.upper() + "!"


def quarter(ds):
    return f"Q{(int(ds[5:7]) - 1) // 3 + 1}"


class Greeting(BaseOperator):
    template_fields = ("message",)

    def __init__(self, *, message, **kwargs):
        super().__init__(**kwargs)
        self.message = message

    def execute(self, context):
        return self.message


def echo(text):
    return text


with DAG(
    "af_macros",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    user_defined_macros={"project": "acme", "quarter": quarter},
    user_defined_filters={"shout": shout},
):
    BashOperator(
        task_id="bash", bash_command="echo '{{ project }} {{ quarter(ds) }} {{ project | shout }}'"
    )
    PythonOperator(
        task_id="python",
        python_callable=echo,
        op_args=["{{ project }}-{{ quarter(ds) }}-{{ 'hi' | shout }}"],
    )
    Greeting(task_id="custom", message="{{ quarter(ds) }} {{ project | shout }}")

    @task
    def flow(text):
        return text

    flow("{{ project | shout }} {{ quarter(ds) }}")
