"""An operator with an SLA: refused by name, with the line (a test fixture)."""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG("af_sla", schedule=None, start_date=datetime(2024, 1, 1)):
    BashOperator(task_id="t", bash_command="echo hi", sla=timedelta(hours=1))
