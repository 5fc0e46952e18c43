"""Mark a run failed while its tries run: they are failed and stopped, from the API as
from the CLI (`miniflow runs mark-failed`), under a real scheduler process."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from miniflow.store import attempts as store_attempts
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from tests.e2e.helpers import kill_group, query, run_cli, spawn_cli, stop, until, write_dag
from tests.web.server import Site, webserver

DAG = """
    import time
    from datetime import datetime
    from miniflow import DAG, Bash, task

    with DAG("long", start_date=datetime(2026, 1, 1)):
        @task
        def py_sleeps():
            time.sleep(300)

        py_sleeps() >> Bash("after", "echo never")
        Bash("bash_sleeps", "sleep 300")
"""


async def test_marking_a_run_failed_stops_its_running_tries(db_url: str, tmp_path: Path) -> None:
    site = Site(db_url, tmp_path)
    write_dag(site.dags, "long.py", DAG)
    env = site.env(
        MINIFLOW_LAUNCHER="local", MINIFLOW_SANITY_INTERVAL="1", MINIFLOW_HEARTBEAT_INTERVAL="1"
    )
    run_ids = []
    for _ in range(2):
        result = run_cli(["dags", "trigger", "long"], env)
        assert result.returncode == 0, result.stderr
        run_ids.append(result.stdout.split("created run ", 1)[1].rsplit(" of ", 1)[0])
    scheduler = spawn_cli(["scheduler"], env, tmp_path / "scheduler.log")
    try:

        async def both_running(run_id: str) -> bool:
            tis = await query(db_url, store_tis.list_for_run, "long", run_id)
            running = {t.task_id for t in tis if t.state == "running" and t.heartbeat_at}
            bash = {t.task_id for t in tis if t.state == "running"}
            return "py_sleeps" in running and "bash_sleeps" in bash

        for run_id in run_ids:
            await until(lambda r=run_id: both_running(r), 60, f"the tries of {run_id} to run")

        by_api, by_cli = run_ids
        with webserver(env) as web, web.client() as http:
            answer = http.post(
                f"/api/v1/dags/long/runs/{by_api}/mark-failed",
                json={},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["state"] == "failed"
        result = await asyncio.to_thread(run_cli, ["runs", "mark-failed", "long", by_cli], env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"marked long/{by_cli} failed"

        async def stopped(run_id: str) -> list[store_attempts.TaskAttempt] | None:
            tries = await query(db_url, store_attempts.for_run, "long", run_id)
            return tries if tries and all(t.ended_at for t in tries) else None

        for run_id in run_ids:
            tries = await until(lambda r=run_id: stopped(r), 60, f"the tries of {run_id} to end")
            assert {(t.task_id, t.state, t.reason) for t in tries} == {
                ("py_sleeps", "failed", "marked failed"),
                ("bash_sleeps", "failed", "marked failed"),
            }
            states = {
                t.task_id: (t.state, t.try_number)
                for t in await query(db_url, store_tis.list_for_run, "long", run_id)
            }
            # failed with no retry; the task downstream never ran
            assert states == {
                "py_sleeps": ("failed", 1),
                "bash_sleeps": ("failed", 1),
                "after": ("skipped", 0),
            }
            run = await query(db_url, store_runs.get_run, "long", run_id)
            assert run.state == "failed"
        again = await asyncio.to_thread(run_cli, ["runs", "mark-failed", "long", by_cli], env)
        assert again.stdout.strip() == f"long/{by_cli} had already finished: left as it is"
        assert stop(scheduler, signal.SIGTERM) == 0
    finally:
        kill_group(scheduler)
        scheduler.wait(5)
