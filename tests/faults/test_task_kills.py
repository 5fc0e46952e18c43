"""Task processes die or freeze under the local launcher; the try fails and is retried.

A process SIGKILLed from outside (or by itself, as the OOM killer would) exits
137: the try fails with that code and the task's retry runs it again. A worker
frozen with SIGSTOP stops heartbeating; the sanity loop must declare the try
lost ("heartbeat lost"), kill it, retry it, and the frozen process must never
complete its body afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from miniflow.store.records import AttemptRecord
from tests.faults.dags.layered import Extra, read_lines
from tests.faults.harness import Harness
from tests.faults.invariants import check

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(100)]


async def _tries(h: Harness, task_id: str) -> list[tuple[int, str, int | None]]:
    return [(a.try_number, a.state, a.exit_code) for a in await h.attempts(task_id)]


async def test_task_processes_sigkilled_from_outside_are_retried(harness: Harness) -> None:
    h = harness
    victims = ("victim_bash", "victim_py")
    h.write(
        h.layered().with_extras(
            Extra("victim_bash", "bash", seconds=3, settings="retries=1"),
            Extra("victim_py", "python", seconds=3, settings="retries=1"),
        )
    )
    await h.trigger()
    h.start_scheduler()
    for victim in victims:
        await h.wait_began(victim)
        pid = await h.handle_pid(victim)  # the attempt's process: the pod's "container"
        os.kill(pid, signal.SIGKILL)
    await h.fault("a Bash task's process and a @task worker SIGKILLed")

    result = await check(h, retried=victims, recovered_by=victims)
    assert result.ok, result.explain(h.log_tail())
    for victim in victims:
        assert await _tries(h, victim) == [(1, "up_for_retry", 137), (2, "success", 0)]


async def test_worker_killed_like_by_the_oom_killer_is_retried(harness: Harness) -> None:
    """`oom` dies on its first try only (a marker file decides); `oom_always` dies on
    every try and must end failed once its retries are spent: the run fails, nothing
    else does."""
    h = harness
    mark = str(h.marks / "oom-once")
    oom = Extra(
        "oom",
        "python",
        seconds=0.2,
        settings="retries=1",
        before=f"""
            if not os.path.exists({mark!r}):
                open({mark!r}, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    always = Extra(
        "oom_always", "python", settings="retries=1", before="os.kill(os.getpid(), signal.SIGKILL)"
    )
    h.write(h.layered().with_extras(oom, always))
    await h.trigger()
    h.start_scheduler()
    await h.wait_began("oom")
    await h.fault("worker SIGKILLed itself")

    result = await check(
        h,
        retried={"oom", "oom_always"},
        expect_states={"oom_always": "failed"},
        recovered_by=("oom",),
    )
    assert result.ok, result.explain(h.log_tail())
    assert await _tries(h, "oom") == [(1, "up_for_retry", 137), (2, "success", 0)]
    assert await _tries(h, "oom_always") == [(1, "up_for_retry", 137), (2, "failed", 137)]


async def test_frozen_worker_is_declared_lost_and_never_completes(harness: Harness) -> None:
    h = harness
    h.settings.update(
        MINIFLOW_HEARTBEAT_INTERVAL="0.5",
        MINIFLOW_ZOMBIE_THRESHOLD="3",
        MINIFLOW_SANITY_INTERVAL="0.5",
    )
    h.write(h.layered().with_extras(Extra("frozen", "python", seconds=5, settings="retries=1")))
    await h.trigger()
    h.start_scheduler()
    await h.wait_began("frozen")
    pid = await h.handle_pid("frozen")
    os.kill(pid, signal.SIGSTOP)  # alive to the kernel, silent to the database
    await h.fault("worker frozen")

    errors: list[str] = []  # the task instance's error while it is between tries

    async def first_try_ended() -> AttemptRecord | None:
        ti = await h.ti("frozen")
        if ti.try_number == 1 and ti.state not in ("queued", "running") and ti.error:
            errors.append(ti.error)
        first = next((a for a in await h.attempts("frozen") if a.try_number == 1), None)
        return first if first is not None and first.ended_at is not None else None

    problems = []
    try:
        first = await h.until(first_try_ended, 15, "the sanity loop to end the frozen try")
    except AssertionError as exc:
        first = None
        problems.append(f"{exc} (zombie threshold 3s, sanity interval 0.5s)")
    # Thaw it: if it still exists it must find itself fenced out and complete nothing.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)

    async def gone() -> bool:
        return pid not in {p.pid for p in h.processes()}

    with contextlib.suppress(AssertionError):  # a survivor shows up as a leak below
        await h.until(gone, 8, "the thawed worker to exit")
    if first is not None:
        why = " ".join([str(first.reason), str(first.message), *errors]).lower()
        if "heartbeat lost" not in why:
            problems.append(
                f"frozen try 1 ended with reason {first.reason!r}: {first.message!r}, "
                f"errors {errors}; expected 'heartbeat lost'"
            )
    result = await check(h, retried={"frozen"}, recovered_by=("frozen",), problems=problems)
    assert result.ok, result.explain(h.log_tail())
    assert ("frozen", 1) not in {(t, n) for t, n, _ in read_lines(h.proof)}
    assert [s for _, s, _ in await _tries(h, "frozen")] == ["up_for_retry", "success"]
