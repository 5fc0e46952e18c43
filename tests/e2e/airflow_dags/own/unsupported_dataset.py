"""A DAG scheduled on a dataset: refused by name, with the line (a test fixture)."""

from datetime import datetime

from airflow import DAG
from airflow.datasets import Dataset
from airflow.operators.bash import BashOperator

with DAG("af_dataset", schedule=[Dataset("s3://bucket/file")], start_date=datetime(2024, 1, 1)):
    BashOperator(task_id="t", bash_command="echo hi")
