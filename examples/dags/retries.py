"""A flaky task that fails its first two tries and then succeeds, and a clean-up that
always runs (trigger rule all_done)."""

from datetime import datetime, timedelta

from miniflow import DAG, Bash

with DAG("example_retries", start_date=datetime(2026, 1, 1), tags=["example"]):
    flaky = Bash(
        "flaky",
        'echo "try {{ try_number }}"; test {{ try_number }} -ge 3',
        retries=3,
        retry_delay=timedelta(seconds=1),
        retry_exponential_backoff=True,
        max_retry_delay=timedelta(seconds=2),
    )
    cleanup = Bash("cleanup", "echo cleaning up", trigger_rule="all_done")
    flaky >> cleanup
