"""Wake-ups between processes (`miniflow.store.wakeup`), on both backends.

The scheduler here waits 60 s between idle rounds, longer than any of these tests
may take: only a wake-up can make it notice work another session created.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.scheduler.core import Scheduler, SchedulerSettings
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import states, wakeup
from tests.instant_launcher import InstantLauncher
from tests.integration.test_scheduler_instant import _trigger

DAG = """
from datetime import datetime
from miniflow import DAG, Bash

with DAG("woken", start_date=datetime(2026, 1, 1)):
    Bash("t", "true")
"""

BOUND = 20.0  # seconds: far below the 60 s idle wait, far above a loaded machine's wake-up


async def _listening(engine: AsyncEngine) -> wakeup.Listener:
    listener = wakeup.Listener(engine)
    await listener.__aenter__()
    await asyncio.wait_for(listener.listening.wait(), BOUND)
    return listener


async def test_a_committed_announcement_wakes_a_listener_and_a_rolled_back_one_does_not(
    engine: AsyncEngine,
) -> None:
    sessions = store_engine.sessionmaker(engine)
    listener = await _listening(engine)
    try:
        listener.woken.clear()  # Postgres sets it once on connecting (missed announcements)
        session = sessions()
        async with session:
            async with session.begin():
                await wakeup.announce(session, "run")
                await session.rollback()
        async with store_engine.transaction(sessions) as session:
            await store_dags.list_dags(session)  # a write-free transaction announces nothing
        # Both were before this committed announcement; had either woken the listener, the
        # event would already be set when this one is committed.
        assert not listener.woken.is_set()
        async with store_engine.transaction(sessions) as session:
            await wakeup.announce(session, "run")
        await asyncio.wait_for(listener.woken.wait(), BOUND)
    finally:
        await listener.__aexit__(None, None, None)


async def test_an_idle_scheduler_starts_a_run_triggered_elsewhere_without_waiting(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "woken.py").write_text(textwrap.dedent(DAG))
    scheduler = Scheduler(
        engine=engine,
        launcher=InstantLauncher(),
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, idle_wait=60.0, register=False),
    )
    await scheduler.start()
    try:
        await scheduler.tick()  # parses the folder
        async with wakeup.Listener(engine, woken=scheduler.woken) as listener:
            await asyncio.wait_for(listener.listening.wait(), BOUND)
            scheduler.woken.clear()
            # The daemon's idle wait, as `run_forever` calls it between rounds.
            idle = asyncio.create_task(scheduler._wait(scheduler.settings.idle_wait))
            await asyncio.sleep(0)  # the wait has begun: it awaits nothing before
            run_id = await _trigger(engine, "woken")
            await asyncio.wait_for(idle, BOUND)
        for _ in range(5):  # start the run, claim, record the exit, finish
            await scheduler.tick()
        async with store_engine.transaction(scheduler.sessions) as session:
            run = await store_runs.get_run(session, "woken", run_id)
        assert run.state == states.RUN_SUCCESS
    finally:
        await scheduler.close()
