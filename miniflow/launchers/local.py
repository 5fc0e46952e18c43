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
- **Forkserver for Python tasks.** A `multiprocessing` forkserver that has
  already imported the worker (`set_forkserver_preload`) forks a warm child per
  attempt: start-up is a fork, not an interpreter boot plus imports. The
  forkserver is a clean process (no event loop, no scheduler state), unlike a
  fork of the scheduler itself. `python_mode="exec"` runs a fresh interpreter
  instead (simple, slow) and is the fallback when the worker is not installed.
- **pidfd, not a thread per child.** Exits are awaited on a pidfd (or the
  multiprocessing sentinel) registered with the loop; see `local_watch`, which
  follows every attempt, adopted or our own, until it ends.
- **Restart-safe and idempotent.** Before `launch()` returns, a marker file
  records pid + process start time + boot id; the attempt writes its own exit
  code to a file. A new launcher on the same `state_dir` can therefore adopt a
  running attempt (and learn its exit code) or report a finished one, and a
  second launch of the same key is adopted, never run twice.
- **Pod semantics.** When an attempt's main process exits, whatever it left in
  its process group is SIGKILLed (as when a pod's container ends). `close()`
  leaves running attempts alone; `shutdown_all()` kills them.

Handles are `"pid:<pid>"`. Exit reasons: "Completed" (0), "Error" (non-zero,
or a pod task without a command), "Timeout" (killed after `spec.timeout`),
"Killed" (via `kill()`, its reason in `message`), "Lost" (the exit code cannot
be known: no marker, or the process ended without an exit file).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.process
import os
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Literal

from miniflow.errors import NotFound
from miniflow.launchers import local_fork
from miniflow.launchers import local_procs as procs
from miniflow.launchers.base import (
    AliveAttempt,
    AttemptKey,
    LauncherEvent,
    LaunchResult,
    TaskSpec,
)
from miniflow.launchers.local_watch import Attempt, AttemptWatcher

log = logging.getLogger("miniflow.launchers.local")

NO_ENTRYPOINT_MESSAGE = "local mode cannot run an image's entrypoint; give the Pod task a command"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


class LocalLauncher:
    """Runs attempts as local processes; see the module docstring."""

    name = "local"
    worker_kinds: frozenset[str] = frozenset({"python"})  # bash/pod: judged by exit code

    def __init__(
        self,
        *,
        state_dir: Path,
        dags_folder: Path,
        worker_env: dict[str, str],
        grace_period: float = 5.0,
        python_mode: Literal["fork", "exec"] = "fork",
        python_entry: str = "miniflow_worker.runner:main",
    ) -> None:
        self.state_dir = Path(state_dir)
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
        self._warned_image = False
        self._sh = shutil.which("sh") or "/bin/sh"
        self._ctx: multiprocessing.context.ForkServerContext | None = None
        self.python_mode: Literal["fork", "exec"] = python_mode
        if python_mode == "fork":
            module = python_entry.partition(":")[0]
            try:
                found = importlib.util.find_spec(module) is not None
            except ImportError:
                found = False
            if found:
                self._ctx = multiprocessing.get_context("forkserver")
                # The forkserver is one per process, shared with parsing: add to its
                # preload list (effective until it starts). Drop the stock "__main__":
                # children never need the parent's main script (see local_fork).
                server = multiprocessing.forkserver._forkserver
                preload = [
                    m for m in getattr(server, "_preload_modules", None) or [] if m != "__main__"
                ]
                # `miniflow_worker.warm` imports SQLAlchemy, the drivers and jinja2 up front
                # so a forked worker starts in tens of milliseconds.
                wanted = (local_fork.__name__, module, "miniflow_worker.warm")
                preload += [m for m in wanted if m not in preload and _importable(m)]
                self._ctx.set_forkserver_preload(preload)
            else:
                log.warning("%s is not importable: Python tasks run in exec mode", module)
                self.python_mode = "exec"

    # -- protocol ---------------------------------------------------------------------------

    @property
    def events(self) -> asyncio.Queue[LauncherEvent]:
        return self._events

    async def start(self) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        if self._ctx is not None:
            # Boot the forkserver (and its preloads) now, not on the first Python task.
            await asyncio.to_thread(multiprocessing.forkserver.ensure_running)

    async def close(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        self._watcher.unwatch_all(loop)

    async def launch(self, specs: Sequence[TaskSpec]) -> list[LaunchResult]:
        loop = asyncio.get_running_loop()
        return [self._launch_one(loop, spec) for spec in specs]

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
        self._watcher.terminate(loop, attempt, "Killed", reason)

    async def adopt(self, attempts: Sequence[tuple[AttemptKey, str | None]]) -> None:
        loop = asyncio.get_running_loop()
        for key, _handle in attempts:
            if key not in self._attempts:
                self._watcher.adopt(loop, key, announce=True)

    async def acknowledge(self, keys: Sequence[AttemptKey]) -> None:
        pass

    async def alive(self, *, fresh: bool = True) -> list[AliveAttempt]:
        return [
            AliveAttempt(key=a.key, handle=a.handle, info={"pid": a.pid, "kind": a.kind})
            for a in self._attempts.values()
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

    async def shutdown_all(self) -> None:
        """Kill every attempt still running and wait for their exit events."""
        loop = asyncio.get_running_loop()
        attempts = list(self._attempts.values())
        for attempt in attempts:
            self._watcher.terminate(loop, attempt, "Killed", "launcher shutdown")
        if attempts:
            await asyncio.wait(
                [asyncio.ensure_future(a.done.wait()) for a in attempts],
                timeout=self.grace_period + 5.0,
            )

    # -- launching --------------------------------------------------------------------------

    def _launch_one(self, loop: asyncio.AbstractEventLoop, spec: TaskSpec) -> LaunchResult:
        key = spec.key
        if self._closed:
            return LaunchResult(key=key, handle=None, error="launcher is closed", retryable=True)
        running = self._attempts.get(key)
        if running is not None:
            return LaunchResult(key=key, handle=running.handle, adopted=True)
        paths = procs.AttemptPaths.of(self.state_dir, key)
        marker = procs.read_marker(paths.marker)
        if marker is not None:
            # Launched before (maybe by a previous scheduler): adopt, never run twice.
            self._watcher.adopt(loop, key, announce=True, marker=marker)
            return LaunchResult(key=key, handle=marker.handle, adopted=True)
        if spec.kind == "pod" and not spec.cmds:
            self._watcher.emit_exit(
                key, None, None, "Error", log_tail=None, message=NO_ENTRYPOINT_MESSAGE
            )
            return LaunchResult(key=key, handle=None, error=NO_ENTRYPOINT_MESSAGE)
        try:
            paths.log.parent.mkdir(parents=True, exist_ok=True)
            pid, process = self._start_process(spec, paths)
        except OSError as exc:  # EAGAIN, EMFILE, disk full...: may work next time
            return LaunchResult(key=key, handle=None, error=f"cannot start: {exc}", retryable=True)
        except Exception as exc:  # one bad spec must not fail the whole batch
            log.exception("cannot start attempt %s", key)
            return LaunchResult(key=key, handle=None, error=f"cannot start: {exc!r}")
        stat = procs.proc_stat(pid)
        attempt = Attempt(
            key=key,
            kind=spec.kind,
            pid=pid,
            paths=paths,
            own_child=process is None,
            process=process,
        )
        procs.write_marker(
            paths.marker,
            procs.Marker(
                pid=pid,
                start_time=stat[1] if stat else None,
                boot_id=procs.boot_id(),
                kind=spec.kind,
                handle=attempt.handle,
                launched_at=time.time(),
                timeout=spec.timeout,
            ),
        )
        self._watcher.watch(loop, attempt, spec.timeout)
        self._watcher.announce(attempt)
        return LaunchResult(key=key, handle=attempt.handle)

    def _start_process(
        self, spec: TaskSpec, paths: procs.AttemptPaths
    ) -> tuple[int, multiprocessing.process.BaseProcess | None]:
        env = {**os.environ, **spec.env}
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
            ]
            env = {**os.environ, **self.worker_env, **spec.env}
            if self._ctx is not None:
                process = local_fork.start_forked(
                    self.python_entry,
                    worker_argv,
                    log_path=str(paths.log),
                    exit_path=str(paths.exit),
                    env=env,
                    name=f"miniflow {k}",
                )
                assert process.pid is not None
                return process.pid, process
            argv = local_fork.exec_python_argv(self.python_entry, worker_argv)
        pid = procs.spawn_wrapped(
            argv, sh=self._sh, log_path=paths.log, exit_path=paths.exit, env=env
        )
        return pid, None
