"""Helpers for end-to-end tests: the real `miniflow` command, DAG files, database reads."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from miniflow.scheduler import manual_runs
from miniflow.scheduler.core import Scheduler
from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import task_instances as store_tis
from miniflow.store.records import AttemptRecord, TaskInstanceRecord

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "dags"
MINIFLOW = str(Path(sys.executable).with_name("miniflow"))

T = TypeVar("T")


def write_dag(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source).lstrip())
    return path


def cli_env(db_url: str, dags_folder: Path, state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a `miniflow` subprocess: only our settings, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIFLOW_")}
    env.update(
        MINIFLOW_HOME=str(state_dir.parent / "home"),  # never the real ~/miniflow
        MINIFLOW_DATABASE_URL=db_url,
        MINIFLOW_DAGS_FOLDER=str(dags_folder),
        MINIFLOW_STATE_DIR=str(state_dir),
        MINIFLOW_PARSE_INTERVAL="0.5",
        MINIFLOW_KILL_GRACE_PERIOD="1",
        MINIFLOW_WEB_PORT="0",  # standalone's web UI: a free port, never a shared one
        # stderr is a pipe or a file here, which would mean JSON: tests read the text form
        MINIFLOW_LOG_FORMAT="text",
        COLUMNS="200",  # rich tables: no truncated cells
        NO_COLOR="1",
    )
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str], env: dict[str, str], *, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MINIFLOW, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def spawn_cli(args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A long-running `miniflow` process in its own process group, output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [MINIFLOW, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    """Signal the process, wait for it; SIGKILL its whole group if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc)
    return proc.wait(5)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll a condition (a database row, a file) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def query(db_url: str, func: Callable[..., Any], *args: Any) -> Any:
    """Run `func(session, *args)` in one transaction on a fresh engine."""
    engine = store_engine.create_engine(db_url)
    try:
        async with store_engine.transaction(store_engine.sessionmaker(engine)) as session:
            return await func(session, *args)
    finally:
        await engine.dispose()


def query_sync(db_url: str, func: Callable[..., Any], *args: Any) -> Any:
    """`query` from synchronous test code (no event loop running)."""
    return asyncio.run(query(db_url, func, *args))


async def until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll an async condition (database rows written by another process) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def max_overlap(intervals: Sequence[tuple[datetime, datetime]]) -> int:
    """Most intervals open at one instant (an end at t closes before a start at t)."""
    points = [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals]
    points.sort(key=lambda p: (p[0], p[1]))
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


class SchedulerHandle:
    """An in-process scheduler under test: trigger a run, run it, read what it recorded."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    async def trigger(self, dag_id: str) -> str:
        async with store_engine.transaction(self.scheduler.sessions) as session:
            return await manual_runs.trigger(session, dag_id, conf_json=None, now=datetime.now(UTC))

    async def run(self, dag_id: str, timeout: float = 60) -> tuple[str, str]:
        run_id = await self.trigger(dag_id)
        return run_id, await self.scheduler.run_until_done(dag_id, run_id, timeout=timeout)

    async def tis(self, dag_id: str, run_id: str) -> dict[str, TaskInstanceRecord]:
        async with store_engine.transaction(self.scheduler.sessions) as session:
            return {t.task_id: t for t in await store_tis.list_for_run(session, dag_id, run_id)}

    async def attempts(self, dag_id: str, run_id: str) -> list[AttemptRecord]:
        async with store_engine.transaction(self.scheduler.sessions) as session:
            return await store_attempts.for_run(session, dag_id, run_id)
