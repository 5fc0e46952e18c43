"""The scheduler's loops against real databases with an instant launcher (no processes)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.scheduler.core import Scheduler, SchedulerSettings
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from tests.instant_launcher import InstantLauncher

FANOUT = """
from datetime import datetime
from miniflow import DAG, Bash

with DAG("fan", start_date=datetime(2026, 1, 1), params={"code": 0}):
    start = Bash("start", "true")
    join = Bash("join", "true")
    for i in range(5):
        start >> Bash(f"t{i}", "exit {{ params.code }}") >> join
"""


async def _trigger(engine: AsyncEngine, dag_id: str, conf: dict[str, object] | None = None) -> str:
    from datetime import UTC, datetime

    from miniflow.store import dags as store_dags

    sessions = store_engine.sessionmaker(engine)
    now = datetime.now(UTC)
    async with store_engine.transaction(sessions) as session:
        dag = await store_dags.get_dag(session, dag_id)
        run_id = f"manual__{now.isoformat()}"
        await store_runs.create_run(
            session, dag=dag.serialized, run_id=run_id, run_type="manual",  # type: ignore[arg-type]
            logical_date=now, interval=(now, now), conf=conf or {}, now=now,
        )
    return run_id


async def test_fanout_runs_to_success(engine: AsyncEngine, tmp_path: Path) -> None:
    (tmp_path / "fan.py").write_text(textwrap.dedent(FANOUT))
    launcher = InstantLauncher()
    scheduler = Scheduler(engine=engine, launcher=launcher, dags_folder=tmp_path,
                          settings=SchedulerSettings(schedule_runs=False, idle_wait=0.05))
    await scheduler.start()
    await scheduler.tick()  # parses
    run_id = await _trigger(engine, "fan", {})
    state = await scheduler.run_until_done("fan", run_id, timeout=30)
    await scheduler.close()
    assert state == "success"
    assert len(launcher.launched) == 7
    sessions = store_engine.sessionmaker(engine)
    async with store_engine.transaction(sessions) as session:
        tis = await store_tis.list_for_run(session, "fan", run_id)
    assert {t.state for t in tis} == {"success"}
