"""Airflow names for features miniflow builds beside this layer (setup/teardown, callbacks,
LatestOnly, mapping, sensors, XCom pull): a test fixture run only where miniflow has them."""

import pendulum
from airflow import DAG
from airflow.decorators import setup, task, teardown
from airflow.operators.latest_only import LatestOnlyOperator
from airflow.operators.python import PythonOperator


def on_fail(context):
    print("failed", context)


with DAG(
    "af_forwarded",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1),
    default_args={"on_failure_callback": on_fail},
):

    @setup
    def create():
        return "made"

    @teardown
    def drop():
        print("dropped")

    @task
    def numbers():
        return [1, 2, 3]

    @task
    def double(x):
        return x * 2

    @task
    def total(values):
        return sum(values)

    @task.sensor(poke_interval=1, timeout=30, mode="poke")
    def ready():
        return True

    def pull(ti=None):
        return ti.xcom_pull(task_ids="numbers")

    latest = LatestOnlyOperator(task_id="latest")
    c = create()
    doubled = double.expand(x=numbers())
    t = total(doubled)
    p = PythonOperator(task_id="pull", python_callable=pull)
    c >> [ready(), latest] >> p >> drop()
    t >> p
