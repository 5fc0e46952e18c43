"""Pod task results under the real scheduler and the LocalLauncher, on both databases:
`/dev/termination-log` in the command stands for the attempt's termination message file."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.helpers import write_dag
from tests.e2e.test_local_scheduler import local_scheduler

RESULTS_DAG = """
from datetime import datetime
from miniflow import DAG, Pod, task

def sh(task_id, script, **kw):
    return Pod(task_id, image="busybox:1.36", command=["sh", "-c", script], push_result=True, **kw)

with DAG("results", start_date=datetime(2026, 1, 1)):
    good = sh("good", 'echo working; printf \\'{"rows": 42}\\' > /dev/termination-log')
    bad = sh("bad", "echo rows=42 > /dev/termination-log", retries=0)
    silent = sh("silent", "echo only a log line")
    huge = sh("huge", "head -c 5000 /dev/zero | tr '\\\\0' 1 > /dev/termination-log")

    airflowish = sh(
        "airflowish", "echo '[1, 2]' > /airflow/xcom/return.json",
        result_file="/airflow/xcom/return.json",
    )

    @task
    def double(measured: dict) -> int:
        return measured["rows"] * 2

    double(good.output)
"""


async def test_pod_results_are_stored_passed_downstream_or_fail_clearly(
    db_url: str, tmp_path: Path
) -> None:
    write_dag(tmp_path / "dags", "results.py", RESULTS_DAG)
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("results")
        tis = await local.tis("results", run_id)
        attempts = {a.task_id: a for a in await local.attempts("results", run_id)}
    assert state == "failed"
    assert (tis["good"].state, tis["good"].result) == ("success", {"rows": 42})
    assert (tis["double"].state, tis["double"].result) == ("success", 84)
    assert (tis["airflowish"].state, tis["airflowish"].result) == ("success", [1, 2])
    assert "working" in (attempts["good"].log_tail or "")
    assert tis["bad"].state == "failed" and tis["bad"].result is None
    assert "is not valid JSON" in (tis["bad"].error or "")
    assert "wrote no result to /dev/termination-log" in (tis["silent"].error or "")
    assert "Kubernetes keeps at most 4,096 bytes" in (tis["huge"].error or "")
    # the exit code was 0 each time: the result, not the process, failed the try
    assert {tis[t].exit_code for t in ("bad", "silent", "huge")} == {0}
