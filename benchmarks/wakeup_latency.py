"""How long an idle `miniflow scheduler` takes to start a run another process triggered.

A `miniflow scheduler` subprocess runs against a fresh database (Postgres, SQLite
or both) with an empty-command DAG; this process triggers a run the way `miniflow
dags trigger` does (`miniflow.cli.operations.trigger`, parse skipped), waits for it to
succeed, waits a random 0.2-1.2 s so the scheduler is idle again, and repeats.
Latency = the run's `started_at` (the scheduler's clock) minus its `created_at`
(the triggering process' clock, taken just before the insert and the commit, so
the figure includes the commit; same host). Both processes import miniflow
from the checkout this script is in, so running the script from a worktree of an
older commit measures that commit (the comparison before wake-ups existed).

Run: .venv/bin/python benchmarks/wakeup_latency.py [--backend sqlite|postgres|both]
        [--count 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import PG_BASE_URL, pg_admin  # noqa: E402

DAG = """
from datetime import datetime
from miniflow import DAG, Bash

with DAG("wake", start_date=datetime(2026, 1, 1)):
    Bash("t", "true")
"""


def _scheduler(url: str, home: Path) -> tuple[dict[str, str], subprocess.Popen[bytes]]:
    """Migrate, parse, and start `miniflow scheduler` (importing this checkout)."""
    env = {
        **os.environ,
        "MINIFLOW_HOME": str(home),
        "MINIFLOW_DATABASE_URL": url,
        "MINIFLOW_DAGS_FOLDER": str(home / "dags"),
        "PYTHONPATH": str(ROOT),
    }
    miniflow = [sys.executable, "-c", "from miniflow.cli.main import main; main()"]
    subprocess.run([*miniflow, "db", "upgrade"], env=env, check=True, capture_output=True)
    subprocess.run([*miniflow, "dags", "list"], env=env, check=True, capture_output=True)
    with open(home / "scheduler.log", "wb") as log:
        proc = subprocess.Popen([*miniflow, "scheduler"], env=env, stdout=log, stderr=log)
    return env, proc


async def _measure(url: str, env: dict[str, str], count: int) -> list[float]:
    from sqlalchemy import select

    from miniflow.cli import operations
    from miniflow.config import load_config
    from miniflow.store import engine as store_engine
    from miniflow.store import states
    from miniflow.store.models import DagRun

    config = load_config(environ=env)
    latencies: list[float] = []
    engine = store_engine.create_engine(url)
    sessions = store_engine.sessionmaker(engine)
    try:
        await asyncio.sleep(2.0)  # start-up, first parse
        for _ in range(count):
            await asyncio.sleep(random.uniform(0.2, 1.2))  # idle again, at a random phase
            run_id = await operations.trigger(config, "wake", conf_json=None, parse=False)
            while True:
                async with store_engine.transaction(sessions) as session:
                    state, created, started = (
                        await session.execute(
                            select(DagRun.state, DagRun.created_at, DagRun.started_at).where(
                                DagRun.dag_id == "wake", DagRun.run_id == run_id
                            )
                        )
                    ).one()
                if state in states.RUN_FINISHED:
                    break
                await asyncio.sleep(0.02)
            latencies.append((started - created).total_seconds())
    finally:
        await engine.dispose()
    return latencies


def _backend(backend: str, count: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "dags").mkdir()
        (home / "dags" / "wake.py").write_text(DAG)
        name = f"bench_wake_{uuid.uuid4().hex[:8]}"
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{home / 'miniflow.db'}"
        else:
            url = f"{PG_BASE_URL}/{name}"
            asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
        try:
            env, proc = _scheduler(url, home)
            try:
                return asyncio.run(_measure(url, env, count))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        finally:
            if backend == "postgres":
                asyncio.run(pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--count", type=int, default=15)
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        started = time.perf_counter()
        found = _backend(backend, args.count)
        ms = sorted(x * 1000 for x in found)
        print(
            f"{backend:9} trigger → run started: median {statistics.median(ms):.0f} ms, "
            f"min {ms[0]:.0f}, max {ms[-1]:.0f} ms over {len(ms)} triggers "
            f"({time.perf_counter() - started:.0f} s)"
        )


if __name__ == "__main__":
    main()
