"""A fault point outside miniflow: freeze a process the moment it writes a launch marker.

Python imports `sitecustomize` at start-up from its path, so a process started
with this folder on PYTHONPATH and FAULT_STALL_AT_MARKER=<file> installs an
audit hook (`sys.addaudithook`, no miniflow code patched). When the process
opens a local launcher's launch marker for writing (`<pid>-<thread>.<try>.launch.tmp`) — after
it started the attempt's process, before the marker exists — the hook writes
the pids of the process's descendants to <file> and blocks forever, so that a
test can SIGKILL it exactly in that window.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children of each of its threads, recursively)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def _install(report: Path) -> None:
    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or not args or not isinstance(args[0], str | os.PathLike):
            return
        if not os.fspath(args[0]).endswith(".launch.tmp"):
            return
        tmp = report.with_name(report.name + ".tmp")
        tmp.write_text(" ".join(map(str, descendants(os.getpid()))) + "\n")
        tmp.rename(report)
        while True:
            time.sleep(60)

    sys.addaudithook(hook)


if os.environ.get("FAULT_STALL_AT_MARKER"):
    _install(Path(os.environ["FAULT_STALL_AT_MARKER"]))
