"""The heartbeat: proof of life for the scheduler, and the worker's fence.

A background asyncio task writes `heartbeat_at` every `heartbeat_interval`
seconds, each in its own short transaction (a long one would hold SQLite's
write lock and pin a Postgres snapshot). `task_instances.heartbeat` is a
conditional UPDATE on (id, try, state=running); when it matches nothing, a
newer try exists or the scheduler ended this one, and the loop returns
`True` ("fenced out"): the runner then stops the task and exits without
recording anything, because the database no longer belongs to this try.

A database error in one heartbeat is logged and retried at the next
interval: a blip must not kill a long task. If the database stays away, the
scheduler's zombie detection (stale `heartbeat_at`) decides, not the worker.

Stopping uses an event rather than cancellation, so a heartbeat already
inside its transaction finishes cleanly before the outcome is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from miniflow_worker.clock import now
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from miniflow.store import task_instances
from miniflow.store.engine import transaction

# A heartbeat waiting longer than this (e.g. on SQLite's busy lock) counts as failed.
HEARTBEAT_TIMEOUT = 30.0


class Heartbeat:
    """Run with `task = asyncio.create_task(hb.run())`; `await hb.stop()` before the outcome."""

    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        ti_id: int,
        try_number: int,
        interval: float,
        log: Callable[[str], None],
    ) -> None:
        self.factory = factory
        self.ti_id = ti_id
        self.try_number = try_number
        self.interval = interval
        self.log = log
        self.beats = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[bool] | None = None

    def start(self) -> asyncio.Task[bool]:
        self._task = asyncio.create_task(self.run(), name="miniflow-heartbeat")
        return self._task

    async def run(self) -> bool:
        """Beat until stopped (returns False) or fenced out (returns True)."""
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
                return False
            except TimeoutError:
                pass
            try:
                async with asyncio.timeout(HEARTBEAT_TIMEOUT):
                    async with transaction(self.factory) as session:
                        alive = await task_instances.heartbeat(
                            session, self.ti_id, self.try_number, now()
                        )
            except Exception as exc:  # transient: log, try again next interval
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                self.log(
                    f"heartbeat failed ({type(exc).__name__}: "
                    f"{reason[0] if reason else ''}); retrying in {self.interval:g}s"
                )
                continue
            if not alive:
                return True
            self.beats += 1
        return False

    async def stop(self) -> None:
        """Stop beating; waits for a heartbeat in flight to commit or roll back."""
        self._stop.set()
        if self._task is not None and not self._task.done():
            try:
                await self._task
            except Exception:  # already logged by run(); nothing to add here
                pass
