"""Python attempts forked from a warm forkserver (the local launcher's "fork" mode).

A cold interpreter that imports the worker (SQLAlchemy, asyncpg...) costs ~0.4 s
of CPU; 100 of them on 2 cores blow the benchmark goal on start-up alone. A
`multiprocessing` forkserver is started once with the worker module preloaded
(`set_forkserver_preload`), and each attempt is a fork of it: milliseconds, and
copy-on-write memory. The forkserver is a clean process (no event loop, no
scheduler state, no threads), unlike a fork of the scheduler itself would be.

This module is imported by the forkserver and every forked child (it holds the
process target), so it imports nothing heavy. It must never touch asyncio.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.popen_forkserver
import multiprocessing.process
import multiprocessing.reduction
import multiprocessing.util
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, cast


def load_entry(entry: str) -> Callable[[list[str]], int]:
    """Resolve "package.module:function"."""
    module_name, _, func_name = entry.partition(":")
    module = importlib.import_module(module_name)
    return cast(Callable[[list[str]], int], getattr(module, func_name or "main"))


def exec_python_argv(entry: str, argv: Sequence[str]) -> list[str]:
    """argv of a fresh interpreter that calls `entry(argv)` and exits with its result."""
    module_name, _, func_name = entry.partition(":")
    code = (
        "import importlib, sys; "
        f"sys.exit(getattr(importlib.import_module({module_name!r}), {func_name or 'main'!r})"
        "(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, *argv]


class _LeanForkServerPopen(multiprocessing.popen_forkserver.Popen):
    """multiprocessing's forkserver start, minus most of the "preparation data".

    Stock multiprocessing makes every forked child re-run the parent's
    `__main__` file (for the scheduler the console script, under pytest pytest
    itself) and import runpy: ~10-40 ms a child, which would dominate a no-op
    task. The forkserver already has our preloaded modules, so the child needs
    only sys.path, the working directory and the pickled process object.
    Mirrors CPython 3.11-3.13 `popen_forkserver.Popen._launch`.
    """

    def _launch(self, process_obj: Any) -> None:
        buf = io.BytesIO()
        multiprocessing.context.set_spawning_popen(self)  # allows pickling the authkey
        try:
            # Only what the child must match (3.11's forkserver ignores the sys.path
            # it is given at start-up).
            prep = {"sys_path": sys.path, "dir": os.getcwd()}
            multiprocessing.reduction.dump(prep, buf)
            multiprocessing.reduction.dump(process_obj, buf)
        finally:
            multiprocessing.context.set_spawning_popen(None)
        fds = self._fds  # type: ignore[attr-defined]
        self.sentinel, w = multiprocessing.forkserver.connect_to_new_process(fds)
        parent_w = os.dup(w)  # the child's "parent alive" sentinel
        self.finalizer = multiprocessing.util.Finalize(
            self,
            multiprocessing.util.close_fds,  # type: ignore[attr-defined]
            (parent_w, self.sentinel),
        )
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = multiprocessing.forkserver.read_signed(self.sentinel)


class LeanForkServerProcess(multiprocessing.context.ForkServerProcess):
    """A forkserver `Process` started with `_LeanForkServerPopen`."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _LeanForkServerPopen(process_obj)


def run_forked(
    entry: str, argv: list[str], log_path: str, exit_path: str, env: dict[str, Any]
) -> None:
    """Body of a forked Python attempt (runs in a child of the warm forkserver).

    New session (so kill() reaches everything it starts), output to the log,
    the attempt's environment, then `entry(argv)`; the exit code is written to
    the exit file and the process leaves with `os._exit` (no multiprocessing
    teardown, no atexit handlers of the forkserver's modules).
    """
    code = 1
    try:
        os.setsid()
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, io.TextIOWrapper):
                stream.reconfigure(line_buffering=True)
        os.environ.update(env)
        try:
            result = load_entry(entry)(argv)
            code = result if isinstance(result, int) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError), open(exit_path, "w") as f:
            f.write(str(code & 0xFF))
        os._exit(code & 0xFF)


def start_forked(
    entry: str, argv: list[str], *, log_path: str, exit_path: str, env: dict[str, str], name: str
) -> multiprocessing.process.BaseProcess:
    """Fork a child of the forkserver running `run_forked`; started, pid known."""
    process = LeanForkServerProcess(
        target=run_forked, args=(entry, argv, log_path, exit_path, env), name=name, daemon=False
    )
    process.start()
    return process
