"""A daily cron DAG with catchup: every missed day since start_date gets its own run,
at most two at a time, each seeing its own data interval."""

from datetime import datetime

from miniflow import DAG, Bash

with DAG(
    "example_daily_catchup",
    schedule="@daily",
    start_date=datetime(2026, 11, 20),
    catchup=True,
    max_active_runs=2,
    tags=["example"],
):
    Bash(
        "summarise_day",
        "echo \"summarising {{ data_interval_start }} .. {{ data_interval_end }} (ds={{ ds }})\"",
    )
