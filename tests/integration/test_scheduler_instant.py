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
            session,
            dag=dag.serialized,
            run_id=run_id,
            run_type="manual",  # type: ignore[arg-type]
            logical_date=now,
            interval=(now, now),
            conf=conf or {},
            now=now,
        )
    return run_id


async def test_fanout_runs_to_success(engine: AsyncEngine, tmp_path: Path) -> None:
    (tmp_path / "fan.py").write_text(textwrap.dedent(FANOUT))
    launcher = InstantLauncher()
    scheduler = Scheduler(
        engine=engine,
        launcher=launcher,
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, idle_wait=0.05),
    )
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


async def test_try_lost_before_launch_is_relaunched_without_using_a_retry(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A scheduler that died between claiming and launching left a queued try behind."""
    (tmp_path / "one.py").write_text(
        "from datetime import datetime\nfrom miniflow import DAG, Bash\n"
        'with DAG("one", start_date=datetime(2026, 1, 1)):\n    Bash("only", "true")\n'
    )
    # announce=False: no start event, as if the launch never happened (a launcher that
    # reports a start at launch has it recorded with the launch's handle).
    held = InstantLauncher(hold=True, announce=False)
    first = Scheduler(
        engine=engine,
        launcher=held,
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, idle_wait=0.05),
    )
    await first.start()
    await first.tick()
    run_id = await _trigger(engine, "one")
    await first.tick()  # claims and "launches" try 1, which never reports back
    assert len(held.launched) == 1
    await first.close()

    second_launcher = InstantLauncher()
    second = Scheduler(
        engine=engine,
        launcher=second_launcher,
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, idle_wait=0.05),
    )
    await second.start()  # adopts try 1: the instant launcher reports it Lost
    state = await second.run_until_done("one", run_id, timeout=30)
    await second.close()
    assert state == "success"
    assert [k for k, _ in second_launcher.adopted] == [held.launched[0].key]
    sessions = store_engine.sessionmaker(engine)
    async with store_engine.transaction(sessions) as session:
        (ti,) = await store_tis.list_for_run(session, "one", run_id)
    # try 1 was lost before it started: the same try was launched again; neither the try
    # number nor the task's retries (0) moved, the relaunch is counted on its own
    assert (ti.state, ti.try_number, ti.max_tries, ti.launch_attempts) == ("success", 1, 0, 1)


ONE = (
    "from datetime import datetime\nfrom miniflow import DAG, Bash\n"
    'with DAG("one", start_date=datetime(2026, 1, 1)):\n    Bash("only", "true")\n'
)


async def test_started_event_arriving_after_the_exit_is_history(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "one.py").write_text(ONE)
    from datetime import UTC, datetime

    from miniflow.launchers.base import AttemptStarted

    # A launcher that reports the start at launch has it recorded with the launch:
    # this one reports none, and the start is made up below, after the exit.
    launcher = InstantLauncher(hold=True, announce=False)
    scheduler = Scheduler(
        engine=engine,
        launcher=launcher,
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, idle_wait=0.05),
    )
    await scheduler.start()
    await scheduler.tick()
    run_id = await _trigger(engine, "one")
    await scheduler.tick()
    key = launcher.launched[0].key
    started = AttemptStarted(key, f"instant:{key}", datetime.now(UTC))  # held back...
    launcher.release()
    await scheduler.tick()  # ...so the exit is recorded first
    assert not scheduler.inflight
    launcher.events.put_nowait(started)  # then the late started event arrives
    await scheduler.tick()
    assert not scheduler.inflight  # not tracked again: no exit will ever come for it
    assert await scheduler.run_until_done("one", run_id, timeout=5) == "success"
    await scheduler.close()


async def test_exit_of_a_superseded_try_closes_its_attempt(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from miniflow.launchers.base import AttemptExited, AttemptKey
    from miniflow.scheduler import events
    from miniflow.store import attempts as store_attempts

    (tmp_path / "one.py").write_text(ONE)
    scheduler = Scheduler(
        engine=engine,
        launcher=InstantLauncher(hold=True),
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False),
    )
    await scheduler.tick()
    run_id = await _trigger(engine, "one")
    await scheduler.tick()  # try 1 claimed, attempt row open
    sessions = store_engine.sessionmaker(engine)
    now = datetime.now(UTC)
    async with store_engine.transaction(sessions) as session:  # try 1 failed, try 2 claimed
        (ti,) = await store_tis.list_for_run(session, "one", run_id)
        await store_tis.finish(
            session, [store_tis.Outcome(ti.id, 1, "up_for_retry", next_retry_at=now)], now
        )
        await store_tis.promote_due_retries(session, now)
        await store_tis.mark_queued(session, [ti.id], now)
    scheduler.inflight.clear()  # as after a restart
    exit_1 = AttemptExited(AttemptKey("one", run_id, "only", 1), "h", 1, "Error", now)
    async with store_engine.transaction(sessions) as session:
        await events.record(scheduler, session, [exit_1], now)
    async with store_engine.transaction(sessions) as session:
        (attempt,) = await store_attempts.for_task(session, "one", run_id, "only")
        (ti,) = await store_tis.list_for_run(session, "one", run_id)
    assert (attempt.try_number, attempt.state, attempt.exit_code) == (1, "failed", 1)
    assert attempt.ended_at is not None
    assert (ti.state, ti.try_number) == ("queued", 2)  # the current try is untouched
    await scheduler.close()


async def test_replaced_settings_reach_the_claims(engine: AsyncEngine, tmp_path: Path) -> None:
    """`dags test` stops claiming on Ctrl-C by setting parallelism 0 on the scheduler: the
    claim (which sees the scheduler's collaborators through `deps`) must see it."""
    import dataclasses

    (tmp_path / "fan.py").write_text(textwrap.dedent(FANOUT))
    launcher = InstantLauncher(hold=True)
    scheduler = Scheduler(
        engine=engine,
        launcher=launcher,
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, idle_wait=0.05),
    )
    await scheduler.start()
    try:
        await scheduler.tick()  # parse
        await _trigger(engine, "fan")
        scheduler.settings = dataclasses.replace(scheduler.settings, parallelism=0)
        other = InstantLauncher(hold=True)
        scheduler.launcher = other
        for _ in range(3):
            await scheduler.tick()
        assert scheduler.deps.settings.parallelism == 0
        assert scheduler.deps.launcher is other
        assert not launcher.launched and not other.launched  # nothing claimed
    finally:
        await scheduler.close()
