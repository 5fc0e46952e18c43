"""Whether a scheduler instance registered from this host still runs (issue 8)."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta

from miniflow.scheduler import core
from miniflow.scheduler.host_processes import may_live, process_started_at
from miniflow.store.instances import Instance


def _spawned() -> subprocess.Popen[bytes]:
    # A process whose command line does not mention miniflow: a scheduler started by a
    # wrapper script or embedded in another program looks like this.
    return subprocess.Popen(["sleep", "30"])


def _instance(pid: int, registered: datetime) -> Instance:
    return Instance("s1", socket.gethostname(), pid, "test", registered, registered, None)


def test_a_live_process_that_registered_after_it_started_may_live() -> None:
    proc = _spawned()
    try:
        registered = datetime.now(UTC)
        assert may_live(socket.gethostname(), proc.pid, registered)
        # what the scheduler asks of a peer's row
        assert core._process_may_live(_instance(proc.pid, registered))
    finally:
        proc.kill()
        proc.wait()


def test_a_pid_taken_by_a_process_started_after_the_registration_is_not_the_instance() -> None:
    proc = _spawned()
    try:
        registered = process_started_at(proc.pid) - timedelta(minutes=5)
        assert not may_live(socket.gethostname(), proc.pid, registered)
    finally:
        proc.kill()
        proc.wait()


def test_a_gone_process_is_dead_and_other_hosts_are_not_judged() -> None:
    proc = _spawned()
    proc.kill()
    proc.wait()
    now = datetime.now(UTC)
    assert not may_live(socket.gethostname(), proc.pid, now)
    assert may_live("another-host", proc.pid, now)
    assert may_live(socket.gethostname(), os.getpid(), now - timedelta(days=365))


def test_process_start_time_is_close_to_the_spawn() -> None:
    before = datetime.now(UTC)
    proc = _spawned()
    try:
        started = process_started_at(proc.pid)
        assert before - timedelta(seconds=2) <= started <= datetime.now(UTC) + timedelta(seconds=2)
    finally:
        proc.kill()
        proc.wait()
