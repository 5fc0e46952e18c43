"""Watching the local launcher's attempts: adoption, timeouts, kills and exit events.

`LocalLauncher` starts processes; an `AttemptWatcher` follows each one until
it ends and turns the ending into exactly one `AttemptExited` event. Kept
apart so the launcher reads as "how to start an attempt" and this module as
"how an attempt ends", with the bookkeeping between them in one place (the
watcher's `attempts`, and `reported`: the keys whose exit was reported and not
yet acknowledged, which are never reported a second time).

Design decisions:

- **pidfd, not a thread per child.** Exits are awaited with
  `loop.add_reader(os.pidfd_open(pid))`; asyncio's default child watcher on
  3.11 would start a thread per process. The same pidfd watches processes
  that are not our children: attempts adopted after a scheduler restart,
  whose exit code comes from the exit file they write. Our own children (`sh`
  wrappers) are reaped with `waitpid`. Forked Python attempts are children of
  the forkserver, which writes the exit file if they could not and then closes
  their done pipe: its EOF is the exit (a done pipe that ends while the
  process still runs means the forkserver died: its pid is watched instead).
- **Adoption trusts the marker, never the pid alone.** A process is adopted
  only if the launch marker's pid, start time and boot id all still match
  (checked again after opening the pidfd, in case the pid was reused in
  between); otherwise the attempt is reported from its exit file, or "Lost".
  `alive` re-checks every watched attempt the same way.
- **Kills.** SIGTERM (then SIGCONT: a stopped process must run to see it) to
  the process group, SIGKILL after the grace period; `force` sends SIGKILL at
  once (it reaches a stopped process too). The exit event carries the kill's
  reason.
- **Pod semantics.** When an attempt's main process exits, whatever it left
  in its process group is SIGKILLed (as when a pod's container ends).

This module never starts a process and never touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    """A process the watcher follows (the launcher's own child, or not)."""

    key: AttemptKey
    marker: procs.Marker
    paths: procs.AttemptPaths
    own_child: bool  # spawned by us: reap with waitpid
    watch_fd: int | None = None  # registered with the loop: a pidfd, or a done pipe
    via_done_pipe: bool = False  # watch_fd is the forkserver's done pipe, not a pidfd
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    forced_reason: str | None = None  # "Timeout" | "Killed" | "Stopped"
    message: str | None = None
    terminating: bool = False  # SIGTERM sent, SIGKILL scheduled
    sigkilled: bool = False  # we sent SIGKILL: the exit code is 137 if none was recorded
    done: asyncio.Event = field(default_factory=asyncio.Event)
    exit_event: AttemptExited | None = None

    @property
    def pid(self) -> int:
        return self.marker.pid

    @property
    def kind(self) -> str:
        return self.marker.kind

    @property
    def handle(self) -> str:
        return self.marker.handle


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
        self.reported: set[AttemptKey] = set()  # exit reported, not yet acknowledged

    def announce(self, attempt: Attempt) -> None:
        """Put the attempt's `AttemptStarted` event."""
        self.events.put_nowait(AttemptStarted(key=attempt.key, handle=attempt.handle, at=now()))

    def known(self, key: AttemptKey) -> bool:
        """Watched now, or its exit reported and not yet acknowledged."""
        return key in self.attempts or key in self.reported

    # -- adoption ---------------------------------------------------------------------------

    def adopt(
        self,
        loop: asyncio.AbstractEventLoop,
        key: AttemptKey,
        *,
        announce: bool,
        marker: procs.Marker | None = None,
    ) -> Attempt | None:
        """Watch the attempt if its process still runs, else report how it ended.

        Returns the watched attempt; None if it was reported as ended, or if it is
        already known (watched, or its exit reported and not yet acknowledged).
        """
        if self.known(key):
            return self.attempts.get(key)
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
            self.emit_exit(
                key,
                marker.handle,
                code,
                None,
                log_tail=procs.read_tail(paths.log),
                termination_message=procs.read_termination_message(paths.termination),
            )
            return None
        attempt = Attempt(key=key, marker=marker, paths=paths, own_child=False)
        timeout = None
        if marker.timeout is not None:
            timeout = max(0.0, marker.launched_at + marker.timeout - time.time())
        self.watch(loop, attempt, timeout, pidfd=pidfd)
        if announce:
            self.announce(attempt)
        return attempt

    # -- watching and ending ------------------------------------------------------------------

    def watch(
        self,
        loop: asyncio.AbstractEventLoop,
        attempt: Attempt,
        timeout: float | None,
        *,
        pidfd: int | None = None,
        done_pipe: int | None = None,
    ) -> None:
        """Follow the attempt until it exits; terminate it after `timeout` seconds.

        By `done_pipe` (the forkserver closes it once the exit code is on disk) if
        given, else by a pidfd (`pidfd`, or one opened here). Takes both fds over.
        """
        self.attempts[attempt.key] = attempt
        if done_pipe is not None:
            attempt.watch_fd, attempt.via_done_pipe = done_pipe, True
        else:
            attempt.watch_fd = os.pidfd_open(attempt.pid) if pidfd is None else pidfd
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
        self,
        loop: asyncio.AbstractEventLoop,
        attempt: Attempt,
        reason: str,
        message: str,
        *,
        force: bool = False,
    ) -> None:
        """SIGTERM the attempt's process group, SIGKILL after the grace period.

        With `force`, SIGKILL at once. The first reason given is the one reported.
        """
        if attempt.done.is_set():
            return
        if attempt.forced_reason is None:
            attempt.forced_reason, attempt.message = reason, message
        if force:
            self._sigkill(attempt)
            return
        if attempt.terminating:
            return  # SIGKILL already scheduled
        attempt.terminating = True
        procs.signal_group(attempt.pid, signal.SIGTERM)
        procs.signal_group(attempt.pid, signal.SIGCONT)  # a stopped process cannot see TERM
        attempt.timers.append(loop.call_later(self.grace_period, self._sigkill, attempt))

    def _sigkill(self, attempt: Attempt) -> None:
        if not attempt.done.is_set():
            attempt.sigkilled = procs.signal_group(attempt.pid, signal.SIGKILL)

    def still_running(self, attempt: Attempt) -> bool:
        """A fresh look: the marker's process (pid + start time + boot id) still runs."""
        return not attempt.done.is_set() and procs.marker_process_alive(attempt.marker)

    def unwatch_all(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop following every attempt, leaving their processes running."""
        for attempt in self.attempts.values():
            self._unwatch(loop, attempt)
        self.attempts.clear()

    def _unwatch(self, loop: asyncio.AbstractEventLoop, attempt: Attempt) -> None:
        if attempt.watch_fd is not None:
            loop.remove_reader(attempt.watch_fd)
            os.close(attempt.watch_fd)
            attempt.watch_fd = None
        for timer in attempt.timers:
            timer.cancel()
        attempt.timers.clear()

    def _follow_pid(self, loop: asyncio.AbstractEventLoop, attempt: Attempt) -> bool:
        """The done pipe ended but the process runs on (the forkserver died): watch its
        pid from now on. False if it has ended meanwhile."""
        if not procs.marker_process_alive(attempt.marker):
            return False
        try:
            pidfd = os.pidfd_open(attempt.pid)
        except OSError:
            return False
        if attempt.watch_fd is not None:
            loop.remove_reader(attempt.watch_fd)
            os.close(attempt.watch_fd)
        attempt.watch_fd, attempt.via_done_pipe = pidfd, False
        loop.add_reader(pidfd, self._on_exit, loop, attempt)
        return True

    def _on_exit(self, loop: asyncio.AbstractEventLoop, attempt: Attempt) -> None:
        code: int | None = None
        if attempt.via_done_pipe and self._follow_pid(loop, attempt):
            return
        # Pod semantics: the main process is gone, so is whatever it left behind.
        # (For our own child the pid stays reserved until waitpid, so this is safe.)
        with contextlib.suppress(OSError):
            os.killpg(attempt.pid, signal.SIGKILL)
        if attempt.own_child:
            try:
                pid, status = os.waitpid(attempt.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = -1, 0  # reaped elsewhere: the exit file tells
            if pid == 0:
                return  # spurious wake-up
            if pid > 0:
                code = procs.exit_code_from_status(status)
        self._unwatch(loop, attempt)
        self.attempts.pop(attempt.key, None)
        attempt.done.set()
        if code is None:
            code = procs.read_exit_file(attempt.paths.exit)
            if code is None and attempt.sigkilled:
                code = 128 + signal.SIGKILL  # we SIGKILLed it, and nobody could record it
        if code is not None and procs.read_exit_file(attempt.paths.exit) is None:
            procs.write_exit_file(attempt.paths.exit, code)  # killed before it could
        attempt.exit_event = self.emit_exit(
            attempt.key,
            attempt.handle,
            code,
            attempt.forced_reason,
            log_tail=procs.read_tail(attempt.paths.log),
            message=attempt.message,
            termination_message=procs.read_termination_message(attempt.paths.termination),
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
        termination_message: str | None = None,
    ) -> AttemptExited:
        """Put the `AttemptExited` event; without a `reason`, it follows from the code."""
        if reason is None:
            if code is None:
                reason = "Lost"
                message = message or "the process ended and its exit code is unknown"
            else:
                reason = "Completed" if code == 0 else "Error"
        event = AttemptExited(
            key=key,
            handle=handle,
            exit_code=code,
            reason=reason,
            at=now(),
            log_tail=log_tail,
            message=message,
            termination_message=termination_message,
        )
        self.reported.add(key)
        self.events.put_nowait(event)
        return event
