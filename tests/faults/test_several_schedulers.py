"""Three `miniflow scheduler` processes on one PostgreSQL database, and what happens to
them: one is SIGKILLed, the sanity lock's holder is SIGKILLed, one is frozen (SIGSTOP)
past the instance timeout and thawed, all three are replaced one by one.

Each scenario ends with the suite's invariant checker (`invariants.check`): every task
executed exactly once (proof file), every try launched once, no retry the scenario did
not cause, no attempt left open, no process left behind. The figures the issue asks
for (time to adoption, to a new lock holder) go into the fault report row's problems
only when a bound is broken; they are printed for the closing note.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from miniflow.store import instances as store_instances
from miniflow.store import sanity_lock, states
from miniflow.store.models import TaskAttempt, TaskInstance
from tests.faults.dags.layered import Extra
from tests.faults.harness import Harness
from tests.faults.invariants import check

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

FAST = {  # seconds, not the production defaults: the scenarios wait for these
    "MINIFLOW_SCHEDULER_HEARTBEAT": "1",
    "MINIFLOW_SCHEDULER_TIMEOUT": "4",
    "MINIFLOW_SANITY_INTERVAL": "1",
}


def _start(h: Harness, count: int) -> list[subprocess.Popen[bytes]]:
    return [h.start_scheduler() for _ in range(count)]


async def _registered(h: Harness, count: int) -> list[store_instances.Instance]:
    """Wait until `count` instances are registered and open; returns the open ones."""

    async def enough() -> list[store_instances.Instance] | None:
        rows = [i for i in await h.read(store_instances.list_all) if i.ended_at is None]
        return rows if len(rows) >= count else None

    found: list[store_instances.Instance] = await h.until(
        enough, 30, f"{count} schedulers to register"
    )
    return found


def _proc_of(h: Harness, instance: store_instances.Instance) -> subprocess.Popen[bytes]:
    return next(p for p in h.schedulers if p.pid == instance.pid)


async def _open_owned_by(h: Harness, instance_id: str) -> int:
    query = select(func.count()).where(
        TaskAttempt.ended_at.is_(None), TaskAttempt.scheduler_id == instance_id
    )
    async with h.sessions() as session:
        return int((await session.execute(query)).scalar_one())


async def _lock_holder(h: Harness) -> str | None:
    """The instance id holding the sanity lock (from its connection's application_name)."""
    async with h.sessions() as session:
        return await sanity_lock.holder_id(session)


async def _owners(h: Harness) -> Counter[str]:
    return Counter(str(a.scheduler_id) for a in await h.attempts())


class ActiveSampler:
    """Counts the run's queued and running task instances every 100 ms."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.peak = 0
        self.samples = 0
        self._task = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        query = select(func.count()).where(TaskInstance.state.in_(states.ACTIVE))
        while True:
            async with self.h.sessions() as session:
                active = int((await session.execute(query)).scalar_one())
            self.peak = max(self.peak, active)
            self.samples += 1
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_three_schedulers_share_a_500_task_run_within_global_limits(
    harness: Harness,
) -> None:
    h = harness
    h.settings.update(FAST, MINIFLOW_PARALLELISM="12")
    h.write(h.layered(layers=10, width=50, seconds=0.05))
    await h.trigger()
    sampler = ActiveSampler(h)
    _start(h, 3)
    result = await check(h, run_timeout=180)
    await sampler.stop()
    assert result.ok, result.explain(h.log_tail())
    owners = await _owners(h)
    print(f"\nseveral: attempts per scheduler {dict(owners)}, peak active {sampler.peak}")
    assert sampler.samples > 20
    assert sampler.peak <= 12, f"{sampler.peak} tasks active at once with parallelism 12"
    assert len(owners) == 3, f"the work was not spread over the three: {owners}"


async def test_a_killed_scheduler_s_tries_are_adopted_once(harness: Harness) -> None:
    h = harness
    h.settings.update(FAST, MINIFLOW_PARALLELISM="12")
    h.write(h.layered(layers=6, width=30, seconds=0.3))
    await h.trigger()
    _start(h, 3)
    await _registered(h, 3)
    await h.wait_successes(40)
    counts = {i.id: await _open_owned_by(h, i.id) for i in await _registered(h, 3)}
    victim_id = max(counts, key=lambda i: counts[i])
    victim = next(i for i in await _registered(h, 3) if i.id == victim_id)
    # Frozen while its tries are read: running on, it could close one of them itself
    # between the read and the kill (legitimately its own then).
    _proc_of(h, victim).send_signal(signal.SIGSTOP)
    held = {
        (a.task_id, a.try_number)
        for a in await h.attempts()
        if a.ended_at is None and a.scheduler_id == victim_id
    }
    h.stop_scheduler(signal.SIGKILL, proc=_proc_of(h, victim))
    killed_at = time.monotonic()
    await h.fault(f"scheduler holding {counts[victim_id]} tries SIGKILLed")

    async def adopted() -> bool:
        return await _open_owned_by(h, victim_id) == 0

    await h.until(adopted, 20, "the survivors to adopt the killed scheduler's tries")
    took = time.monotonic() - killed_at
    print(f"\nseveral: {counts[victim_id]} tries of a SIGKILLed scheduler adopted in {took:.1f}s")
    result = await check(h, run_timeout=120)
    assert result.ok, result.explain(h.log_tail())
    closers = {(a.task_id, a.try_number): a.scheduler_id for a in await h.attempts()}
    assert victim_id not in {closers[k] for k in held}, "a try of the dead stayed its own"


async def test_the_sanity_lock_moves_when_its_holder_dies_and_zombies_are_still_found(
    harness: Harness,
) -> None:
    h = harness
    h.settings.update(
        FAST,
        MINIFLOW_PARALLELISM="8",
        MINIFLOW_HEARTBEAT_INTERVAL="0.5",
        MINIFLOW_ZOMBIE_THRESHOLD="3",
    )
    gate = h.tmp / "freeze-now"
    freeze = (
        f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.05)\n"
        "if os.environ['MF_TRY'] == '1':\n"
        "    import threading\n"
        "    signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)\n"
    )
    # Not os.kill(os.getpid(), ...): a process-directed SIGSTOP may be taken by the
    # worker's main thread, and the body's thread runs on (writing its proof line)
    # until the group stop reaches it; 64 of 150 tries under load on 2 cores.
    # Directed at the calling thread, the stop happens before pthread_kill returns.
    h.write(
        h.layered(layers=4, width=10, seconds=0.2).with_extras(
            Extra("zombie", "python", before=freeze, settings="retries=1")
        )
    )
    await h.trigger()
    _start(h, 3)
    await _registered(h, 3)

    async def holder() -> str | None:
        return await _lock_holder(h)

    first = await h.until(holder, 20, "a scheduler to hold the sanity lock")
    (first_instance,) = [i for i in await _registered(h, 3) if i.id == first]
    h.stop_scheduler(signal.SIGKILL, proc=_proc_of(h, first_instance))
    killed_at = time.monotonic()
    await h.fault("the sanity lock holder SIGKILLed")

    async def new_holder() -> str | None:
        found = await _lock_holder(h)
        return found if found not in (None, first) else None

    second = await h.until(new_holder, 15, "another scheduler to take the sanity lock")
    took = time.monotonic() - killed_at
    print(f"\nseveral: the sanity lock moved from {first} to {second} in {took:.1f}s")
    gate.touch()  # the zombie freezes itself only now, after the holder's death
    result = await check(h, retried={"zombie"}, run_timeout=90)
    assert result.ok, result.explain(h.log_tail())
    first_try = next(a for a in await h.attempts("zombie") if a.try_number == 1)
    assert "heartbeat lost" in f"{first_try.reason} {first_try.message}", first_try.message


async def test_a_frozen_scheduler_is_fenced_out_and_harms_nothing_when_it_thaws(
    harness: Harness,
) -> None:
    h = harness
    h.settings.update(FAST, MINIFLOW_PARALLELISM="12")
    h.write(h.layered(layers=6, width=30, seconds=0.3))
    await h.trigger()
    _start(h, 3)
    await _registered(h, 3)

    async def holder() -> str | None:
        return await _lock_holder(h)

    # Freeze the lock holder: the hardest case, its peers must fence it out of the lock.
    frozen_id = await h.until(holder, 20, "a scheduler to hold the sanity lock")
    await h.wait_successes(30)
    frozen = next(i for i in await _registered(h, 3) if i.id == frozen_id)
    proc = _proc_of(h, frozen)

    async def owning() -> int:
        return await _open_owned_by(h, frozen_id)

    owned = await h.until(owning, 20, "the lock holder to own tries in flight", interval=0.02)
    proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:

        async def adopted() -> bool:
            return await _open_owned_by(h, frozen_id) == 0

        await h.until(adopted, 25, "the peers to adopt the frozen scheduler's tries")
        took = time.monotonic() - stopped_at

        async def peer_holds() -> bool:
            return await _lock_holder(h) not in (None, frozen_id)

        await h.until(peer_holds, 10, "a peer to take the frozen holder's sanity lock")
    finally:
        proc.send_signal(signal.SIGCONT)
    await h.fault("frozen scheduler thawed")
    print(f"\nseveral: {owned} tries of a frozen scheduler adopted in {took:.1f}s")
    result = await check(h, run_timeout=120)
    assert result.ok, result.explain(h.log_tail())
    log = h.logs[h.schedulers.index(proc)].read_text()
    assert "taken for dead" in log, log[-3000:]


async def test_a_rolling_restart_of_all_three_loses_and_doubles_nothing(
    harness: Harness,
) -> None:
    h = harness
    h.settings.update(FAST, MINIFLOW_PARALLELISM="12")
    h.write(h.layered(layers=10, width=50, seconds=0.05))
    await h.trigger()
    began = time.monotonic()
    old = _start(h, 3)
    ids = {i.pid: i.id for i in await _registered(h, 3)}
    handed: list[float] = []
    for n, proc in enumerate(old, start=1):
        await h.wait_successes(100 * n)
        h.start_scheduler()
        await _registered(h, 4)
        took = h.stop_scheduler(signal.SIGTERM, proc=proc)
        assert took < 10, f"an old scheduler took {took:.1f}s to stop"
        stopped = time.monotonic()
        await h.fault(f"scheduler {n} of 3 replaced")

        async def handed_over(instance_id: str = ids[proc.pid]) -> bool:
            return await _open_owned_by(h, instance_id) == 0

        # It said goodbye: a peer adopts its tries in its next sanity round, no timeout.
        await h.until(handed_over, 10, "a peer to adopt the stopped scheduler's tries")
        handed.append(time.monotonic() - stopped)
    print(f"\nseveral: tries of a SIGTERMed scheduler adopted in {[round(t, 1) for t in handed]}s")
    result = await check(h, run_timeout=180)
    assert result.ok, result.explain(h.log_tail())
    print(f"\nseveral: rolling restart of three, 501 tasks in {time.monotonic() - began:.1f}s")
