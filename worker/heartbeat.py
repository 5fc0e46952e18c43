"""The heartbeat: proof of life for the scheduler, and the worker's fence.

A background asyncio task writes `heartbeat_at` every `heartbeat_interval`
seconds, each in its own short transaction (a long one would hold SQLite's
write lock and pin a Postgres snapshot). `task_instances.heartbeat` is a
conditional UPDATE on (id, try, state=running); when it matches nothing, a
newer try exists or the scheduler ended this one, and the loop returns
"fenced" (fenced out): the runner then stops the task and exits without
recording anything, because the database no longer belongs to this try.

A database error in one heartbeat is logged and retried at the next
interval: a blip must not kill a long task. If no heartbeat has landed for
`lost_after` seconds (the scheduler's zombie threshold), the scheduler has
already given this try up or is about to: the loop returns "lost" and the
runner stops the task itself and exits non-zero, rather than run on unseen.

Stopping uses an event rather than cancellation, so a heartbeat already
inside its transaction finishes cleanly before the outcome is written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

from miniflow_worker.clock import now
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from miniflow.store import task_instances
from miniflow.store.engine import transaction

# A heartbeat waiting longer than this (e.g. on SQLite's busy lock) counts as failed.
HEARTBEAT_TIMEOUT = 30.0

Ending = Literal["fenced", "lost"] | None


class Heartbeat:
    """Run with `task = asyncio.create_task(hb.run())`; `await hb.stop()` before the outcome."""

    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        ti_id: int,
        try_number: int,
        interval: float,
        log: Callable[[str], None],
        lost_after: float | None = None,
    ) -> None:
        self.factory = factory
        self.ti_id = ti_id
        self.try_number = try_number
        self.interval = interval
        self.log = log
        self.lost_after = lost_after
        self.beats = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[Ending] | None = None

    def start(self) -> asyncio.Task[Ending]:
        self._task = asyncio.create_task(self.run(), name="miniflow-heartbeat")
        return self._task

    async def run(self) -> Ending:
        """Beat until stopped (None), fenced out ("fenced") or unable to beat ("lost")."""
        last_ok = time.monotonic()
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
                return None
            except TimeoutError:
                pass
            if self.lost_after is not None and time.monotonic() - last_ok > self.lost_after:
                self.log(
                    f"no heartbeat recorded for {time.monotonic() - last_ok:.0f}s "
                    f"(limit {self.lost_after:g}s): stopping the task"
                )
                return "lost"
            limit = HEARTBEAT_TIMEOUT
            if self.lost_after is not None:  # a blocked beat must not outlive the limit
                limit = min(limit, max(0.1, self.lost_after - (time.monotonic() - last_ok)))
            try:
                async with asyncio.timeout(limit):
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
                return "fenced"
            last_ok = time.monotonic()
            self.beats += 1
        return None

    async def stop(self) -> None:
        """Stop beating; waits for a heartbeat in flight to commit or roll back."""
        self._stop.set()
        if self._task is not None and not self._task.done():
            try:
                await self._task
            except Exception:  # already logged by run(); nothing to add here
                pass
