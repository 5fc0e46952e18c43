"""PostgreSQL misbehaves mid-run: connections killed over and over, a table locked.

The scheduler rolls a failed round back and retries it; workers retry their
heartbeats and their final write. Afterwards heartbeats must resume, the run
must finish, and the invariants hold: nothing lost, nothing run twice.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.dags.layered import Extra
from tests.faults.harness import Harness
from tests.faults.invariants import check
from tests.faults.pgfaults import lock_table, terminate_backends

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(100)]


def _long(h: Harness) -> Extra:
    """A @task that runs until the test opens its gate (at most 30 s)."""
    gate = str(h.marks / "release-long")
    wait = f"""
        deadline = time.time() + 30
        while not os.path.exists({gate!r}) and time.time() < deadline:
            time.sleep(0.05)
    """
    return Extra("long", "python", before=wait)


async def _heartbeat_after(h: Harness, task_id: str, after: object, timeout: float) -> None:
    """Wait for the still-running try of `task_id` to heartbeat after `after`."""

    async def beat() -> bool:
        ti = await h.ti(task_id)
        assert ti.state == "running", f"{task_id} is {ti.state}, not running through the fault"
        return ti.heartbeat_at is not None and ti.heartbeat_at > after  # type: ignore[operator]

    await h.until(beat, timeout, f"{task_id}'s heartbeat to resume", interval=0.1)


async def test_connections_terminated_repeatedly(harness: Harness) -> None:
    h = harness
    h.settings["MINIFLOW_HEARTBEAT_INTERVAL"] = "0.5"
    h.write(h.layered(seconds=0.3).with_extras(_long(h)))
    await h.trigger()
    h.start_scheduler()
    await h.wait_began("long")
    await h.wait_successes(8)

    killed = await terminate_backends(h.db_url, seconds=4, every=0.5)
    storm_over = await h.fault(f"{killed} backends terminated over 4s")
    assert killed > 0, "the storm hit nothing"

    problems = []
    try:
        await _heartbeat_after(h, "long", storm_over, timeout=5)
    except AssertionError as exc:
        problems.append(str(exc))
    (h.marks / "release-long").touch()
    result = await check(h, problems=problems)
    assert result.ok, result.explain(h.log_tail())


async def test_task_instance_table_locked(harness: Harness) -> None:
    h = harness
    h.settings["MINIFLOW_HEARTBEAT_INTERVAL"] = "0.5"
    h.write(h.layered(seconds=0.3).with_extras(_long(h)))
    await h.trigger()
    h.start_scheduler()
    await h.wait_began("long")
    await h.wait_successes(5)

    async with lock_table(h.db_url, "task_instance") as held:
        # The fault is the lock's duration: nothing to wait for but the clock. (The
        # harness does not read the database meanwhile: its reads would queue too.)
        await asyncio.sleep(20)  # the 20 s: below the zombie threshold (30 s)
    unlocked = await h.fault("task_instance locked for 20s")
    assert held.max_waiting > 0, "the lock blocked nobody"

    problems = []
    try:
        await _heartbeat_after(h, "long", unlocked, timeout=5)
    except AssertionError as exc:
        problems.append(str(exc))
    (h.marks / "release-long").touch()
    result = await check(h, problems=problems)
    assert result.ok, result.explain(h.log_tail())
