"""A launcher (or scheduler) killed between starting a process and writing its marker.

The window the go pipe closes: the attempt's process exists, its launch marker
does not. Before the fix the process ran at once, so the restarted scheduler,
finding no marker, took the try for "never started" and ran it a second time.
The fault point is outside miniflow (an audit hook loaded through
`sitecustomize`, see stall_hook/): the process is frozen exactly when it opens
the marker for writing, then SIGKILLed. Each execution of the task appends one
line to a proof file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from miniflow.cli import operations
from miniflow.config import load_config
from miniflow.store import attempts as store_attempts
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from tests.e2e.helpers import (
    cli_env,
    kill_group,
    query,
    spawn_cli,
    stop,
    until,
    wait_for,
    write_dag,
)

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "launcher_driver.py"
HOOK = HERE / "stall_hook"


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan may wait for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def _stall_env(report: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "FAULT_STALL_AT_MARKER": str(report)}


def _stalled_pids(report: Path) -> list[int]:
    """The pids the stalled process had started (read once the hook reported)."""
    wait_for(report.exists, 60, "the process to reach the marker")
    return [int(p) for p in report.read_text().split()]


@contextlib.contextmanager
def _reaped(pids: list[int]) -> Iterator[None]:
    """On the way out, SIGKILL whatever of `pids` still lives (nothing, if the fix works)."""
    try:
        yield
    finally:
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _proof_lines(proof: Path) -> list[str]:
    return proof.read_text().splitlines() if proof.exists() else []


@pytest.mark.parametrize("kind", ["bash", "python"])
def test_launcher_killed_before_its_marker_runs_nothing_twice(tmp_path: Path, kind: str) -> None:
    state, proof, report = tmp_path / "state", tmp_path / "proof", tmp_path / "stalled"
    argv = [sys.executable, str(DRIVER), str(state), kind, str(proof)]
    stalled = subprocess.Popen(
        argv, env={**os.environ, **_stall_env(report)}, start_new_session=True
    )
    started: list[int] = []
    with _reaped(started):
        try:
            started += _stalled_pids(report)
            assert started  # the attempt's process exists: the window is real
            os.kill(stalled.pid, signal.SIGKILL)  # the launcher alone, not its processes
            assert stalled.wait(10) == -signal.SIGKILL
        finally:
            kill_group(stalled)  # type: ignore[arg-type]
            stalled.wait(10)
        wait_for(lambda: not any(map(_alive, started)), 15, "the started processes to exit")
        assert _proof_lines(proof) == []  # no marker, and nothing ran

        again = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
        assert again.returncode == 0, again.stderr
        assert "exited 0 Completed" in again.stdout
    assert len(_proof_lines(proof)) == 1  # exactly one execution


ONCE_DAG = """
    from datetime import datetime
    from miniflow import DAG, Bash

    with DAG("once", start_date=datetime(2026, 1, 1)):
        Bash("once", "echo 'ran try {{{{ try_number }}}}' >> {proof}")
"""


async def test_scheduler_killed_before_the_marker_runs_the_task_once(
    db_url: str, tmp_path: Path
) -> None:
    dags, state = tmp_path / "dags", tmp_path / "state"
    proof, report = tmp_path / "proof", tmp_path / "stalled"
    write_dag(dags, "once.py", ONCE_DAG.format(proof=proof))
    env = cli_env(db_url, dags, state)
    run_id = await operations.trigger(load_config(environ=env), "once", conf_json=None)

    async def finished() -> bool:
        run = await query(db_url, store_runs.get_run, "once", run_id)
        return run.state in ("success", "failed")

    procs: list[subprocess.Popen[bytes]] = []
    started: list[int] = []
    with _reaped(started):
        try:
            first = spawn_cli(["scheduler"], {**env, **_stall_env(report)}, tmp_path / "s1.log")
            procs.append(first)
            started += _stalled_pids(report)
            assert started
            os.kill(first.pid, signal.SIGKILL)  # the scheduler alone: its tasks live on
            assert first.wait(10) == -signal.SIGKILL
            wait_for(lambda: not any(map(_alive, started)), 15, "the started processes to exit")
            assert _proof_lines(proof) == []

            second = spawn_cli(["scheduler"], env, tmp_path / "s2.log")
            procs.append(second)
            await until(finished, 60, "the run to finish after the restart")
            assert stop(second, signal.SIGTERM) == 0
        finally:
            for proc in procs:
                kill_group(proc)
                proc.wait(5)
    run = await query(db_url, store_runs.get_run, "once", run_id)
    assert run.state == "success", (tmp_path / "s2.log").read_text()
    (ti,) = await query(db_url, store_tis.list_for_run, "once", run_id)
    attempts = await query(db_url, store_attempts.for_run, "once", run_id)
    # Try 1's first launch never ran (lost before it started): the same try was launched
    # again, without using a retry, and ran once.
    assert [(a.try_number, a.reason) for a in attempts] == [(1, "Completed")]
    assert attempts[0].message is not None and "lost before it started" in attempts[0].message
    assert (ti.state, ti.try_number, ti.launch_attempts) == ("success", 1, 1)
    assert _proof_lines(proof) == ["ran try 1"]
