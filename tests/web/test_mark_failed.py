"""Mark a run failed while its tries run: they are failed and stopped, from the API as
from the CLI (`miniflow runs mark-failed`), under a real scheduler process."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from miniflow.store import attempts as store_attempts
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from miniflow.store.records import AttemptRecord
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
        MINIFLOW_LAUNCHER="local",
        MINIFLOW_SANITY_INTERVAL="1",
        MINIFLOW_HEARTBEAT_INTERVAL="1",
        MINIFLOW_SCHEDULER_HEARTBEAT="1",
    )
    run_ids = []
    for _ in range(2):
        result = run_cli(["dags", "trigger", "long"], env)
        assert result.returncode == 0, result.stderr
        run_ids.append(result.stdout.split("created run ", 1)[1].rsplit(" of ", 1)[0])
    with webserver(env) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
            await _mark_failed_while_running(db_url, env, tmp_path, run_ids, http)


async def _mark_failed_while_running(
    db_url: str, env: dict[str, str], tmp_path: Path, run_ids: list[str], http: httpx.AsyncClient
) -> None:
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
        answer = await http.post(f"/api/v1/dags/long/runs/{by_api}/mark-failed", json={})
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "failed"
        result = await asyncio.to_thread(run_cli, ["runs", "mark-failed", "long", by_cli], env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"marked long/{by_cli} failed"

        async def stopped(run_id: str) -> list[AttemptRecord] | None:
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

        # The Bash tries (no worker to notice) were stopped by the sanity loop, and the
        # health page and API show it, from the scheduler's row.
        wanted = {f"long/{r}/bash_sleeps#1" for r in run_ids}

        async def reported() -> dict[str, object] | None:
            (mine,) = (await http.get("/api/v1/health")).json()["schedulers"]
            seen = {f["what"] for f in mine["recent_findings"] if f["kind"] == "stopped"}
            return mine if wanted <= seen else None

        mine = await until(reported, 30, "the stopped tries on the health API")
        assert mine["sanity_findings"]["stopped"] >= 2  # type: ignore[index]
        page = (await http.get("/health")).text
        for what in wanted:
            assert f"<code>{what}</code>" in page
        assert "stopped (run marked failed): " in page
        assert stop(scheduler, signal.SIGTERM) == 0
    finally:
        kill_group(scheduler)
        scheduler.wait(5)
