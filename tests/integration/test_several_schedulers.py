"""Several schedulers on one PostgreSQL database: limits are global, each try has one owner."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.store import engine as store_engine
from miniflow.store import task_instances as store_tis
from tests.dbs import PostgresDatabases


def _bash_dag(folder: Path, dag_id: str, tasks: int) -> None:
    """A DAG file of `tasks` independent Bash tasks t0, t1..."""
    (folder / f"{dag_id}.py").write_text(
        "from datetime import datetime\nfrom miniflow import DAG, Bash\n"
        f'with DAG("{dag_id}", start_date=datetime(2026, 1, 1)):\n'
        f'    [Bash(f"t{{i}}", "true") for i in range({tasks})]\n'
    )


async def _trigger_and_tick(scheduler: Any, engine: AsyncEngine, dag_id: str, rounds: int) -> None:
    """Parse the DAGs folder, trigger a run of `dag_id`, and run that many rounds."""
    from tests.integration.test_scheduler_instant import _trigger

    await scheduler.tick()  # parse
    await _trigger(engine, dag_id, {})
    for _ in range(rounds):
        await scheduler.tick()


def _holding_scheduler(
    engine: AsyncEngine, folder: Path, start: Any, scheduler_id: str | None = None
) -> Any:
    """A scheduler on a manual clock whose instant launcher holds every try running."""
    from miniflow.scheduler.clock import ManualClock
    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from tests.instant_launcher import InstantLauncher

    return Scheduler(
        engine=engine,
        launcher=InstantLauncher(hold=True),
        dags_folder=folder,
        settings=SchedulerSettings(schedule_runs=False, instance_timeout=30.0),
        clock=ManualClock(start),
        scheduler_id=scheduler_id,
    )


def _peer(engine: AsyncEngine, folder: Path, clock: Any, **settings: Any) -> Any:
    """A peer on a shared manual clock whose instant launcher holds every try running,
    counting its live peers every round, with claim turns of a second."""
    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from tests.instant_launcher import InstantLauncher

    return Scheduler(
        engine=engine,
        launcher=InstantLauncher(hold=True),
        dags_folder=folder,
        clock=clock,
        settings=SchedulerSettings(
            schedule_runs=False, instance_heartbeat=0.0, claim_turn=1.0, **settings
        ),
    )


WIDE = (
    "from datetime import datetime\nfrom miniflow import DAG, Bash\n"
    'with DAG("wide", start_date=datetime(2026, 1, 1), max_active_tasks=50):\n'
    '    [Bash(f"t{i}", "true") for i in range(60)]\n'
)
"""60 independent Bash tasks: more than a few turns' worth of slots."""


async def _one_turn(peers: list[Any], clock: Any) -> list[int]:
    """Tick every peer twice (whatever the order, the holder ticks after the exits), note
    how many tries each holds, then end the turn and let those tries exit."""
    for _ in range(2):
        for s in peers:
            await s.tick()
    owned = [len(_held(s)) for s in peers]
    clock.advance(1.1)  # the turn is over
    for s in peers:
        s.launcher.release()
    return owned


def _held(scheduler: Any) -> list[Any]:
    """The keys of the tries its launcher holds running."""
    return list(scheduler.launcher.held)


@contextlib.asynccontextmanager
async def _two_peers(
    engine: AsyncEngine, folder: Path, dag_id: str, clock: Any, **settings: Any
) -> AsyncIterator[tuple[Any, Any]]:
    """Two `_peer`s that started a run of `dag_id` and ticked until the first turn's tries
    are claimed: (the one holding them, the other)."""
    from tests.integration.test_scheduler_instant import _trigger

    peers = [_peer(engine, folder, clock, **settings) for _ in range(2)]
    try:
        for s in peers:
            await s.start()
        await peers[0].tick()  # parses
        await _trigger(engine, dag_id, {})
        for _ in range(2):  # both read the running run
            for s in peers:
                await s.tick()
        yield (peers[0], peers[1]) if _held(peers[0]) else (peers[1], peers[0])
    finally:
        for s in peers:
            await s.close()


@pytest.fixture
async def db_url(postgres_dbs: PostgresDatabases) -> str:
    """PostgreSQL only: SQLite runs one scheduler."""
    return await postgres_dbs.clone()


async def test_claims_of_two_schedulers_never_count_free_slots_at_once(
    engine: AsyncEngine, db_url: str
) -> None:
    """While one scheduler is inside its claim (counting, then claiming), another
    scheduler's claim waits: two that counted at once would both see the same free slots."""
    sessions = store_engine.sessionmaker(engine)
    second_counted = asyncio.Event()

    async def second_claim() -> None:
        async with store_engine.transaction(sessions) as session:
            await store_tis.serialize_claims(session)
            await store_tis.active_counts(session)
            second_counted.set()

    admin = await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        async with store_engine.transaction(sessions) as session:
            await store_tis.serialize_claims(session)
            await store_tis.active_counts(session)
            second = asyncio.create_task(second_claim())
            deadline = time.monotonic() + 10
            while not await admin.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ):
                assert not second_counted.is_set(), "the second claim did not wait"
                assert time.monotonic() < deadline, "the second claim never asked for the lock"
                await asyncio.sleep(0.01)
            assert not second_counted.is_set()
        await asyncio.wait_for(second, 10)  # the first committed: the second goes on
        assert second_counted.is_set()
    finally:
        await admin.close()


async def test_a_live_peers_tries_are_left_alone_and_a_dead_ones_adopted_once(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from miniflow.scheduler import metrics
    from miniflow.scheduler.core import Scheduler
    from miniflow.store import attempts as store_attempts
    from tests.integration.test_scheduler_instant import _trigger

    _bash_dag(tmp_path, "three", 3)
    start = datetime.now(UTC)

    def scheduler() -> Scheduler:
        return _holding_scheduler(engine, tmp_path, start)

    a, b, c = scheduler(), scheduler(), scheduler()
    await a.start()
    try:
        await a.tick()  # parse
        run_id = await _trigger(engine, "three", {})
        for _ in range(5):
            await a.tick()
        held = set(a.launcher.held)  # type: ignore[attr-defined]
        assert len(held) == 3
        await b.start()
        await c.start()
        # a is alive: neither b nor c adopts its tries, at start or in a sanity round
        await b.tick()
        await c.tick()
        assert b.launcher.adopted == [] and c.launcher.adopted == []  # type: ignore[attr-defined]
        # a stops heartbeating: 31 s later both survivors look, only one adopts each try
        adoptions = metrics.REGISTRY.get_sample_value("miniflow_adoptions_total")
        for survivor in (b, c):
            survivor.clock.advance(31)  # type: ignore[attr-defined]
            await survivor._heartbeat_instance()  # the survivors are alive, a is not
        await asyncio.gather(b.sanity.round(b, b.clock.now()), c.sanity.round(c, c.clock.now()))
        adopted_b = {k for k, _ in b.launcher.adopted}  # type: ignore[attr-defined]
        adopted_c = {k for k, _ in c.launcher.adopted}  # type: ignore[attr-defined]
        assert adopted_b | adopted_c == held and not adopted_b & adopted_c
        assert metrics.REGISTRY.get_sample_value("miniflow_adoptions_total") == adoptions + 3
        sessions = store_engine.sessionmaker(engine)
        async with store_engine.transaction(sessions) as session:
            attempts = await store_attempts.for_run(session, "three", run_id)
        owners = {a_.task_id: a_.scheduler_id for a_ in attempts}
        assert set(owners.values()) <= {b.scheduler_id, c.scheduler_id}
        assert a.scheduler_id not in owners.values()
        # a comes back and sees its old tries end: their exits are the adopters' to record,
        # and its launcher is told to let them go (an adoption back must report them again)
        a.launcher.release()  # type: ignore[attr-defined]
        await a.tick()
        assert set(a.launcher.disowned) == held  # type: ignore[attr-defined]
        assert a.launcher.acknowledged == []  # type: ignore[attr-defined]
        async with store_engine.transaction(sessions) as session:
            attempts = await store_attempts.for_run(session, "three", run_id)
        assert [x.ended_at for x in attempts] == [None] * 3  # a recorded none of them
    finally:
        for s in (a, b, c):
            await s.close()


async def test_starting_queued_runs_waits_for_another_scheduler_s_start(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    """`max_active_runs` is global: while one scheduler counts running runs and starts
    queued ones, another's start waits, so both never see the same free room."""
    from datetime import UTC, datetime

    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from miniflow.scheduler.dagcache import DagCache
    from miniflow.scheduler.run_creation import start_queued_runs
    from miniflow.store import runs as store_runs
    from tests.instant_launcher import InstantLauncher
    from tests.integration.test_scheduler_instant import ONE, _trigger

    (tmp_path / "one.py").write_text(ONE.replace('"one",', '"one", max_active_runs=1,'))
    parser = Scheduler(
        engine=engine,
        launcher=InstantLauncher(),
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, register=False),
    )
    await parser.tick()  # parses
    await parser.close()
    await _trigger(engine, "one")
    await _trigger(engine, "one")
    sessions = store_engine.sessionmaker(engine)
    admin = await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))

    async def second_start() -> set[int]:
        async with store_engine.transaction(sessions) as session:
            return await start_queued_runs(session, DagCache(), datetime.now(UTC), None)

    try:
        async with store_engine.transaction(sessions) as session:
            first = await start_queued_runs(session, DagCache(), datetime.now(UTC), None)
            assert len(first) == 1  # max_active_runs=1
            second = asyncio.create_task(second_start())
            deadline = time.monotonic() + 10
            while not await admin.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ):
                assert not second.done(), "the second start did not wait for the first"
                assert time.monotonic() < deadline, "the second start never asked for the lock"
                await asyncio.sleep(0.01)
        # The first committed: the second counts its running run and starts nothing.
        assert await asyncio.wait_for(second, 10) == set()
        async with store_engine.transaction(sessions) as session:
            running = await store_runs.running_runs(session, None)
        assert len(running) == 1
    finally:
        await admin.close()


async def test_a_frozen_schedulers_claim_lock_is_freed_by_the_server(db_url: str) -> None:
    """A scheduler frozen inside its claim transaction (SIGSTOP, a partitioned host) would
    keep the claim lock and stall every peer's claims until it thawed; the scheduler's
    engine asks the server to end a session left idle in a transaction that long."""
    frozen_engine = store_engine.create_engine(db_url, idle_transaction_timeout=0.5)
    peer_engine = store_engine.create_engine(db_url)
    peer_claimed = asyncio.Event()

    async def peer_claim() -> None:
        async with store_engine.transaction(store_engine.sessionmaker(peer_engine)) as session:
            await store_tis.serialize_claims(session)
            peer_claimed.set()

    try:
        frozen = store_engine.sessionmaker(frozen_engine)()
        await frozen.begin()
        await store_tis.serialize_claims(frozen)
        # From here on the frozen scheduler sends nothing: only the server can free the lock.
        await asyncio.wait_for(peer_claim(), 10)
        assert peer_claimed.is_set()
        with pytest.raises(DBAPIError):  # it thaws: its transaction is gone, not committed
            await frozen.execute(text("SELECT 1"))
        await frozen.close()
    finally:
        await frozen_engine.dispose()
        await peer_engine.dispose()


async def test_live_peers_take_turns_at_claiming_every_free_slot(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """In its turn a scheduler claims every free slot (large rounds: a round's fixed cost
    is paid once for the whole parallelism, not once per even share); once the turn is
    over the peer that waited longest takes the next one, so over three turns each of
    three schedulers held one."""
    from datetime import UTC, datetime

    from miniflow.scheduler.clock import ManualClock
    from tests.integration.test_scheduler_instant import _trigger

    (tmp_path / "wide.py").write_text(WIDE)
    clock = ManualClock(datetime.now(UTC))
    peers = [_peer(engine, tmp_path, clock, parallelism=10) for _ in range(3)]
    try:
        for s in peers:
            await s.start()
        await peers[0].tick()  # parses
        await _trigger(engine, "wide", {})
        holders = []
        for turn in range(3):
            owned = await _one_turn(peers, clock)
            assert sum(owned) == 10, (turn, owned)
            holder = max(range(3), key=lambda i: owned[i])
            # more than ceil(10 / 3) in one round: the holder claimed every free slot
            assert owned[holder] > 4, (turn, owned)
            holders.append(holder)
        assert sorted(holders) == [0, 1, 2], holders
    finally:
        for s in peers:
            await s.close()


async def test_a_scheduler_that_joins_takes_its_turn_after_the_peers_already_there(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A scheduler that just registered (a rolling restart's replacement) may still be
    starting: handed the next turn at once, it left every slot unclaimed for half a turn,
    then claimed in slow rounds. It queues behind the peers whose last turn began before
    it came."""
    from datetime import UTC, datetime

    from miniflow.scheduler.clock import ManualClock
    from tests.integration.test_scheduler_instant import _trigger

    (tmp_path / "wide.py").write_text(WIDE)
    clock = ManualClock(datetime.now(UTC))
    everyone = [_peer(engine, tmp_path, clock, parallelism=10) for _ in range(2)]
    try:
        for s in everyone:
            await s.start()
        await everyone[0].tick()  # parses
        await _trigger(engine, "wide", {})
        holders = []
        for turn in range(5):
            if turn == 2:  # both had a turn: one more registers
                everyone.append(_peer(engine, tmp_path, clock, parallelism=10))
                await everyone[-1].start()
                clock.advance(0.01)  # the next turn begins after it registered
            owned = await _one_turn(everyone, clock)
            assert sum(owned) == 10, (turn, owned)
            holders.append(max(range(len(owned)), key=lambda i: owned[i]))
        assert sorted(holders[:2]) == [0, 1], holders
        assert holders[2:] == [holders[0], holders[1], 2], holders
    finally:
        for s in everyone:
            await s.close()


async def test_a_fan_in_of_tries_two_peers_ran_is_ready_once_the_last_exit_is_in(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A scheduler's view of a run learns only of its own tries' exits: `j`, downstream
    of `a` and `b` that two peers ran, looked blocked to each and waited for the sweep
    (a second or two, at the end of every fan-in). Once a scheduler has nothing left
    running in the run it reads the run's rows, and `j` is claimed in the next round."""
    from datetime import UTC, datetime

    from miniflow.scheduler.clock import ManualClock

    (tmp_path / "fanin.py").write_text(
        "from datetime import datetime\nfrom miniflow import DAG, Bash\n"
        'with DAG("fanin", start_date=datetime(2026, 1, 1)):\n'
        '    j = Bash("j", "true")\n'
        '    Bash("a", "true") >> j\n'
        '    Bash("b", "true") >> j\n'
    )
    clock = ManualClock(datetime.now(UTC))
    # One slot: each peer runs one of `a`, `b`. No sweep while the test runs.
    async with _two_peers(
        engine, tmp_path, "fanin", clock, parallelism=1, full_sweep_interval=3600.0
    ) as (first, second):
        assert len(_held(first)) == 1 and _held(second) == []
        clock.advance(1.1)  # the first one's turn is over
        first.launcher.release()
        await first.tick()  # records its exit, hands the turn on
        await second.tick()  # takes the turn: claims the other of `a`, `b`
        assert len(_held(second)) == 1
        second.launcher.release()
        await second.tick()  # records the last exit upstream of `j`
        await second.tick()
        assert [key.task_id for key in _held(second)] == ["j"]


async def test_the_turn_holder_reads_the_peers_turns_only_once_its_turn_is_over(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """No peer may take a turn before it is over: within it, the holder's claims skip the
    read of the peers' turns (a statement per round that one scheduler does not pay)."""
    from datetime import UTC, datetime

    from sqlalchemy import event

    from miniflow.scheduler.clock import ManualClock

    _bash_dag(tmp_path, "held", 8)
    clock = ManualClock(datetime.now(UTC))
    reads = [0]

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("SELECT") and "scheduler_instance.claimed_at" in statement:
            reads[0] += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        async with _two_peers(engine, tmp_path, "held", clock, parallelism=2) as (holder, _):
            assert len(_held(holder)) == 2
            reads[0] = 0
            for _ in range(2):  # within its turn: claims without reading the turns
                holder.launcher.release()
                await holder.tick()
                assert len(_held(holder)) == 2
            assert reads[0] == 0
            clock.advance(1.1)  # over: the next claim reads them and hands the turn on
            holder.launcher.release()
            await holder.tick()
            assert reads[0] == 1 and _held(holder) == []
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


async def test_a_waiting_peer_whose_exits_free_slots_wakes_the_turn_holder(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Slots that a waiting peer's exits free are the turn holder's to fill, and the holder
    may be idle (its own tries still running): the peer wakes it (`turn:<id>`), or the
    slots would stay empty until the holder's next event."""
    from datetime import UTC, datetime

    from miniflow.scheduler.clock import ManualClock
    from miniflow.store import wakeup

    _bash_dag(tmp_path, "freed", 4)
    clock = ManualClock(datetime.now(UTC))
    async with _two_peers(engine, tmp_path, "freed", clock, parallelism=2) as (first, second):
        assert len(_held(first)) == 2 and _held(second) == []  # both slots in its turn
        clock.advance(1.1)  # its turn is over
        first.launcher.release(_held(first)[0])
        await first.tick()  # one slot free: hands the turn on
        await second.tick()  # takes it: claims the free slot
        assert len(_held(second)) == 1
        given = asyncio.Event()
        async with wakeup.Listener(engine, turn=(second.scheduler_id, given)) as listener:
            await asyncio.wait_for(listener.listening.wait(), 10)
            first.launcher.release()
            await first.tick()  # records its last exit: a slot free in the peer's turn
            await asyncio.wait_for(given.wait(), 10)
        await second.tick()
        assert len(_held(second)) == 2


async def test_a_stopped_peers_tries_are_adopted_at_once_not_at_the_next_sanity_round(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A scheduler that stops says goodbye: a peer waiting between rounds wakes and its
    next round adopts the tries (with a sanity interval of an hour: without the wake-up
    they would run unfollowed, their slots taken, until then)."""
    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from miniflow.scheduler.sanity import SanitySettings
    from miniflow.store import wakeup
    from tests.instant_launcher import InstantLauncher

    _bash_dag(tmp_path, "handed", 3)

    def scheduler() -> Scheduler:
        return Scheduler(
            engine=engine,
            launcher=InstantLauncher(hold=True),
            dags_folder=tmp_path,
            settings=SchedulerSettings(
                schedule_runs=False, idle_wait=60.0, sanity=SanitySettings(interval=3600.0)
            ),
        )

    leaving, staying = scheduler(), scheduler()
    left = False
    try:
        await leaving.start()
        await _trigger_and_tick(leaving, engine, "handed", rounds=2)  # also takes the lock
        held = set(leaving.launcher.held)  # type: ignore[attr-defined]
        assert len(held) == 3
        await staying.start()
        await staying.tick()  # its sanity round: the lock is held, nothing to adopt
        assert staying.launcher.adopted == []  # type: ignore[attr-defined]
        async with wakeup.Listener(engine, woken=staying.woken, left=staying.peer_left) as listener:
            await asyncio.wait_for(listener.listening.wait(), 10)
            staying.woken.clear()  # set on listening: what was announced before
            idle = asyncio.create_task(staying._wait(staying.settings.idle_wait))
            await asyncio.sleep(0)  # the wait has begun
            left = True
            await leaving.close()
            await asyncio.wait_for(idle, 10)
        await staying.tick()
        adopted = {key for key, _ in staying.launcher.adopted}  # type: ignore[attr-defined]
        assert adopted == held
    finally:
        if not left:
            await leaving.close()
        await staying.close()


async def test_a_scheduler_busy_longer_than_the_instance_timeout_is_not_taken_for_dead(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    """Its start-up (the launcher, adoption) or a long round (the first parse on a loaded
    machine) may outlast the instance timeout: heartbeats go on between rounds, so a peer
    never takes a working scheduler for dead (it did, and then followed its processes)."""
    from datetime import timedelta

    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from miniflow.store import instances as store_instances
    from tests.instant_launcher import InstantLauncher

    class SlowStart(InstantLauncher):
        def __init__(self) -> None:
            super().__init__()
            self.go = asyncio.Event()

        async def start(self) -> None:
            await self.go.wait()

    launcher = SlowStart()
    busy = Scheduler(
        engine=engine,
        launcher=launcher,
        dags_folder=tmp_path,
        settings=SchedulerSettings(
            schedule_runs=False, instance_heartbeat=0.1, instance_timeout=0.5
        ),
    )
    sessions = store_engine.sessionmaker(engine)
    starting = asyncio.create_task(busy.start())
    try:

        async def rows() -> list[store_instances.Instance]:
            async with store_engine.transaction(sessions) as session:
                return await store_instances.list_all(session)

        deadline = time.monotonic() + 30
        while not (found := await rows()) or (
            found[0].heartbeat_at - found[0].started_at < timedelta(seconds=1.5)
        ):
            assert time.monotonic() < deadline, f"no heartbeat while starting: {found}"
            assert not starting.done()
            await asyncio.sleep(0.05)
        # heartbeats went on three instance timeouts into its start-up
        launcher.go.set()
        await asyncio.wait_for(starting, 10)
    finally:
        launcher.go.set()
        await starting
        await busy.close()


async def test_tries_adopted_while_their_claimer_paused_before_the_launch_are_not_launched(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A scheduler frozen between its claim's commit and the launch may be taken for dead;
    the peer that adopts those tries relaunches them. When it thaws, the launch it was
    about to make must not run them a second time (a Bash task has no claim of its own)."""
    from sqlalchemy import update

    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from miniflow.store.models import TaskAttempt
    from tests.instant_launcher import InstantLauncher

    _bash_dag(tmp_path, "two", 2)
    a = Scheduler(
        engine=engine,
        launcher=InstantLauncher(hold=True),
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, instance_timeout=30.0),
    )
    launch = a._launch
    paused: list[int] = []

    async def pause_then_launch(claimed: Any, stats: Any) -> None:
        if claimed is not None:
            claimed.made_at -= 30.0  # frozen for the instance timeout...
            async with store_engine.transaction(a.sessions) as session:
                await session.execute(  # ...while a peer adopted these tries
                    update(TaskAttempt).values(scheduler_id="a-peer-that-adopted")
                )
            paused.append(len(claimed.chosen))
        await launch(claimed, stats)

    a._launch = pause_then_launch  # type: ignore[method-assign]
    await a.start()
    try:
        await _trigger_and_tick(a, engine, "two", rounds=3)
        assert paused and paused[0] == 2
        assert a.launcher.launched == []  # type: ignore[attr-defined]
        assert not a.inflight
    finally:
        await a.close()


async def test_launches_the_launcher_found_paused_are_made_again_only_if_still_ours(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Paused inside the launch itself (past the check before it), a scheduler's launcher
    refuses launches decided too long ago. The scheduler launches again those tries it
    still owns, and leaves the one a peer adopted meanwhile."""
    from sqlalchemy import update

    from miniflow.launchers.base import LaunchResult, TaskSpec
    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from miniflow.store.models import TaskAttempt, TaskInstance
    from tests.instant_launcher import InstantLauncher

    _bash_dag(tmp_path, "two", 2)
    sessions = store_engine.sessionmaker(engine)

    class PausedOnce(InstantLauncher):
        paused: list[str] = []

        async def launch(self, specs: Sequence[TaskSpec]) -> list[LaunchResult]:
            if self.paused:
                return await super().launch(specs)
            self.paused.extend(s.key.task_id for s in specs)
            async with store_engine.transaction(sessions) as session:
                t0 = select(TaskInstance.id).where(TaskInstance.task_id == "t0")
                await session.execute(  # a peer took t0 over while this one was paused
                    update(TaskAttempt)
                    .where(TaskAttempt.ti_id.in_(t0.scalar_subquery()))
                    .values(scheduler_id="a-peer-that-adopted")
                )
            return [
                LaunchResult(s.key, None, error="paused", retryable=True, paused=True)
                for s in specs
            ]

    a = Scheduler(
        engine=engine,
        launcher=PausedOnce(hold=True),
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, instance_timeout=30.0),
    )
    await a.start()
    try:
        await _trigger_and_tick(a, engine, "two", rounds=3)
        assert sorted(PausedOnce.paused) == ["t0", "t1"]
        assert [s.key.task_id for s in a.launcher.launched] == ["t1"]  # type: ignore[attr-defined]
        assert [k.task_id for k in a.inflight] == ["t1"]
    finally:
        await a.close()


async def test_a_dead_peer_frozen_inside_a_transaction_is_cut_off_and_its_tries_adopted(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    """A scheduler frozen in the middle of a statement keeps its transaction's row locks,
    and the server's idle-in-transaction timeout does not end a session that is inside
    an extended-protocol exchange. The peer that takes it for dead ends its sessions
    (named for its instance), so the adoption does not wait for it to thaw."""
    from datetime import UTC, datetime

    from miniflow.scheduler.core import Scheduler, new_scheduler_id
    from miniflow.store import fencing

    _bash_dag(tmp_path, "three", 3)
    start = datetime.now(UTC)
    frozen_id = new_scheduler_id(peer=True)
    frozen_engine = store_engine.create_engine(
        db_url, application_name=fencing.session_name(frozen_id)
    )

    def scheduler(on: AsyncEngine, scheduler_id: str | None = None) -> Scheduler:
        return _holding_scheduler(on, tmp_path, start, scheduler_id)

    frozen, peer = scheduler(frozen_engine, frozen_id), scheduler(engine)
    await frozen.start()
    try:
        await _trigger_and_tick(frozen, engine, "three", rounds=5)
        held = set(frozen.launcher.held)  # type: ignore[attr-defined]
        assert len(held) == 3
        # Frozen inside a transaction that holds its tries' rows.
        stuck = await frozen_engine.connect()
        await stuck.begin()
        await stuck.execute(text("SELECT * FROM task_attempt FOR UPDATE"))
        await peer.start()
        peer.clock.advance(31)  # type: ignore[attr-defined]
        await peer._heartbeat_instance()
        await asyncio.wait_for(peer.sanity.round(peer, peer.clock.now()), 20)
        assert {k for k, _ in peer.launcher.adopted} == held  # type: ignore[attr-defined]
        with pytest.raises(DBAPIError):
            await stuck.execute(text("SELECT 1"))  # its session was ended
        await stuck.invalidate()
    finally:
        await peer.close()
        await frozen.close()
        await frozen_engine.dispose()
