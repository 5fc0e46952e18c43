"""Is a scheduler instance registered from this host still running? Asked of /proc.

An instance row names its host and pid. On the same host a pid that is gone means
the instance died (killed, crashed) and its tries can be adopted without waiting for
its heartbeat to go stale. A pid may also have been taken again by a later process:
the process's start time, earlier than the instance's registration, tells them apart.
(Not the process's command line: a scheduler started by a wrapper script, or by the
API from any program, need not mention miniflow there.)
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from functools import cache

# /proc/<pid>/stat counts in clock ticks from boot, and boot time is in whole seconds
# (recomputed by the kernel, it can move by one): a process that started this much
# after the registration is still taken for the instance.
START_SLACK = timedelta(seconds=2)


def may_live(hostname: str, pid: int, registered_at: datetime) -> bool:
    """False only when the instance ran on this host and its process is gone, or the pid
    now belongs to a process started after the instance registered."""
    if hostname != socket.gethostname() or pid == os.getpid():
        return True
    try:
        started = process_started_at(pid)
    except (OSError, ValueError, IndexError):
        return False  # no such process (or no /proc entry to read)
    return started <= registered_at + START_SLACK


def process_started_at(pid: int) -> datetime:
    """When process `pid` started (Linux /proc). Raises OSError if there is none."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        # the command name (field 2) may hold spaces and parentheses: split after it
        fields = f.read().rsplit(b")", 1)[1].split()
    ticks = int(fields[19])  # field 22, starttime
    return _boot_time() + timedelta(seconds=ticks / os.sysconf("SC_CLK_TCK"))


@cache
def _boot_time() -> datetime:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return datetime.fromtimestamp(int(line.split()[1]), UTC)
    raise OSError("/proc/stat has no btime")
