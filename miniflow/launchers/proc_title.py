"""A process' name in `ps`, `top` and `pgrep`: its command line and its `comm`.

The local launcher's forkserver is forked from `miniflow scheduler` (`local_fork.
fork_ahead`), and the forkserver forks every Python attempt: without a name of their
own they would all show the scheduler's command line, and `pkill -f "miniflow
scheduler"` would signal the running tasks along with the scheduler.

Linux shows as the command line the memory the process' argv strings were given in
(`arg_start`..`arg_end` of `/proc/self/stat`): the title is written there, cut to that
length, the rest zeroed. The environment, right after it in memory, is left alone
(`/proc/<pid>/environ` stays readable: tools find processes by it). `comm` is set with
`prctl(PR_SET_NAME)` (15 bytes).
"""

from __future__ import annotations

import contextlib
import ctypes

_PR_SET_NAME = 15

_area: tuple[int, int] | None = None
"""(arg_start, arg_end): the same in a forked child as in its parent, so read once."""

_libc: ctypes.CDLL | None = None


def _arg_area() -> tuple[int, int]:
    global _area
    if _area is None:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        _area = int(fields[45]), int(fields[46])  # stat fields 48 and 49
    return _area


def set_title(title: str, comm: str) -> None:
    """Show `title` as the command line and `comm` as the name; quietly nothing where
    the platform does not allow it."""
    with contextlib.suppress(OSError, ValueError, IndexError, AttributeError):
        start, end = _arg_area()
        size = end - start
        if size > 1:
            data = title.encode(errors="replace")[: size - 1]
            ctypes.memmove(start, data + b"\0" * (size - len(data)), size)
        global _libc
        if _libc is None:
            _libc = ctypes.CDLL(None)  # the interpreter's own symbols: libc's among them
        _libc.prctl(_PR_SET_NAME, comm.encode()[:15], 0, 0, 0)
