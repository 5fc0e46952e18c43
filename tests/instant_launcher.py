"""An in-process launcher that finishes every attempt at once (scheduler-only tests, benchmarks).

Exit codes come from a callback so tests can script failures; nothing runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

from miniflow.launchers.base import (
    AliveAttempt,
    AttemptExited,
    AttemptKey,
    AttemptStarted,
    LauncherEvent,
    LaunchResult,
    TaskSpec,
)


class InstantLauncher:
    name = "instant"
    worker_kinds: frozenset[str] = frozenset()  # every outcome comes from the exit code

    def __init__(
        self,
        exit_code: Callable[[TaskSpec], int] | None = None,
        *,
        hold: bool = False,
        announce: bool = True,
    ):
        self._events: asyncio.Queue[LauncherEvent] = asyncio.Queue()
        self.exit_code = exit_code or (lambda spec: 0)
        self.hold = hold  # keep attempts "running" until release() is called
        self.announce = announce  # report AttemptStarted at launch (else they stay queued)
        self.kills: list[tuple[AttemptKey, str, bool]] = []
        self.launched: list[TaskSpec] = []
        self.held: dict[AttemptKey, TaskSpec] = {}
        self.killed: list[AttemptKey] = []
        self.adopted: list[tuple[AttemptKey, str | None]] = []
        self.acknowledged: list[AttemptKey] = []
        self.disowned: list[AttemptKey] = []
        self.fresh_looks = 0
        self.owner: str | None = None
        self.taken_over: list[str] = []

    @property
    def events(self) -> asyncio.Queue[LauncherEvent]:
        return self._events

    def set_owner(self, owner: str) -> None:
        self.owner = owner

    async def start(self) -> None:
        pass

    async def take_over(self, owners: Sequence[str]) -> int:
        self.taken_over.extend(owners)
        return 0

    async def close(self) -> None:
        pass

    async def launch(self, specs: Sequence[TaskSpec]) -> list[LaunchResult]:
        now = datetime.now(UTC)
        results = []
        for spec in specs:
            self.launched.append(spec)
            handle = f"instant:{spec.key}"
            if self.announce:
                self._events.put_nowait(AttemptStarted(spec.key, handle, now))
            if self.hold:
                self.held[spec.key] = spec
            else:
                self._finish(spec)
            results.append(LaunchResult(spec.key, handle))
        return results

    def _finish(self, spec: TaskSpec) -> None:
        code = self.exit_code(spec)
        self._events.put_nowait(
            AttemptExited(
                spec.key,
                f"instant:{spec.key}",
                code,
                "Completed" if code == 0 else "Error",
                datetime.now(UTC),
            )
        )

    def release(self, key: AttemptKey | None = None) -> None:
        keys = [key] if key is not None else list(self.held)
        for k in keys:
            self._finish(self.held.pop(k))

    async def kill(
        self, key: AttemptKey, handle: str | None, *, reason: str, force: bool = False
    ) -> None:
        self.killed.append(key)
        self.kills.append((key, reason, force))
        if key in self.held:
            self.held.pop(key)
            self._events.put_nowait(
                AttemptExited(key, handle, 137, "Killed", datetime.now(UTC), message=reason)
            )

    async def adopt(self, attempts: Sequence[tuple[AttemptKey, str | None]]) -> None:
        self.adopted.extend(attempts)
        for key, handle in attempts:
            self._events.put_nowait(AttemptExited(key, handle, None, "Lost", datetime.now(UTC)))

    async def acknowledge(self, keys: Sequence[AttemptKey]) -> None:
        self.acknowledged.extend(keys)

    async def disown(self, keys: Sequence[AttemptKey]) -> None:
        self.disowned.extend(keys)

    async def alive(self, *, fresh: bool = True) -> list[AliveAttempt]:
        self.fresh_looks += fresh
        return [AliveAttempt(k, f"instant:{k}") for k in self.held]

    async def read_logs(
        self,
        key: AttemptKey,
        handle: str | None,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
    ) -> AsyncIterator[str]:
        if False:
            yield ""
