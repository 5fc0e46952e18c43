"""An ETL pipeline: a Bash extract, TaskFlow transforms passing JSON results, a Pod load.

Runs as-is on the embedded default (the Pod task's command runs on the host
there) and on Kubernetes (the Pod task runs in busybox, the others in the
miniflow worker image).
"""

from datetime import datetime, timedelta

from miniflow import DAG, Bash, Pod, task

with DAG(
    "example_etl",
    schedule="0 3 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    retries=2,
    retry_delay=timedelta(seconds=30),
    params={"limit": 100},
    tags=["example"],
):
    extract = Bash("extract", "echo extracting {{ ds }} for run {{ run_id }}")

    @task(retries=3, timeout=timedelta(minutes=5))
    def transform(limit: int = 100) -> dict:
        rows = [{"id": i, "value": i * i} for i in range(limit)]
        return {"rows": len(rows), "total": sum(r["value"] for r in rows)}

    @task
    def report(summary: dict) -> str:
        print(f"transformed {summary['rows']} rows, total {summary['total']}")
        return f"{summary['rows']} rows"

    load = Pod(
        "load",
        image="busybox:1.36",
        command=["sh", "-c", "echo loading {{ params.limit }} rows for {{ ds }}"],
        resources={"requests": {"cpu": "100m", "memory": "64Mi"}},
    )
    summary = transform(limit=50)
    extract >> summary >> load
    report(summary)
