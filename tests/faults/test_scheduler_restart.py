"""The scheduler process dies (SIGKILL) or is stopped (SIGTERM) mid-run and restarts.

Task processes live in their own sessions and outlive the scheduler; the next
scheduler adopts them from the state dir's launch markers. Nothing may run twice,
nothing may be lost, and no retry may be spent on the scheduler's own death.
"""

from __future__ import annotations

import signal

import pytest

from tests.faults.dags.layered import Extra, read_lines
from tests.faults.harness import Harness
from tests.faults.invariants import check

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(100)]


async def test_baseline_without_faults(harness: Harness) -> None:
    """The control row of the table: the same DAG with nothing injected."""
    h = harness
    h.write(h.layered())
    await h.trigger()
    h.start_scheduler()
    result = await check(h)
    assert result.ok, result.explain(h.log_tail())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_scheduler_stopped_three_times_in_one_run(harness: Harness, sig: int) -> None:
    h = harness
    h.write(h.layered(seconds=0.3))
    await h.trigger()
    h.start_scheduler()

    await h.wait_successes(5)  # early: the first layer in flight
    h.stop_scheduler(sig)
    await h.fault("scheduler stopped with running tasks")
    launched = len(await h.attempts())
    h.start_scheduler()

    async def relaunching() -> bool:  # the new scheduler has just claimed new work
        return len(await h.attempts()) > launched

    await h.until(relaunching, 30, "the restarted scheduler to launch a task")
    h.stop_scheduler(sig)
    await h.fault("scheduler stopped right after launching")
    h.start_scheduler()

    await h.wait_successes(35)  # late: most of the grid done, the rest in flight
    h.stop_scheduler(sig)
    await h.fault("scheduler stopped late in the run")
    h.start_scheduler()

    result = await check(h)
    assert result.ok, result.explain(h.log_tail())
    assert any("adopting" in log.read_text() for log in h.logs[1:]), h.log_tail()


async def test_sigterm_leaves_a_long_task_running_and_the_restart_records_it_once(
    harness: Harness,
) -> None:
    h = harness
    h.write(h.layered().with_extras(Extra("long", "python", seconds=8)))
    await h.trigger()
    h.start_scheduler()
    pid = await h.wait_began("long")
    await h.wait_successes(5)

    problems = []
    took = h.stop_scheduler(signal.SIGTERM)
    if took > 5:
        problems.append(f"the scheduler took {took:.1f}s to exit on SIGTERM (a 8s task ran)")
    if pid not in {p.pid for p in h.processes()}:
        problems.append("the long task did not outlive the scheduler")
    if ("long", 1) in {(t, n) for t, n, _ in read_lines(h.proof)}:
        problems.append("the long task had already finished when the scheduler exited")

    # Let work finish while no scheduler watches: its exits must still be recorded.
    done_before = len(read_lines(h.proof))

    async def progressed() -> bool:
        return len(read_lines(h.proof)) > done_before or not h.processes()

    await h.until(progressed, 15, "a task to finish while the scheduler is down")
    await h.fault("scheduler restarted after a SIGTERM during a long task")
    h.start_scheduler()

    result = await check(h, problems=problems)
    assert result.ok, result.explain(h.log_tail())
    (attempt,) = await h.attempts("long")
    assert (attempt.try_number, attempt.state, attempt.exit_code) == (1, "success", 0)
