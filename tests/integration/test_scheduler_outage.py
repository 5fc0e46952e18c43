"""A database outage mid-run: the daemon backs off, keeps its launcher events, and finishes."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from miniflow.scheduler.core import Scheduler, SchedulerSettings
from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from tests.dbs import PG_ADMIN_DSN, PostgresDatabases
from tests.instant_launcher import InstantLauncher
from tests.integration.test_scheduler_instant import _trigger

DAG = """
from datetime import datetime
from miniflow import DAG, Bash

with DAG("three", start_date=datetime(2026, 1, 1)):
    for i in range(3):
        Bash(f"t{i}", "true")
"""


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _until(check, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_postgres_outage_mid_run_is_survived(
    postgres_dbs: PostgresDatabases, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = await postgres_dbs.clone()
    name = make_url(url).database
    (tmp_path / "three.py").write_text(textwrap.dedent(DAG))
    engine = store_engine.create_engine(url)
    launcher = InstantLauncher(hold=True)
    scheduler = Scheduler(
        engine=engine,
        launcher=launcher,
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, idle_wait=0.05),
    )
    caplog.set_level(logging.ERROR, logger="miniflow.scheduler")
    await scheduler.start()
    await scheduler.tick()
    run_id = await _trigger(engine, "three")
    daemon = asyncio.create_task(scheduler.run_forever())
    try:
        await _until(lambda: _true(len(launcher.held) == 3), "three running tasks")
        await _admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await _admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        launcher.release()  # the tasks end while the database is away
        await _until(lambda: _true("scheduler round failed" in caplog.text), "a failed round")
        assert not daemon.done()
        await _admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')

        async def finished() -> bool:
            async with store_engine.transaction(scheduler.sessions) as session:
                return (await store_runs.get_run(session, "three", run_id)).state == "success"

        await _until(finished, "the run to succeed after the outage")
    finally:
        await _admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        scheduler.stop()
        await daemon
        await scheduler.close()
    async with store_engine.transaction(scheduler.sessions) as session:
        attempts = await store_attempts.for_run(session, "three", run_id)
    await engine.dispose()
    # every exit that happened during the outage was recorded afterwards, once
    assert sorted((a.task_id, a.state, a.exit_code) for a in attempts) == [
        (f"t{i}", "success", 0) for i in range(3)
    ]


async def _true(value: bool) -> bool:
    return value
