"""Fan-out / fan-in: one start task, parallel workers, one join that needs them all."""

from datetime import datetime

from miniflow import DAG, Bash

with DAG("example_fanout", start_date=datetime(2026, 1, 1), max_active_tasks=8, tags=["example"]):
    start = Bash("start", "echo starting {{ run_id }}")
    join = Bash("join", "echo all partitions done")
    for i in range(10):
        start >> Bash(f"partition_{i}", f"echo processing partition {i}") >> join
