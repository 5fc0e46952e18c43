"""`LocalLauncher`: every attempt a local process; the embedded default launcher.

The laptop stand-in for one-pod-per-task. Each attempt is a process leading its
own session (so a kill reaches everything it started, like deleting a pod),
writing stdout+stderr to a log file per attempt, reported to the scheduler as
`AttemptStarted` / `AttemptExited` events. It never touches the database.

Design decisions (see BENCHMARKS.md: the floor is fork+exec, ~1 ms a task):

- **No Python for bash tasks.** A bash task is `bash -c <command>` under a
  tiny `sh` wrapper that records the exit code in a file; the scheduler decides
  success from the exit code. A cold interpreter that imports the worker costs
  ~0.4 s of CPU; 200 of them on 2 cores would be ~40 s.
- **Forkserver for Python tasks.** A forkserver (`local_fork`) that has
  already imported the worker forks a warm child per attempt: start-up is a
  fork, not an interpreter boot plus imports. Its children are not ours, so
  they never hold up the scheduler's exit, and it exits with the launcher.
  `python_mode="exec"` runs a fresh interpreter instead (simple, slow) and is
  the fallback when the worker is not installed or the forkserver fails.
- **pidfd, not a thread per child.** Exits are awaited on a pidfd (for a
  forked attempt: the forkserver's done pipe) registered with the loop; see
  `local_watch`, which follows every attempt, adopted or our own, until it ends.
- **Evidence before execution.** A process starts blocked on a go pipe; the
  launcher first writes the marker (pid + process start time + boot id) and
  links it into the live index (`state_dir/live`), then lets it go. If the
  launcher dies in between, the process exits without running anything: "no
  marker" really means "never ran", so a relaunch never runs a try twice, and
  the live index lists every attempt that may have run.
- **Nothing forgotten before it is committed.** A live-index entry is removed
  only by `acknowledge` (the scheduler has committed that try's exit). `start`
  adopts or reports every entry, and `alive` includes entries nobody watches,
  so a restarted scheduler learns every exit and sees every orphan. The
  attempt writes its own exit code to a file, so a launcher that is no longer
  its parent still learns it. Log files are kept (`tasks logs` reads them).
- **The host's environment, minus miniflow's.** Bash and Pod commands get the
  scheduler's environment without any `MINIFLOW_*` variable (the database URL,
  `MINIFLOW_CONFIG`...), then the task's own `env`; Python tasks get the
  worker's settings (`worker_env`) on top.
- **Pod semantics.** When an attempt's main process exits, whatever it left in
  its process group is SIGKILLed (as when a pod's container ends). `close()`
  leaves running attempts alone; `shutdown_all()` kills them.
- **Launch batches stay off the event loop.** Spawning, the
  forkserver's round trip, `/proc` and the marker files take milliseconds per
  attempt (~0.8 s for 200): a batch (of more than `INLINE_LAUNCHES`: a thread hop
  costs more than one or two launches) is prepared in one worker thread, which
  hands each attempt, blocked on its go pipe with its marker on disk, to the
  loop as soon as it is ready (`call_soon_threadsafe`, in launch order); the
  loop then watches it, lets it go and announces it, in that order, as before.
  Batches run one at a time (the forkserver's socket is one conversation).
  Listing the live index, re-checking `/proc` for `alive` and retiring many live
  entries at once happen in a worker thread too.

`start()` checks the state dir (one `StateDirError` if it cannot be used). A
launch that fails for a reason that will not heal (EACCES, EROFS, ENOENT...)
is a permanent launch error; EAGAIN, EMFILE, ENOMEM... are retryable.

Handles are `"pid:<pid>"`. Exit reasons: "Completed" (0), "Error" (non-zero,
or a pod task without a command), "Timeout" (killed after `spec.timeout`),
"Killed" (via `kill()`, its reason in `message`), the reason given to
`shutdown_all` (e.g. "Stopped"), "Lost" (the exit code cannot be known: no
marker, or the process ended without an exit file).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from miniflow.errors import NotFound
from miniflow.launchers import local_fork
from miniflow.launchers import local_procs as procs
from miniflow.launchers.base import (
    AliveAttempt,
    AttemptExited,
    AttemptKey,
    LauncherEvent,
    LaunchResult,
    TaskSpec,
)
from miniflow.launchers.local_watch import Attempt, AttemptWatcher

log = logging.getLogger("miniflow.launchers.local")

NO_ENTRYPOINT_MESSAGE = "local mode cannot run an image's entrypoint; give the Pod task a command"


PREFORK_HOOK = "miniflow_worker.warm:prefork"
"""Called by the forkserver before each fork: the workers' database engine, made ready once."""
RELAY_HOOK = "miniflow_worker.warm:relay"
"""Answers a forked worker's claim or outcome in the forkserver's relay process, on its
connection."""

INLINE_LAUNCHES = 2
"""Batches up to this size are started on the loop (a few milliseconds each): a thread hop
costs more than that on a busy machine, and a chain of tasks pays it on every link."""
INLINE_UNLINKS = 64
"""Live entries retired on the loop at once (tens of microseconds each); more go to a thread."""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


@dataclass(frozen=True, slots=True)
class _Ready:
    """An attempt started and recorded in a worker thread, blocked on its go pipe."""

    attempt: Attempt
    go_write: int
    done_pipe: int | None
    timeout: float | None


@dataclass(frozen=True, slots=True)
class _Launched:
    """A marker found on disk: launched before, to adopt (on the loop)."""

    marker: procs.Marker


_Prepared = _Ready | _Launched | LaunchResult


def host_env() -> dict[str, str]:
    """The scheduler's environment without miniflow's own settings (secrets among them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MINIFLOW_")}


def _try_title(key: AttemptKey) -> str:
    """A forked try's name in `ps`: the task first (the title is cut at the length of the
    scheduler's own command line)."""
    mapped = f"[{key.map_index}]" if key.map_index >= 0 else ""
    return f"miniflow-worker {key.dag_id}.{key.task_id}{mapped} try {key.try_number} {key.run_id}"


class LocalLauncher:
    """Runs attempts as local processes; see the module docstring."""

    name = "local"
    worker_kinds: frozenset[str] = frozenset({"python"})  # bash/pod: judged by exit code

    owner: str | None = None
    """The scheduler instance it works for."""

    def __init__(
        self,
        *,
        state_dir: Path,
        dags_folder: Path,
        worker_env: dict[str, str],
        grace_period: float = 5.0,
        python_mode: Literal["fork", "exec"] = "fork",
        python_entry: str = "miniflow_worker.runner:main",
        pause_limit: float = 7.5,
        preimport: bool = True,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.preimport = preimport
        """Name each Python try's DAG file to the forkserver, which imports it once per
        version of the file for the tries forked after it (`miniflow_worker.preimport`)."""
        self.pause_limit = pause_limit
        """Seconds from a launch's decision to its record past which it is not made (see
        `LaunchResult.paused`); the daemon uses a quarter of the instance timeout."""
        self.dags_folder = Path(dags_folder)
        self.worker_env = {"MINIFLOW_DAGS_FOLDER": str(self.dags_folder), **worker_env}
        self.grace_period = grace_period
        self.python_entry = python_entry
        self._events: asyncio.Queue[LauncherEvent] = asyncio.Queue()
        self._watcher = AttemptWatcher(
            events=self._events, state_dir=self.state_dir, grace_period=grace_period
        )
        self._attempts = self._watcher.attempts  # the attempts being watched, by key
        self._closed = False
        self._owners: set[str] = set()  # its own instance id, and dead ones taken over
        self._disowned: set[AttemptKey] = set()  # a peer adopted them: not followed here
        self._launching = asyncio.Lock()  # one batch at a time (see the module docstring)
        self._warned_image = False
        self._sh = shutil.which("sh") or "/bin/sh"
        self._forkserver: local_fork.ForkServer | None = None
        self._preload: list[str] = []
        self._prefork: str | None = None
        self._relay: str | None = None
        self.python_mode: Literal["fork", "exec"] = python_mode
        if python_mode == "fork":
            module = python_entry.partition(":")[0]
            if _importable(module):
                # `miniflow_worker.warm` imports SQLAlchemy, the drivers and jinja2 up front
                # so a forked worker starts in tens of milliseconds.
                wanted = dict.fromkeys((module, "miniflow_worker.warm"))
                self._preload = [m for m in wanted if _importable(m)]
                if "miniflow_worker.warm" in self._preload:
                    self._prefork, self._relay = PREFORK_HOOK, RELAY_HOOK
            else:
                log.warning("%s is not importable: Python tasks run in exec mode", module)
                self.python_mode = "exec"

    # -- protocol ---------------------------------------------------------------------------

    @property
    def events(self) -> asyncio.Queue[LauncherEvent]:
        return self._events

    async def start(self) -> None:
        """Check the state dir, boot the forkserver, adopt or report the live index."""
        procs.check_state_dir(self.state_dir)
        if self.python_mode != "fork":
            local_fork.discard_ahead()
        else:
            # Boot it (and its preloads) now, not on the first Python task.
            host = host_env()
            server = local_fork.ForkServer(
                self._preload,
                env=host,
                sys_path=sys.path,
                prefork=self._prefork,
                boot_env={**host, **self.worker_env},
                relay=self._relay,
            )
            try:
                await asyncio.to_thread(server.start)
            except local_fork.ForkServerGone as exc:
                log.warning("%s: Python tasks run in exec mode", exc)
                self.python_mode = "exec"
            else:
                self._forkserver = server
                log.info(
                    "Python tasks fork from forkserver pid %s (%s)",
                    server.pid,
                    "forked from this process" if server.forked_ahead else "a new interpreter",
                )
        await self._adopt_live(asyncio.get_running_loop())

    async def close(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        async with self._launching:  # a batch being prepared still uses the forkserver
            self._watcher.unwatch_all(loop)
            server, self._forkserver = self._forkserver, None
        if server is not None:
            await asyncio.to_thread(server.close)

    async def launch(self, specs: Sequence[TaskSpec]) -> list[LaunchResult]:
        """Start the attempts, in order; the blocking part in one worker thread."""
        loop = asyncio.get_running_loop()
        results: list[LaunchResult | None] = [None] * len(specs)
        todo: list[tuple[int, TaskSpec]] = []
        for i, spec in enumerate(specs):
            results[i] = self._known(spec)
            if results[i] is None:
                todo.append((i, spec))
        if todo:

            def deliver(i: int, prepared: _Prepared) -> None:
                results[i] = self._finish_launch(loop, todo_specs[i], prepared)

            todo_specs = dict(todo)
            async with self._launching:
                if len(todo) <= INLINE_LAUNCHES:
                    for i, spec in todo:
                        deliver(i, self._prepare(spec))
                else:
                    await asyncio.to_thread(self._prepare_batch, loop, todo, deliver)
        # Every `deliver` was queued on the loop before the thread's own completion.
        return [
            r
            if r is not None
            else LaunchResult(key=specs[i].key, handle=None, error="not launched", retryable=True)
            for i, r in enumerate(results)
        ]

    async def kill(
        self, key: AttemptKey, handle: str | None, *, reason: str, force: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        attempt = self._attempts.get(key)
        if attempt is None:
            # Not watched (e.g. before adopt): watch it if it still runs, else report.
            attempt = self._watcher.adopt(loop, key, announce=False)
            if attempt is None:
                return
        self._watcher.terminate(loop, attempt, "Killed", reason, force=force)

    async def adopt(self, attempts: Sequence[tuple[AttemptKey, str | None]]) -> None:
        loop = asyncio.get_running_loop()
        for key, _handle in attempts:
            self._disowned.discard(key)
            self._watcher.adopt(loop, key, announce=True)  # known keys: already reported

    async def disown(self, keys: Sequence[AttemptKey]) -> None:
        for key in keys:
            self._watcher.reported.discard(key)
            self._disowned.add(key)  # its live entry is the new owner's: not re-adopted

    def set_owner(self, owner: str) -> None:
        self.owner = owner
        self._owners.add(owner)

    async def take_over(self, owners: Sequence[str]) -> int:
        """Follow the live-index entries of these dead instances from now on (their exits
        are reported here; the scheduler closes or judges each one)."""
        self._owners.update(owners)
        before = len(self._attempts) + len(self._watcher.reported)
        await self._adopt_live(asyncio.get_running_loop())
        return len(self._attempts) + len(self._watcher.reported) - before

    async def acknowledge(self, keys: Sequence[AttemptKey]) -> None:
        done = [key for key in keys if key not in self._attempts]  # else: not even reported
        for key in done:
            self._watcher.reported.discard(key)
            self._disowned.discard(key)
        if len(done) > INLINE_UNLINKS:
            await asyncio.to_thread(self._remove_live, done)
        else:
            self._remove_live(done)

    def _remove_live(self, keys: Sequence[AttemptKey]) -> None:
        for key in keys:
            procs.remove_live(self.state_dir, key)

    async def alive(self, *, fresh: bool = True) -> list[AliveAttempt]:
        """Every attempt whose process runs, re-verified now; unwatched live entries adopted."""
        await self._adopt_live(asyncio.get_running_loop())
        attempts = list(self._attempts.values())
        running = await asyncio.to_thread(
            lambda: [procs.marker_process_alive(a.marker) for a in attempts]
        )
        return [
            AliveAttempt(
                key=a.key,
                handle=a.handle,
                info={"pid": a.pid, "kind": a.kind, "started": a.marker.launched_at},
            )
            for a, runs in zip(attempts, running, strict=True)
            if runs and not a.done.is_set()
        ]

    async def read_logs(
        self,
        key: AttemptKey,
        handle: str | None,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
    ) -> AsyncIterator[str]:
        """Lines of the attempt's log (without "\\n"); with `follow`, until it exits."""
        path = procs.AttemptPaths.of(self.state_dir, key).log
        attempt = self._attempts.get(key) if follow else None
        if not path.exists() and attempt is None:
            raise NotFound(f"no log for attempt {key}")
        done = attempt.done if attempt is not None else None
        async for line in procs.iter_log(path, done=done, tail_lines=tail_lines):
            yield line

    async def shutdown_all(
        self,
        *,
        reason: str = "Killed",
        message: str = "launcher shutdown",
        run: tuple[str, str] | None = None,
    ) -> list[AttemptExited]:
        """Kill every attempt still running (of `run`: (dag_id, run_id), if given) and
        wait for their exits; returns their exit events (also put on the queue)."""
        loop = asyncio.get_running_loop()
        await self._adopt_live(loop)
        attempts = [
            a for a in self._attempts.values() if run is None or (a.key.dag_id, a.key.run_id) == run
        ]
        for attempt in attempts:
            self._watcher.terminate(loop, attempt, reason, message)
        waiters = [asyncio.ensure_future(a.done.wait()) for a in attempts]
        if waiters:
            _, pending = await asyncio.wait(waiters, timeout=self.grace_period + 5.0)
            for waiter in pending:
                waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
        return [a.exit_event for a in attempts if a.exit_event is not None]

    async def _adopt_live(self, loop: asyncio.AbstractEventLoop) -> None:
        """Adopt (or report) every live-index entry that is neither watched nor reported,
        of the instances it works for: schedulers sharing a state directory each follow
        their own (a peer's become this one's only through `adopt` or `take_over`; one a
        peer adopted from it, only through `adopt`)."""
        for marker in await asyncio.to_thread(procs.list_live, self.state_dir):
            key = marker.key
            if key is None or key in self._disowned or self._watcher.known(key):
                continue
            if self.owner is None or not marker.owner or marker.owner in self._owners:
                self._watcher.adopt(loop, key, announce=True, marker=marker)

    # -- launching --------------------------------------------------------------------------

    def _known(self, spec: TaskSpec) -> LaunchResult | None:
        """The result of a spec that needs no process (on the loop: it reads the watcher's
        state), or None."""
        key = spec.key
        if self._closed:
            return LaunchResult(key=key, handle=None, error="launcher is closed", retryable=True)
        if self._watcher.known(key):
            running = self._attempts.get(key)
            marker = (
                running.marker
                if running
                else procs.read_marker(procs.AttemptPaths.of(self.state_dir, key).marker)
            )
            return LaunchResult(key=key, handle=marker.handle if marker else None)
        if spec.kind == "pod" and not spec.cmds:
            self._watcher.emit_exit(
                key, None, None, "Error", log_tail=None, message=NO_ENTRYPOINT_MESSAGE
            )
            return LaunchResult(key=key, handle=None, error=NO_ENTRYPOINT_MESSAGE)
        return None

    def _prepare_batch(
        self,
        loop: asyncio.AbstractEventLoop,
        todo: Sequence[tuple[int, TaskSpec]],
        deliver: Callable[[int, _Prepared], None],
    ) -> None:
        """In a worker thread: prepare each attempt and hand it to the loop at once."""
        for i, spec in todo:
            prepared = self._prepare(spec)
            try:
                loop.call_soon_threadsafe(deliver, i, prepared)
            except RuntimeError:  # the loop is closed: the process must never run
                if isinstance(prepared, _Ready):
                    os.close(prepared.go_write)  # EOF: it exits without running anything
                    if prepared.done_pipe is not None:
                        os.close(prepared.done_pipe)

    def _prepare(self, spec: TaskSpec) -> _Prepared:
        """In a worker thread: start the attempt blocked on its go pipe and leave the
        evidence (marker + live entry). Touches no loop state."""
        key = spec.key
        if self._closed:
            return LaunchResult(key=key, handle=None, error="launcher is closed", retryable=True)
        paths = procs.AttemptPaths.of(self.state_dir, key)
        marker = seen = procs.read_marker(paths.marker)
        if marker is not None:
            if procs.live_entry(self.state_dir, key).exists():
                # Launched before (maybe by a previous scheduler): adopt, never run twice.
                return _Launched(marker)
            if marker.launched_at > spec.decided_at:
                # A peer launched it (and it ended) after this launch was decided: this
                # scheduler was paused meanwhile and the try is the peer's now.
                return _Launched(marker)
            # Its exit was committed (only that retires the live entry), and the scheduler
            # launches the same try again: it never started (a worker that found nothing
            # to claim). Adopting the spent launch would report the same exit forever.
            procs.forget_exit(paths)
        go_read, go_write = procs.go_pipe()
        try:
            try:
                paths.log.parent.mkdir(parents=True, exist_ok=True)
                pid, own_child, done_pipe = self._start_process(spec, paths, go_read)
            finally:
                os.close(go_read)
        except OSError as exc:  # EAGAIN, EMFILE...: may work next time; EACCES, EROFS: never
            os.close(go_write)
            retryable = not procs.is_permanent(exc)
            return LaunchResult(
                key=key, handle=None, error=f"cannot start: {exc}", retryable=retryable
            )
        except Exception as exc:  # one bad spec must not fail the whole batch
            os.close(go_write)
            log.exception("cannot start attempt %s", key)
            return LaunchResult(key=key, handle=None, error=f"cannot start: {exc!r}")
        # The process is blocked on the go pipe: leave the evidence (marker + live
        # entry) first, so that whatever happens from here on, a process that may run
        # has a marker and one without a marker never runs.
        stat = procs.proc_stat(pid)
        marker = procs.Marker(
            pid=pid,
            start_time=stat[1] if stat else None,
            boot_id=procs.boot_id(),
            kind=spec.kind,
            handle=f"pid:{pid}",
            launched_at=time.time(),
            timeout=spec.timeout,
            dag_id=key.dag_id,
            run_id=key.run_id,
            task_id=key.task_id,
            try_number=key.try_number,
            owner=self.owner or "",
            map_index=key.map_index,
        )
        attempt = Attempt(key=key, marker=marker, paths=paths, own_child=own_child)
        if (paused := marker.launched_at - spec.decided_at) > self.pause_limit:
            if done_pipe is not None:
                os.close(done_pipe)
            self._let_down(attempt, go_write)
            return LaunchResult(
                key=key,
                handle=None,
                error=f"not started: {paused:.1f}s passed since the launch was decided",
                retryable=True,
                paused=True,
            )
        try:
            other = procs.write_marker(
                paths.marker,
                marker,
                live=procs.live_entry(self.state_dir, key),
                replace=seen is not None,
            )
        except OSError as exc:  # write_marker left no file of this launch behind
            if done_pipe is not None:
                os.close(done_pipe)
            self._let_down(attempt, go_write)
            retryable = not procs.is_permanent(exc)
            return LaunchResult(
                key=key, handle=None, error=f"cannot record the launch: {exc}", retryable=retryable
            )
        if other is not None:
            if done_pipe is not None:
                os.close(done_pipe)
            self._let_down(attempt, go_write)
            log.warning(
                "%s: launched meanwhile by %s (pid %d): not starting it again",
                key,
                other.owner or "another launcher",
                other.pid,
            )
            return _Launched(other)
        return _Ready(attempt, go_write, done_pipe, spec.timeout)

    def _finish_launch(
        self, loop: asyncio.AbstractEventLoop, spec: TaskSpec, prepared: _Prepared
    ) -> LaunchResult:
        """On the loop: watch a prepared attempt, then let it go and announce it."""
        key = spec.key
        if isinstance(prepared, LaunchResult):
            return prepared
        if isinstance(prepared, _Launched):
            self._watcher.adopt(loop, key, announce=True, marker=prepared.marker)
            return LaunchResult(key=key, handle=prepared.marker.handle)
        attempt = prepared.attempt
        try:
            self._watcher.watch(loop, attempt, prepared.timeout, done_pipe=prepared.done_pipe)
        except OSError as exc:
            if prepared.done_pipe is not None and attempt.watch_fd is None:
                os.close(prepared.done_pipe)
            self._watcher.attempts.pop(attempt.key, None)
            self._abandon(attempt, prepared.go_write)
            retryable = not procs.is_permanent(exc)
            return LaunchResult(
                key=key, handle=None, error=f"cannot record the launch: {exc}", retryable=retryable
            )
        procs.send_go(prepared.go_write)
        self._watcher.announce(attempt)
        return LaunchResult(key=key, handle=attempt.handle)

    def _abandon(self, attempt: Attempt, go_write: int) -> None:
        """Undo a launch that could not be recorded: the process never ran."""
        procs.remove_live(self.state_dir, attempt.key)
        with contextlib.suppress(OSError):
            attempt.paths.marker.unlink()
        self._let_down(attempt, go_write)

    def _let_down(self, attempt: Attempt, go_write: int) -> None:
        """End a started process that must never run, leaving the try's files alone."""
        os.close(go_write)  # EOF: the process exits without running anything
        if attempt.own_child:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(attempt.pid, 0)  # exits at once, on EOF

    def _start_process(
        self, spec: TaskSpec, paths: procs.AttemptPaths, go_fd: int
    ) -> tuple[int, bool, int | None]:
        """Start the attempt blocked on `go_fd`: (pid, whether it is our child, the
        forkserver's done pipe for a forked attempt)."""
        env = {**host_env(), **spec.env}
        if spec.kind == "bash":
            argv = ["bash", "-c", spec.bash_command or ""]
        elif spec.kind == "pod":
            if not self._warned_image:
                self._warned_image = True
                log.warning(
                    "local mode runs Pod tasks' commands on this host; their image (%s, ...) "
                    "is ignored",
                    spec.image,
                )
            argv = [*(spec.cmds or []), *(spec.args or [])]
            if spec.push_result:
                # As a pod's mounted termination message file: fresh and empty.
                paths.termination.write_bytes(b"")
                argv = [a.replace(spec.result_file, str(paths.termination)) for a in argv]
        else:
            k = spec.key
            worker_argv = [
                "run",
                "--dag-id",
                k.dag_id,
                "--run-id",
                k.run_id,
                "--task-id",
                k.task_id,
                "--try",
                str(k.try_number),
                *(["--map-index", str(k.map_index)] if k.map_index >= 0 else []),
            ]
            env = {**host_env(), **self.worker_env, **spec.env}
            if self._forkserver is not None:
                try:
                    pid, done_pipe = self._forkserver.fork(
                        self.python_entry,
                        worker_argv,
                        log_path=str(paths.log),
                        exit_path=str(paths.exit),
                        env=env,
                        go_fd=go_fd,
                        dag_file=str(self.dags_folder / spec.fileloc) if self.preimport else None,
                        title=_try_title(k),
                    )
                    return pid, False, done_pipe
                except local_fork.ForkServerGone as exc:
                    log.warning("%s: Python tasks run in exec mode from now on", exc)
                    self._forkserver = None
                    self.python_mode = "exec"
            argv = local_fork.exec_python_argv(self.python_entry, worker_argv)
        pid = procs.spawn_wrapped(
            argv, sh=self._sh, log_path=paths.log, exit_path=paths.exit, env=env, go_fd=go_fd
        )
        return pid, True, None
