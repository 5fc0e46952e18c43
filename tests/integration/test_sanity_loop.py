"""The sanity loop and the state machine, on real databases with an in-process launcher.

Time is the scheduler's `ManualClock`: a test moves it past a threshold and runs one
round, so nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.launchers.base import AliveAttempt, AttemptKey, LaunchResult, TaskSpec
from miniflow.scheduler import metrics
from miniflow.scheduler.clock import ManualClock
from miniflow.scheduler.core import Scheduler, SchedulerSettings
from miniflow.scheduler.sanity import SanitySettings
from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import states, transitions
from miniflow.store import task_instances as store_tis
from miniflow.store.records import AttemptRecord, TaskInstanceRecord
from tests.instant_launcher import InstantLauncher
from tests.integration.test_scheduler_instant import _trigger

DAG = """
from datetime import datetime, timedelta
from miniflow import DAG, Bash, task

with DAG("s", start_date=datetime(2026, 1, 1), retries={retries}, retry_delay=timedelta(0)):
    @task
    def work():
        return 1

    work()
    Bash("sh", "sleep 100", timeout=timedelta(seconds=2))
"""


class WorkerLauncher(InstantLauncher):
    """Holds every attempt; `python` tries report through a (simulated) worker."""

    worker_kinds: frozenset[str] = frozenset({"python"})


@dataclass
class Rig:
    scheduler: Scheduler
    launcher: WorkerLauncher
    clock: ManualClock
    sessions: object
    run_id: str

    async def tis(self) -> dict[str, TaskInstanceRecord]:
        async with store_engine.transaction(self.scheduler.sessions) as session:
            rows = await store_tis.list_for_run(session, "s", self.run_id)
        return {r.task_id: r for r in rows}

    async def attempts(self, task_id: str) -> list[AttemptRecord]:
        async with store_engine.transaction(self.scheduler.sessions) as session:
            return await store_attempts.for_task(session, "s", self.run_id, task_id)

    async def tick_until(self, check: object, rounds: int = 20) -> None:
        for _ in range(rounds):
            await self.scheduler.tick()
            if await check():  # type: ignore[operator]
                return
        raise AssertionError("condition not reached")


async def _rig(
    engine: AsyncEngine, tmp_path: Path, *, retries: int = 1, announce: bool = True
) -> AsyncIterator[Rig]:
    (tmp_path / "s.py").write_text(DAG.format(retries=retries))
    clock = ManualClock(datetime.now(UTC))
    launcher = WorkerLauncher(hold=True, announce=announce)
    settings = SchedulerSettings(
        schedule_runs=False,
        idle_wait=0.05,
        sanity=SanitySettings(
            interval=1.0, zombie_threshold=30.0, queued_timeout=60.0, kill_grace_period=1.0
        ),
    )
    scheduler = Scheduler(
        engine=engine, launcher=launcher, dags_folder=tmp_path, settings=settings, clock=clock
    )
    await scheduler.start()
    await scheduler.tick()  # parse
    run_id = await _trigger(engine, "s", {})
    rig = Rig(scheduler, launcher, clock, None, run_id)

    async def both_launched() -> bool:
        return len(launcher.held) == 2

    await rig.tick_until(both_launched)
    await scheduler.tick()  # record the started events
    try:
        yield rig
    finally:
        await scheduler.close()


@pytest.fixture
async def rig(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in _rig(engine, tmp_path):
        yield r


async def _claim_as_worker(rig: Rig, task_id: str) -> int:
    async with store_engine.transaction(rig.scheduler.sessions) as session:
        claimed = await store_tis.worker_claim(
            session, "s", rig.run_id, task_id, 1, rig.clock.now()
        )
    assert claimed is not None
    return claimed.id


def metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_zombie_is_failed_then_killed_and_its_worker_is_fenced_out(rig: Rig) -> None:
    ti_id = await _claim_as_worker(rig, "work")
    zombies = metric("miniflow_sanity_findings_total", kind="zombie")
    exits = metric("miniflow_attempt_exits_total", reason="heartbeat lost")
    rig.clock.advance(31)
    # the Bash task must not look timed out for this test: keep it alive and young
    await rig.scheduler.tick()
    ti = (await rig.tis())["work"]
    assert ti.state == states.UP_FOR_RETRY, ti.error
    assert ti.error is not None and ti.error.startswith("heartbeat lost")
    kills = {k.task_id: (reason, force) for k, reason, force in rig.launcher.kills}
    assert kills["work"] == ("heartbeat lost", True)  # SIGKILL: it may be stopped
    # the frozen worker resumes: it can neither heartbeat nor record anything
    async with store_engine.transaction(rig.scheduler.sessions) as session:
        assert not await store_tis.heartbeat(session, ti_id, 1, rig.clock.now())
        outcome = store_tis.Outcome(ti_id, 1, states.SUCCESS, (states.RUNNING,))
        assert await store_tis.finish(session, [outcome], rig.clock.now()) == set()
    await rig.scheduler.tick()  # the kill's exit closes the attempt, keeping the reason
    attempt = (await rig.attempts("work"))[0]
    assert attempt.ended_at is not None and attempt.reason == "heartbeat lost"
    assert attempt.state == states.UP_FOR_RETRY  # the decision, not the kill's exit code
    assert metric("miniflow_sanity_findings_total", kind="zombie") == zombies + 1
    assert metric("miniflow_attempt_exits_total", reason="heartbeat lost") == exits + 1


async def test_a_killed_zombies_exit_closes_its_attempt_while_its_retry_waits(rig: Rig) -> None:
    """The kill's exit may arrive after the retry was made due (scheduled under the same
    try number, not yet claimed): that is no relaunch, the old try's attempt must close."""
    ti_id = await _claim_as_worker(rig, "work")
    rig.clock.advance(31)
    await rig.scheduler.tick()  # zombie: failed (retry due at once), killed; exit queued
    assert (await rig.tis())["work"].state == states.UP_FOR_RETRY
    async with store_engine.transaction(rig.scheduler.sessions) as session:
        moved = await store_tis.set_states(
            session, [(ti_id, states.UP_FOR_RETRY, states.SCHEDULED)], rig.clock.now()
        )
    assert moved == 1  # the retry is due before the exit is recorded
    await rig.scheduler.tick()
    attempts = await rig.attempts("work")
    first = next(a for a in attempts if a.try_number == 1)
    assert first.ended_at is not None, first
    assert (first.state, first.reason) == (states.UP_FOR_RETRY, "heartbeat lost")


async def test_a_worker_that_heartbeats_is_not_a_zombie(rig: Rig) -> None:
    ti_id = await _claim_as_worker(rig, "work")
    for _ in range(4):
        rig.clock.advance(20)
        async with store_engine.transaction(rig.scheduler.sessions) as session:
            assert await store_tis.heartbeat(session, ti_id, 1, rig.clock.now())
        await rig.scheduler.tick()
    assert (await rig.tis())["work"].state == states.RUNNING
    assert all(k.task_id != "work" for k in rig.launcher.killed)
    assert rig.launcher.fresh_looks == 0  # healthy rounds cost the API server nothing


async def test_timeout_is_enforced_by_the_scheduler_itself(rig: Rig) -> None:
    await _claim_as_worker(rig, "work")  # keep the worker task out of it
    # past 2 s + 1 s grace: its start time is the launcher's wall clock, which may be
    # seconds ahead of the manual clock on a loaded machine (below the zombie threshold)
    rig.clock.advance(20)
    await rig.scheduler.tick()
    tis = await rig.tis()
    assert tis["sh"].state == states.UP_FOR_RETRY and tis["sh"].error is not None
    assert tis["sh"].error.startswith("timeout")
    assert ("timeout", False) in [(r, f) for k, r, f in rig.launcher.kills if k.task_id == "sh"]


async def test_a_try_that_vanished_is_found_lost_and_retried(rig: Rig) -> None:
    key = next(k for k in rig.launcher.held if k.task_id == "sh")
    del rig.launcher.held[key]  # gone behind the scheduler's back
    lost = metric("miniflow_sanity_findings_total", kind="lost")
    exits = metric("miniflow_attempt_exits_total", reason="Lost")
    rig.clock.advance(1.1)
    await rig.scheduler.tick()  # first round: missing once, not yet lost
    assert not rig.launcher.adopted
    rig.clock.advance(1.5)
    await rig.scheduler.tick()  # second round: adopt → the launcher reports it Lost
    await rig.scheduler.tick()  # record the Lost exit
    assert [k for k, _ in rig.launcher.adopted] == [key]
    assert rig.launcher.fresh_looks == 1  # the suspicion was confirmed by a fresh look
    # it had started, so it is a failure of the try (retried as try 2), not a free relaunch
    assert (await rig.tis())["sh"].try_number == 2
    first = (await rig.attempts("sh"))[0]
    assert (first.try_number, first.state, first.reason) == (1, states.UP_FOR_RETRY, "Lost")
    assert metric("miniflow_sanity_findings_total", kind="lost") == lost + 1
    assert metric("miniflow_attempt_exits_total", reason="Lost") == exits + 1


async def test_an_orphan_is_killed_after_two_rounds(rig: Rig) -> None:
    stray = AttemptKey("s", rig.run_id, "sh", 7)  # no such try
    rig.launcher.held[stray] = rig.launcher.launched[0]
    rig.clock.advance(1.1)
    await rig.scheduler.tick()
    assert stray not in rig.launcher.killed
    rig.clock.advance(1.5)
    await rig.scheduler.tick()
    assert (stray, "orphan", False) in rig.launcher.kills


async def test_a_try_queued_too_long_is_failed(engine: AsyncEngine, tmp_path: Path) -> None:
    async for rig in _rig(engine, tmp_path, announce=False):
        assert {t.state for t in (await rig.tis()).values()} == {states.QUEUED}
        rig.clock.advance(61)
        await rig.scheduler.tick()
        tis = await rig.tis()
        assert {t.state for t in tis.values()} == {states.UP_FOR_RETRY}
        assert all((t.error or "").startswith("queued timeout") for t in tis.values())
        assert {(r, f) for _, r, f in rig.launcher.kills} == {("queued timeout", True)}


class RefusingLauncher(InstantLauncher):
    """Every create is refused for a transient reason."""

    async def launch(self, specs: Sequence[TaskSpec]) -> list[LaunchResult]:
        self.launched.extend(specs)
        return [LaunchResult(s.key, None, error="API busy", retryable=True) for s in specs]

    async def alive(self, *, fresh: bool = True) -> list[AliveAttempt]:
        return []


async def test_relaunches_are_capped_apart_from_retries(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "one.py").write_text(
        "from datetime import datetime\nfrom miniflow import DAG, Bash\n"
        'with DAG("one", start_date=datetime(2026, 1, 1)):\n    Bash("only", "true")\n'
    )
    launcher = RefusingLauncher()
    scheduler = Scheduler(
        engine=engine,
        launcher=launcher,
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, idle_wait=0.05, max_launch_attempts=3),
    )
    await scheduler.start()
    await scheduler.tick()
    run_id = await _trigger(engine, "one", {})
    state = await scheduler.run_until_done("one", run_id, timeout=30)
    await scheduler.close()
    assert state == "failed"
    # three launches of the same try, then the try failed (no retries configured)
    assert [s.key.try_number for s in launcher.launched] == [1, 1, 1]
    async with store_engine.transaction(scheduler.sessions) as session:
        (ti,) = await store_tis.list_for_run(session, "one", run_id)
        (attempt,) = await store_attempts.for_task(session, "one", run_id, "only")
    assert (ti.state, ti.try_number, ti.max_tries) == (states.FAILED, 1, 0)
    assert ti.error is not None and "launched 3 times" in ti.error
    assert attempt.ended_at is not None and attempt.reason == "LaunchFailed"
    assert attempt.message is not None and "launch 1 did not start" in attempt.message


async def test_a_recorded_success_is_final(rig: Rig) -> None:
    ti_id = await _claim_as_worker(rig, "work")
    async with store_engine.transaction(rig.scheduler.sessions) as session:
        outcome = store_tis.Outcome(ti_id, 1, states.SUCCESS, (states.RUNNING,))
        assert await store_tis.finish(session, [outcome], rig.clock.now()) == {ti_id}
        with pytest.raises(transitions.IllegalTransition):
            await store_tis.finish(
                session,
                [store_tis.Outcome(ti_id, 1, states.FAILED, (states.SUCCESS,))],
                rig.clock.now(),
            )
    # the process then exits non-zero: noted on the attempt, the success stands
    key = next(k for k in rig.launcher.held if k.task_id == "work")
    rig.launcher.exit_code = lambda spec: 1
    rig.launcher.release(key)
    await rig.scheduler.tick()
    assert (await rig.tis())["work"].state == states.SUCCESS
    (attempt,) = await rig.attempts("work")
    assert attempt.state == states.SUCCESS and attempt.exit_code == 1
    assert attempt.message is not None and "after the worker recorded success" in attempt.message


def test_transition_table() -> None:
    assert transitions.ALLOWED[states.SUCCESS] == frozenset({states.NONE})
    assert transitions.allowed(states.QUEUED, states.SCHEDULED)  # a relaunch
    assert not transitions.allowed(states.SUCCESS, states.SCHEDULED)
    assert not transitions.allowed(states.FAILED, states.SCHEDULED)
    with pytest.raises(transitions.IllegalTransition):
        transitions.check([states.RUNNING, states.SUCCESS], states.FAILED)


async def test_a_worker_that_exits_before_claiming_is_relaunched_not_retried(rig: Rig) -> None:
    """E.g. its database connection failed: the user's code never ran, no retry is spent."""
    key = next(k for k in rig.launcher.held if k.task_id == "work")
    rig.launcher.exit_code = lambda spec: 2
    rig.launcher.release(key)
    await rig.scheduler.tick()  # records the exit: scheduled again under the same try
    ti = (await rig.tis())["work"]
    assert (ti.try_number, ti.launch_attempts, ti.max_tries) == (1, 1, 1)
    assert ti.state in (states.SCHEDULED, states.QUEUED, states.RUNNING)
    await rig.scheduler.tick()
    assert [s.key.try_number for s in rig.launcher.launched if s.key.task_id == "work"] == [1, 1]
    (attempt,) = await rig.attempts("work")
    assert attempt.ended_at is None  # the same try goes on
    assert attempt.message is not None and "exited before claiming" in attempt.message


async def test_no_view_from_the_launcher_is_not_everything_lost(rig: Rig) -> None:
    from miniflow.errors import ServiceUnavailable

    async def unreachable(*, fresh: bool = True) -> list[AliveAttempt]:
        raise ServiceUnavailable("the API server did not answer")

    rig.launcher.alive = unreachable  # type: ignore[method-assign]
    for _ in range(2):  # two rounds: "missing twice" would make every try lost
        rig.clock.advance(1.0)
        await rig.scheduler.tick()
    assert rig.launcher.adopted == [] and rig.launcher.kills == []
    assert {t.state for t in (await rig.tis()).values()} == {states.RUNNING}
