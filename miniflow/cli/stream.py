"""What `miniflow dags test` prints while its run goes, as Airflow's `dags test` does.

A line per task state change (read from the database, where the scheduler
records them), and each try's log lines as they arrive, prefixed with the
task id. A running try's log is followed through the launcher of the `dags
test` process, which launched it; a try that ended before it was seen running
(a quick task) has its whole log printed once it is seen ended, from the
launcher or, when its pod or file is gone, from the tail saved on its attempt.

Only presentation: it never changes the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from miniflow.errors import MiniflowError
from miniflow.launchers.base import AttemptKey, Launcher
from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import states
from miniflow.store import task_instances as store_tis
from miniflow.store.records import AttemptRecord, TaskInstanceRecord

POLL = 0.2
"""Seconds between reads of the run's task states."""

DRAIN_TIMEOUT = 10.0
"""Seconds the end of the run waits for logs still being followed."""

log = logging.getLogger(__name__)


class RunStream:
    """Prints one run's task state changes and task logs until `run` is told to stop."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        launcher: Launcher,
        run: tuple[str, str],
        out: Callable[[str], None],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self._launcher = launcher
        self._dag_id, self._run_id = run
        self._out = out
        self._clock = clock
        self._seen: dict[tuple[str, int], tuple[str, int]] = {}
        self._followers: dict[tuple[str, int, int], asyncio.Task[bool]] = {}
        self._printed: set[tuple[str, int, int]] = set()  # tries whose log is out (or going out)

    async def run(self, done: asyncio.Event) -> None:
        """Stream until `done` is set, then print the last changes and logs."""
        try:
            while not done.is_set():
                await self.poll_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), POLL)
            await self.poll_once()
            await self._drain()
        finally:
            for follower in self._followers.values():
                follower.cancel()

    async def poll_once(self) -> None:
        """Print what changed since the last poll; start or finish the tries' logs."""
        async with store_engine.transaction(self._sessions) as session:
            tis = await store_tis.list_for_run(session, self._dag_id, self._run_id)
        for ti in tis:
            now = (ti.state, ti.try_number)
            if self._seen.get((ti.task_id, ti.map_index)) == now:
                continue
            self._seen[(ti.task_id, ti.map_index)] = now
            if ti.state != states.NONE:  # every task starts there: nothing happened yet
                self._out(self._state_line(ti))
            # Earlier tries ended unseen (between two polls): their logs, in order.
            for try_number in range(1, ti.try_number):
                await self._print_ended(ti.task_id, try_number, ti.map_index)
            if ti.try_number == 0:
                continue
            if ti.state == states.RUNNING:
                self._follow(ti)
            elif ti.state in states.FINISHED or ti.state in (
                states.UP_FOR_RETRY,
                states.UP_FOR_RESCHEDULE,
            ):
                await self._print_ended(ti.task_id, ti.try_number, ti.map_index)

    def _state_line(self, ti: TaskInstanceRecord) -> str:
        ref = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        line = f"{self._clock():%H:%M:%S} {ref}: {ti.state}"
        if ti.try_number and ti.state != states.SCHEDULED:  # scheduled: the next try waits
            line += f" (try {ti.try_number})"
        if ti.state in states.FAILED_LIKE | {states.UP_FOR_RETRY} and ti.error:
            line += f": {ti.error.strip().splitlines()[-1]}"
        if ti.state == states.UP_FOR_RESCHEDULE and ti.next_retry_at is not None:
            line += f", next poke at {ti.next_retry_at:%H:%M:%S}"
        return line

    def _follow(self, ti: TaskInstanceRecord) -> None:
        key = (ti.task_id, ti.try_number, ti.map_index)
        if key in self._printed:
            return
        self._printed.add(key)
        attempt = AttemptKey(self._dag_id, self._run_id, ti.task_id, ti.try_number, ti.map_index)
        self._followers[key] = asyncio.create_task(self._stream(attempt, ti.handle))

    async def _stream(self, key: AttemptKey, handle: str | None) -> bool:
        """Print the try's log as it grows; False if it could not be read live."""
        try:
            async for line in self._launcher.read_logs(key, handle, follow=True):
                self._out(f"{key.task_ref} | {line}")
        except MiniflowError as exc:
            log.debug("cannot follow the log of %s: %s", key, exc)
            return False
        return True

    async def _print_ended(self, task_id: str, try_number: int, map_index: int = -1) -> None:
        key = (task_id, try_number, map_index)
        if key in self._printed:
            return
        self._printed.add(key)
        attempt = AttemptKey(self._dag_id, self._run_id, task_id, try_number, map_index)
        row = await self._attempt(attempt)
        if row is not None and row.started_at is not None and row.ended_at is None:
            # The task's state is final but its process still writes (a worker runs the
            # task's callbacks after recording the outcome): follow it to its exit.
            self._followers[key] = asyncio.create_task(self._stream(attempt, row.handle))
            return
        for line in await self._ended_log(attempt):
            self._out(f"{attempt.task_ref} | {line}")

    async def _attempt(self, key: AttemptKey) -> AttemptRecord | None:
        async with store_engine.transaction(self._sessions) as session:
            tries = await store_attempts.for_task(
                session, key.dag_id, key.run_id, key.task_id, key.map_index
            )
        return next((a for a in tries if a.try_number == key.try_number), None)

    async def _ended_log(self, key: AttemptKey) -> list[str]:
        attempt = await self._attempt(key)
        if attempt is None or attempt.started_at is None:
            return []  # never ran: its state line says why
        try:
            return [line async for line in self._launcher.read_logs(key, attempt.handle)]
        except MiniflowError:
            return (attempt.log_tail or "").splitlines()

    async def _drain(self) -> None:
        """Let the followed logs finish; a try that could not be followed: its saved tail."""
        followers = dict(self._followers)
        if followers:
            await asyncio.wait(followers.values(), timeout=DRAIN_TIMEOUT)
        for (task_id, try_number, map_index), follower in followers.items():
            if follower.done() and not follower.cancelled() and follower.result() is False:
                key = AttemptKey(self._dag_id, self._run_id, task_id, try_number, map_index)
                for line in await self._ended_log(key):
                    self._out(f"{key.task_ref} | {line}")
