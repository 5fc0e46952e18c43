"""A sensor's try (`@task.sensor`): poke, then succeed, wait, reschedule or time out.

Step 4 of a run (see `miniflow_worker.runner`) for a Python task whose
`python_mode` is "sensor". The sensor's `timeout` counts from its first poke,
which the database keeps across the tries of a rescheduled sensor
(`task_instances.start_poking`); the task's own `timeout` still bounds each try.

- A truthy poke: success with the value as the result.
- A falsy poke after the sensor's timeout: failed without a retry (as Airflow's
  sensor timeout), or skipped with `soft_fail`.
- A falsy poke before it: mode "poke" sleeps `poke_interval` (never past the
  timeout) and pokes again in the same try; mode "reschedule" ends the try as
  `up_for_reschedule`, the next poke due `poke_interval` later (never past the
  timeout), in one transaction (`Recorder.reschedule`).

This module never imports the scheduler, the launchers or kubernetes_asyncio.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from miniflow_worker import execute
from miniflow_worker.clock import now

from miniflow.authoring.serialized import SensorSettings

from .outcome import Recorder  # relative, so mypy sees its type (see `runner`)

Race = Callable[[asyncio.Future[Any], float | None], Awaitable[tuple[str, Any]]]


def next_poke(settings: SensorSettings, first_poke: datetime, at: datetime) -> datetime | None:
    """When to poke next after a "not yet" at `at`; None when the sensor timed out."""
    deadline = first_poke + timedelta(seconds=settings["timeout"])
    if at >= deadline:
        return None
    return min(at + timedelta(seconds=settings["poke_interval"]), deadline)


def timeout_message(settings: SensorSettings, first_poke: datetime) -> str:
    verdict = "skipped (soft_fail)" if settings["soft_fail"] else "failed"
    return (
        f"sensor timed out: nothing yet {settings['timeout']:g}s after its first poke at "
        f"{first_poke.isoformat(timespec='seconds')}; {verdict}"
    )


async def sense(
    execution: execute.PythonExecution,
    settings: SensorSettings,
    first_poke: datetime,
    *,
    recorder: Recorder,
    race: Race,
    try_timeout: float | None,
    log: Callable[[str], None],
) -> int:
    """Poke until done, rescheduled or timed out; record it; the worker's exit code."""
    try_deadline = None if try_timeout is None else time.monotonic() + try_timeout
    pokes = 0

    def left() -> float | None:
        return None if try_deadline is None else max(0.001, try_deadline - time.monotonic())

    while True:
        ran = await race(asyncio.ensure_future(execution.run()), left())
        if ran[0] != "done":
            return await recorder.interrupted(ran, execution)
        ended: execute.Ended = ran[1]
        pokes += 1
        if ended.skipped:
            return await recorder.skip(ended.error or "skipped by the task")
        if not ended.ok and ended.final:
            return await recorder.fail_final(ended.error or "poke failed")
        if not ended.ok:
            return await recorder.fail(ended.error or "poke failed", exit_code=ended.exit_code)
        if not ended.not_yet:
            log(f"sensor done after {pokes} poke(s) in this try")
            return await recorder.success({"result": ended.value})
        at = now()
        poke_at = next_poke(settings, first_poke, at)
        if poke_at is None:
            message = timeout_message(settings, first_poke)
            if settings["soft_fail"]:
                return await recorder.skip(message)
            return await recorder.fail_final(message)
        if settings["mode"] == "reschedule":
            return await recorder.reschedule(poke_at)
        wait = max(0.0, (poke_at - at).total_seconds())
        log(f"not yet; next poke in {wait:g}s")
        slept = await race(asyncio.ensure_future(asyncio.sleep(wait)), left())
        if slept[0] != "done":
            return await recorder.interrupted(slept, None)
