"""The sanity loop with 10,000 task instances in flight: how long one round takes.

The real `Scheduler` in-process with `InstantLauncher(hold=True)` (tests/
instant_launcher.py): every attempt starts and stays running, so after N
independent tasks are launched N tries are in flight and the launcher reports all of
them alive. Then `--rounds` sanity rounds are timed on their own
(`SanityLoop.round`), with nothing to decide (the healthy case, which is every
round in production) and once with every try a zombie (the worst case: N
decisions, N kills). The round must stay well below the sanity interval (5 s)
so it never becomes the scheduler's bottleneck.

Postgres: a fresh database per run (CREATE DATABASE bench_sanity_..., dropped
at the end); SQLite: a temp file.

Run: .venv/bin/python benchmarks/sanity_bench.py [--backend postgres|sqlite] [--size 10000]
        [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import shapes  # noqa: E402
from common import PG_BASE_URL, pg_admin  # noqa: E402

from miniflow.scheduler.clock import ManualClock  # noqa: E402
from miniflow.scheduler.core import Scheduler, SchedulerSettings  # noqa: E402
from miniflow.scheduler.manual_runs import trigger  # noqa: E402
from miniflow.scheduler.sanity import SanitySettings  # noqa: E402
from miniflow.store import engine as store_engine  # noqa: E402
from miniflow.store import schema  # noqa: E402
from tests.instant_launcher import InstantLauncher  # noqa: E402


class HeldWorkers(InstantLauncher):
    worker_kinds: frozenset[str] = frozenset({"bash"})


async def _measure(url: str, size: int, rounds: int) -> dict[str, float]:
    engine = store_engine.create_engine(url)
    await schema.upgrade(engine)
    folder = Path(tempfile.mkdtemp(prefix="bench_sanity_dags_"))
    (folder / "wide.py").write_text(
        shapes.HEADER
        + f"with DAG('wide', start_date=datetime(2026, 1, 1), max_active_tasks={size}):\n"
        + f"    [Bash(f't{{i}}', 'true') for i in range({size})]\n"
    )
    clock = ManualClock(datetime.now(UTC))
    launcher = HeldWorkers(hold=True)
    settings = SchedulerSettings(
        parallelism=size + 10,
        schedule_runs=False,
        sanity=SanitySettings(interval=1e9, zombie_threshold=30.0, queued_timeout=1e9),
    )
    scheduler = Scheduler(
        engine=engine, launcher=launcher, dags_folder=folder, settings=settings, clock=clock
    )
    await scheduler.start()
    try:
        await scheduler.tick()
        async with store_engine.transaction(scheduler.sessions) as session:
            await trigger(session, "wide", conf_json=None, now=clock.now())
        while len(launcher.launched) < size:
            await scheduler.tick()
        await scheduler.tick()  # record the started events
        in_flight = len(scheduler.inflight)
        healthy = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            findings = await scheduler.sanity.round(scheduler, clock.now())
            healthy.append(time.perf_counter() - t0)
            assert findings.total == 0, findings
        clock.advance(3600)  # every running try is now silent past the threshold
        t0 = time.perf_counter()
        findings = await scheduler.sanity.round(scheduler, clock.now())
        zombies = time.perf_counter() - t0
        return {
            "in_flight": in_flight,
            "healthy_median": statistics.median(healthy),
            "healthy_max": max(healthy),
            "all_zombies": zombies,
            "zombies_found": findings.zombies,
        }
    finally:
        await scheduler.close()
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # a zombie round logs one line per try
    if args.backend == "postgres":
        name = f"bench_sanity_{uuid.uuid4().hex[:8]}"
        await pg_admin(f'CREATE DATABASE "{name}"')
        try:
            result = await _measure(f"{PG_BASE_URL}/{name}", args.size, args.rounds)
        finally:
            await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        path = Path(tempfile.mkdtemp(prefix="bench_sanity_")) / "miniflow.db"
        result = await _measure(f"sqlite+aiosqlite:///{path}", args.size, args.rounds)
    print(
        f"{args.backend}: {result['in_flight']:.0f} tries in flight; healthy round "
        f"{result['healthy_median'] * 1000:.0f} ms median (max {result['healthy_max'] * 1000:.0f}"
        f" ms) over {args.rounds}; a round finding {result['zombies_found']:.0f} zombies "
        f"{result['all_zombies'] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
