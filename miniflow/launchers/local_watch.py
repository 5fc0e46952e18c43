"""Watching the local launcher's attempts: adoption, timeouts, kills and exit events.

`LocalLauncher` starts processes; an `AttemptWatcher` follows each one until
it ends and turns the ending into exactly one `AttemptExited` event. Kept
apart so the launcher reads as "how to start an attempt" and this module as
"how an attempt ends", with the bookkeeping between them in one place (the
watcher's `attempts`).

Design decisions:

- **pidfd, not a thread per child.** Exits are awaited with
  `loop.add_reader(os.pidfd_open(pid))` (for forked children: the
  multiprocessing sentinel); asyncio's default child watcher on 3.11 would
  start a thread per process. The same pidfd watches processes adopted after
  a scheduler restart, which are no longer our children.
- **Adoption trusts the marker, never the pid alone.** A process is adopted
  only if the launch marker's pid, start time and boot id all still match
  (checked again after opening the pidfd, in case the pid was reused in
  between); otherwise the attempt is reported from its exit file, or "Lost".
- **Pod semantics.** When an attempt's main process exits, whatever it left
  in its process group is SIGKILLed (as when a pod's container ends).

This module never starts a process and never touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing.process
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from miniflow.launchers import local_procs as procs
from miniflow.launchers.base import AttemptExited, AttemptKey, AttemptStarted, LauncherEvent


@dataclass(eq=False)
class Attempt:
    """A process the watcher follows (the launcher's own child, or adopted)."""

    key: AttemptKey
    kind: str
    pid: int
    paths: procs.AttemptPaths
    own_child: bool  # spawned by us: reap with waitpid
    process: multiprocessing.process.BaseProcess | None = None  # forked Python attempt
    watch_fd: int | None = None  # fd registered with the loop (pidfd or sentinel)
    pidfd: int | None = None  # ours to close
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    forced_reason: str | None = None  # "Timeout" | "Killed"
    message: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def handle(self) -> str:
        return f"pid:{self.pid}"


def now() -> datetime:
    return datetime.now(UTC)


class AttemptWatcher:
    """The running attempts of one `LocalLauncher`, and the events of their endings."""

    def __init__(
        self, *, events: asyncio.Queue[LauncherEvent], state_dir: Path, grace_period: float
    ) -> None:
        self.events = events
        self.state_dir = state_dir
        self.grace_period = grace_period
        self.attempts: dict[AttemptKey, Attempt] = {}

    def announce(self, attempt: Attempt) -> None:
        """Put the attempt's `AttemptStarted` event."""
        self.events.put_nowait(AttemptStarted(key=attempt.key, handle=attempt.handle, at=now()))

    # -- adoption ---------------------------------------------------------------------------

    def adopt(
        self,
        loop: asyncio.AbstractEventLoop,
        key: AttemptKey,
        *,
        announce: bool,
        marker: procs.Marker | None = None,
    ) -> Attempt | None:
        """Watch the attempt if its process still runs, else report how it ended."""
        paths = procs.AttemptPaths.of(self.state_dir, key)
        marker = marker or procs.read_marker(paths.marker)
        if marker is None:
            self.emit_exit(
                key,
                None,
                None,
                "Lost",
                log_tail=None,
                message="no launch marker: the attempt was never started here",
            )
            return None
        pidfd: int | None = None
        if procs.marker_process_alive(marker):
            try:
                pidfd = os.pidfd_open(marker.pid)
            except OSError:
                pidfd = None
            # Re-check after opening: the pid may have ended and been reused in between.
            if pidfd is not None and not procs.marker_process_alive(marker):
                os.close(pidfd)
                pidfd = None
        if pidfd is None:
            code = procs.read_exit_file(paths.exit)
            reaped = procs.reap_if_our_zombie(marker)  # launched by this very process
            code = reaped if code is None else code
            self.emit_exit(key, marker.handle, code, None, log_tail=procs.read_tail(paths.log))
            return None
        attempt = Attempt(
            key=key, kind=marker.kind, pid=marker.pid, paths=paths, own_child=False, pidfd=pidfd
        )
        timeout = None
        if marker.timeout is not None:
            timeout = max(0.0, marker.launched_at + marker.timeout - time.time())
        self.watch(loop, attempt, timeout)
        if announce:
            self.announce(attempt)
        return attempt

    # -- watching and ending ------------------------------------------------------------------

    def watch(
        self, loop: asyncio.AbstractEventLoop, attempt: Attempt, timeout: float | None
    ) -> None:
        """Follow the attempt until it exits; terminate it after `timeout` seconds."""
        self.attempts[attempt.key] = attempt
        if attempt.process is not None:
            attempt.watch_fd = attempt.process.sentinel
        else:
            if attempt.pidfd is None:
                attempt.pidfd = os.pidfd_open(attempt.pid)
            attempt.watch_fd = attempt.pidfd
        loop.add_reader(attempt.watch_fd, self._on_exit, loop, attempt)
        if timeout is not None:
            attempt.timers.append(
                loop.call_later(
                    timeout,
                    self.terminate,
                    loop,
                    attempt,
                    "Timeout",
                    f"timed out after {timeout:g} s",
                )
            )

    def terminate(
        self, loop: asyncio.AbstractEventLoop, attempt: Attempt, reason: str, message: str
    ) -> None:
        """SIGTERM the attempt's process group, SIGKILL after the grace period."""
        if attempt.done.is_set():
            return
        if attempt.forced_reason is None:
            attempt.forced_reason, attempt.message = reason, message
        procs.signal_group(attempt.pid, signal.SIGTERM)
        attempt.timers.append(
            loop.call_later(self.grace_period, procs.signal_group, attempt.pid, signal.SIGKILL)
        )

    def unwatch_all(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop following every attempt, leaving their processes running."""
        for attempt in self.attempts.values():
            self._unwatch(loop, attempt)
        self.attempts.clear()

    def _unwatch(self, loop: asyncio.AbstractEventLoop, attempt: Attempt) -> None:
        if attempt.watch_fd is not None:
            loop.remove_reader(attempt.watch_fd)
            attempt.watch_fd = None
        if attempt.pidfd is not None:
            os.close(attempt.pidfd)
            attempt.pidfd = None
        for timer in attempt.timers:
            timer.cancel()
        attempt.timers.clear()

    def _on_exit(self, loop: asyncio.AbstractEventLoop, attempt: Attempt) -> None:
        code: int | None = None
        process = attempt.process
        if process is not None:
            process.join(0)
            if process.exitcode is None:
                return  # spurious wake-up
            code = process.exitcode if process.exitcode >= 0 else 128 - process.exitcode
        # Pod semantics: the main process is gone, so is whatever it left behind.
        # (For our own child the pid stays reserved until waitpid, so this is safe.)
        with contextlib.suppress(OSError):
            os.killpg(attempt.pid, signal.SIGKILL)
        if attempt.process is None:
            try:
                pid, status = os.waitpid(attempt.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = 0, 0  # adopted: not our child (its parent reaps it)
            if pid:
                code = procs.exit_code_from_status(status)
            elif attempt.own_child:
                return  # spurious wake-up
        self._unwatch(loop, attempt)
        if process is not None:
            process.close()  # after _unwatch: closes the sentinel fd
        self.attempts.pop(attempt.key, None)
        attempt.done.set()
        if code is None:
            code = procs.read_exit_file(attempt.paths.exit)
        elif procs.read_exit_file(attempt.paths.exit) is None:
            procs.write_exit_file(attempt.paths.exit, code)  # killed before it could
        self.emit_exit(
            attempt.key,
            attempt.handle,
            code,
            attempt.forced_reason,
            log_tail=procs.read_tail(attempt.paths.log),
            message=attempt.message,
        )

    def emit_exit(
        self,
        key: AttemptKey,
        handle: str | None,
        code: int | None,
        reason: str | None,
        *,
        log_tail: str | None,
        message: str | None = None,
    ) -> None:
        """Put the `AttemptExited` event; without a `reason`, it follows from the code."""
        if reason is None:
            if code is None:
                reason = "Lost"
                message = message or "the process ended and its exit code is unknown"
            else:
                reason = "Completed" if code == 0 else "Error"
        self.events.put_nowait(
            AttemptExited(
                key=key,
                handle=handle,
                exit_code=code,
                reason=reason,
                at=now(),
                log_tail=log_tail,
                message=message,
            )
        )
