"""Airflow names mapped onto miniflow's mapping, sensors, results and FailTask (issue #13)."""

from datetime import datetime, timedelta

from airflow.decorators import dag, task
from airflow.exceptions import AirflowFailException
from airflow.models.baseoperator import BaseOperator
from airflow.operators.bash import BashOperator
from airflow.operators.python import PythonOperator
from airflow.providers.standard.sensors.bash import BashSensor
from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor
from airflow.sensors.base import BaseSensorOperator, PokeReturnValue
from airflow.sensors.python import PythonSensor


class AddOne(BaseOperator):
    def __init__(self, value, **kwargs):
        super().__init__(**kwargs)
        self.value = value

    def execute(self, context):
        return self.value + 1


class DaySensor(BaseSensorOperator):
    template_fields = ("day",)

    def __init__(self, day, **kwargs):
        super().__init__(**kwargs)
        self.day = day

    def poke(self, context):
        return PokeReturnValue(True, self.day)


def add(x, y=0):
    return x + y


def refuse():
    raise AirflowFailException("bad input")


@dag(schedule=None, start_date=datetime(2024, 1, 1))
def af_operators(factor: int = 3):
    lines = BashOperator.partial(task_id="lines").expand(bash_command=["echo a", "echo b"])
    sums = PythonOperator.partial(task_id="sums", python_callable=add, op_args=[10]).expand(
        op_kwargs=[{"y": 1}, {"y": 2}]
    )
    plus = AddOne.partial(task_id="plus").expand(value=[1, 2, 3])

    @task
    def collect(texts, totals, pluses, times):
        return {"lines": texts, "sums": totals, "plus": pluses, "factor": times}

    done = collect(lines.output, sums.output, plus.output, factor)
    waits = [
        DaySensor(task_id="day", day="{{ ds }}", poke_interval=1),
        BashSensor(task_id="bash_ok", bash_command="exit 0", poke_interval=1),
        TimeDeltaSensor(task_id="later", delta=timedelta(seconds=0)),
    ]
    waits >> done
    PythonSensor(
        task_id="never", python_callable=lambda: False, timeout=1, poke_interval=0.2,
        soft_fail=True,
    )  # fmt: skip
    PythonOperator(task_id="refuses", python_callable=refuse, retries=3)


af_operators()
