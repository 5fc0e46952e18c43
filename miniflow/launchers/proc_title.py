"""What `ps`, `top`, `pgrep` and `/proc/<pid>/environ` show of a process: its command
line, its `comm`, and the environment it started with.

The local launcher's forkserver is forked from `miniflow scheduler` (`local_fork.
fork_ahead`), and the forkserver forks every Python attempt: without a name of their own
they would all show the scheduler's command line (`pkill -f "miniflow scheduler"` would
signal the running tasks along with the scheduler), and `/proc/<pid>/environ` would show
the scheduler's own start-up environment, its `MINIFLOW_*` settings (secrets among
them) included, which a spawned forkserver never had (`local.host_env`).

Linux shows as the command line and the start-up environment the memory they were given
in (`arg_start`..`arg_end` and `env_start`..`env_end` of `/proc/self/stat`); both are
rewritten in place, within their length, the rest zeroed. libc's `environ` still points
into that memory for every variable never set since, so each variable is set again
first (`setenv` copies it to the heap). `comm` is set with `prctl(PR_SET_NAME)` (15
bytes).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Mapping

_PR_SET_NAME = 15

_areas: tuple[int, int, int, int] | None = None
"""arg_start, arg_end, env_start, env_end: the same in a forked child, so read once."""

_libc: ctypes.CDLL | None = None


def _read_areas() -> tuple[int, int, int, int]:
    global _areas
    if _areas is None:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # stat fields 48-51 (the list starts at field 3)
        _areas = int(fields[45]), int(fields[46]), int(fields[47]), int(fields[48])
    return _areas


def _overwrite(start: int, end: int, data: bytes) -> None:
    size = end - start
    if size > 0:
        ctypes.memmove(start, data[:size] + b"\0" * max(0, size - len(data)), size)


def set_title(title: str, comm: str) -> None:
    """Show `title` as the command line and `comm` as the name; quietly nothing where
    the platform does not allow it."""
    global _libc
    with contextlib.suppress(OSError, ValueError, IndexError, AttributeError):
        start, end, _, _ = _read_areas()
        if end - start > 1:
            _overwrite(start, end, title.encode(errors="replace")[: end - start - 1])
        if _libc is None:
            _libc = ctypes.CDLL(None)  # the interpreter's own symbols: libc's among them
        _libc.prctl(_PR_SET_NAME, comm.encode()[:15], 0, 0, 0)


def set_startup_environ(env: Mapping[str, str]) -> None:
    """Make `/proc/<pid>/environ` show `env` (`os.environ` already is `env`): as many
    whole entries as fit in the memory the process started with; quietly nothing where
    the platform does not allow it."""
    with contextlib.suppress(OSError, ValueError, IndexError, AttributeError):
        _, _, start, end = _read_areas()
        for key, value in os.environ.items():
            os.putenv(key, value)  # libc's copy on the heap: the old memory is free
        entries, size = [], 0
        for key, value in env.items():
            entry = f"{key}={value}".encode(errors="surrogateescape") + b"\0"
            if size + len(entry) > end - start:
                break
            entries.append(entry)
            size += len(entry)
        _overwrite(start, end, b"".join(entries))
