"""Wake-ups between processes: what one process writes, another learns of at once.

A run triggered from the command line (or a task cleared, a DAG unpaused) is work
for a scheduler that may be idle, and a run's end is what `dags trigger --wait`
waits for. Without a wake-up each side would find out on its next poll (the
scheduler's idle wait is a second). Writers `announce()` inside the transaction
that makes the change; listeners (`Listener`) set an `asyncio.Event` when an
announcement arrives, and keep their periodic wait only as a fallback.

- **PostgreSQL**: `NOTIFY` on one channel. The server delivers it at commit (and
  not at all on rollback), so a listener never wakes before the change is
  visible, and every process on every host that listens gets it. The listener
  holds one connection of its own; a lost connection is re-opened with back-off
  (wake-ups missed meanwhile cost only the fallback wait).
- **SQLite**: the processes share one file on one host. `announce` touches a
  sibling file (`<database>-wake`, one byte appended) once the transaction has
  committed, and the listener looks at that file's size and modification time
  every `SQLITE_POLL` seconds: a `stat`, no database query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

log = logging.getLogger(__name__)

CHANNEL = "miniflow_wakeup"
SQLITE_POLL = 0.02  # seconds between two looks at the wake file
RECONNECT_MAX = 10.0  # seconds: the longest back-off before listening again
WAKE_FILE_MAX = 4096  # bytes: the wake file starts again from empty here
TURN_PREFIX = "turn:"
"""Topics for one scheduler (its claim turn, `scheduler.turns`): no one else wakes."""


def turn_topic(instance_id: str) -> str:
    return TURN_PREFIX + instance_id


LEFT_TOPIC = "left"
"""A scheduler stopped (said goodbye): its peers adopt its tries now, not at their next
sanity round."""


def wake_file(url: URL) -> Path | None:
    """The SQLite database's wake file; None for an in-memory database or Postgres."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(f"{url.database}-wake")


async def announce(session: AsyncSession, topic: str) -> None:
    """Wake every listener once the session's transaction commits."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_notify(:channel, :topic)"),
            {
                "channel": CHANNEL,
                "topic": topic,
            },
        )
        return
    path = wake_file(bind.engine.url)
    if path is None or session.info.get("wake_pending"):
        return
    session.info["wake_pending"] = True

    def touch(_session: Any) -> None:
        session.info.pop("wake_pending", None)
        with contextlib.suppress(OSError):  # a read-only folder: listeners fall back to polling
            _poke(path)

    def forget(_session: Any) -> None:
        session.info.pop("wake_pending", None)
        with contextlib.suppress(Exception):
            event.remove(session.sync_session, "after_commit", touch)

    event.listen(session.sync_session, "after_commit", touch, once=True)
    event.listen(session.sync_session, "after_rollback", forget, once=True)


def _poke(path: Path) -> None:
    """Append a byte: the size changes even when two pokes share one mtime tick."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(fd, b".") and os.fstat(fd).st_size >= WAKE_FILE_MAX:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


class Listener:
    """Sets `woken` whenever some process announces; `async with` keeps it listening."""

    def __init__(
        self,
        engine: AsyncEngine,
        woken: asyncio.Event | None = None,
        turn: tuple[str, asyncio.Event] | None = None,
        left: asyncio.Event | None = None,
    ) -> None:
        self.engine = engine
        self.woken = woken if woken is not None else asyncio.Event()
        self.turn = turn
        """(instance id, event): set when that scheduler is handed the claim turn."""
        self.left = left
        """Set when a scheduler says goodbye (`LEFT_TOPIC`)."""
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set once announcements are being received (the LISTEN is in place)."""

    async def __aenter__(self) -> Listener:
        if self.engine.dialect.name == "postgresql":
            self._task = asyncio.create_task(self._listen_postgres())
        else:
            path = wake_file(self.engine.url)
            if path is not None:
                self._task = asyncio.create_task(self._watch_file(path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, timeout: float) -> bool:
        """Wait for a wake-up (then clear it) or `timeout`; True if woken."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.woken.wait(), timeout)
        woken = self.woken.is_set()
        self.woken.clear()
        return woken

    async def _listen_postgres(self) -> None:
        delay = 0.5
        while True:
            try:
                async with self._postgres_connection() as lost:
                    delay = 0.5
                    self.listening.set()
                    self.woken.set()  # what was announced while not listening
                    await lost.wait()
            except Exception as exc:  # any failure to listen costs only the fallback wait
                log.warning("not listening for wake-ups (%s); trying again in %gs", exc, delay)
            self.listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    @contextlib.asynccontextmanager
    async def _postgres_connection(self) -> AsyncIterator[asyncio.Event]:
        lost = asyncio.Event()

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            if payload == LEFT_TOPIC:
                if self.left is not None:
                    self.left.set()
            elif not payload.startswith(TURN_PREFIX):
                self.woken.set()
            elif self.turn is not None and payload == turn_topic(self.turn[0]):
                self.turn[1].set()

        def on_terminate(*_args: Any) -> None:
            lost.set()

        async with self.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            raw.add_termination_listener(on_terminate)
            await raw.add_listener(CHANNEL, on_notify)
            try:
                yield lost
            finally:
                if not lost.is_set():
                    with contextlib.suppress(Exception):
                        await raw.remove_listener(CHANNEL, on_notify)
                raw.remove_termination_listener(on_terminate)
                if lost.is_set():
                    await conn.invalidate()

    async def _watch_file(self, path: Path) -> None:
        def look() -> tuple[int, int] | None:
            try:
                found = os.stat(path)
            except OSError:
                return None
            return found.st_size, found.st_mtime_ns

        seen = look()
        self.listening.set()
        while True:
            await asyncio.sleep(SQLITE_POLL)
            now = look()
            if now != seen:
                seen = now
                self.woken.set()
