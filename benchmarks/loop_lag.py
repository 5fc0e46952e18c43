"""Event-loop lag of the scheduler while a standard shape runs (target: no stall > 20 ms).

The real `Scheduler` with the real `LocalLauncher` in-process (as run_shapes.py
sets them up: parallelism 32, a fresh database, the shape parsed first), plus a
probe task on the same loop that sleeps 1 ms in a loop and records how late
each wake-up is. Anything that blocks the loop (spawning processes, writing
files, reading /proc, hashing, a long stretch of Python between two awaits)
shows up as a late wake-up. Reported per shape: the worst stall, the 99th
percentile, and how many stalls exceeded 20 ms, median of `--repeat` runs
(min-max), measured from the trigger to the run's success. On a shared
machine a wake-up is also late when the process simply did not get a CPU;
"worst busy" is the most CPU the loop's thread itself spent between two
wake-ups (`time.thread_time`): the part of a stall that is the loop's own work
(or a system call it waited in), not someone else's.

`--trace` also turns on asyncio's debug mode, which logs every callback that
held the loop for more than 20 ms (debug mode slows the loop down: the figures
of a traced run are not the benchmark's).

Run: .venv/bin/python benchmarks/loop_lag.py [--backend postgres|sqlite]
        [--shape fanout_200 ...] [--repeat 3] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import shapes  # noqa: E402
from common import PG_BASE_URL, pg_admin  # noqa: E402

STALL = 0.020
PROBE_SLEEP = 0.001
RUN_TIMEOUT = 180.0


@dataclass
class Probe:
    """Sleeps `PROBE_SLEEP` again and again; records how late each wake-up was."""

    lags: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)  # the loop thread's CPU per wake-up
    running: bool = True

    async def run(self) -> None:
        while self.running:
            t0, c0 = time.perf_counter(), time.thread_time()
            await asyncio.sleep(PROBE_SLEEP)
            self.lags.append(time.perf_counter() - t0 - PROBE_SLEEP)
            self.busy.append(time.thread_time() - c0)

    def clear(self) -> None:
        self.lags.clear()
        self.busy.clear()


async def measure(backend: str, shape: str) -> tuple[float, float, int, float, float]:
    """(worst lag, p99 lag, stalls over 20 ms, worst busy, wall) of one run of `shape`."""
    from miniflow.cli import wiring
    from miniflow.config import load_config
    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from miniflow.scheduler.manual_runs import trigger
    from miniflow.store import engine as store_engine
    from miniflow.store import schema

    db_name = f"bench_lag_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="mf-lag-") as tmp_name:
        tmp = Path(tmp_name)
        dags = tmp / "dags"
        shapes.write_shapes(dags, [shape])
        if backend == "postgres":
            await pg_admin(f'CREATE DATABASE "{db_name}"')
            url = f"{PG_BASE_URL}/{db_name}"
        else:
            url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        config = load_config(
            environ={
                "MINIFLOW_DATABASE_URL": url,
                "MINIFLOW_DAGS_FOLDER": str(dags),
                "MINIFLOW_STATE_DIR": str(tmp / "state"),
                "MINIFLOW_PARALLELISM": "32",
                "MINIFLOW_LAUNCHER": "local",
            }
        )
        engine = store_engine.create_engine(config.database_url)
        try:
            await schema.upgrade(engine)
            scheduler = Scheduler(
                engine=engine,
                launcher=wiring.make_launcher(config),
                dags_folder=config.dags_folder,
                settings=SchedulerSettings(
                    parallelism=config.parallelism, parse_interval=config.parse_interval
                ),
                parse_timeout=config.parse_timeout,
            )
            await scheduler.start()
            gc.freeze()  # as the daemon does after start (miniflow/cli/daemon.py)
            try:
                await scheduler.tick()  # parses the folder
                probe = Probe()
                probing = asyncio.create_task(probe.run())
                await asyncio.sleep(0.05)
                probe.clear()  # the probe's own start
                t0 = time.perf_counter()
                async with store_engine.transaction(scheduler.sessions) as session:
                    run_id = await trigger(session, shape, conf_json=None, now=datetime.now(UTC))
                state = await scheduler.run_until_done(shape, run_id, timeout=RUN_TIMEOUT)
                wall = time.perf_counter() - t0
                probe.running = False
                await probing
            finally:
                await scheduler.close()
            assert state == "success", state
        finally:
            await engine.dispose()
            if backend == "postgres":
                await pg_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    lags = sorted(probe.lags)
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    return lags[-1], p99, sum(1 for lag in lags if lag > STALL), max(probe.busy), wall


def fmt(values: list[float], scale: float = 1000.0, unit: str = "ms") -> str:
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med * scale:.1f} {unit} ({lo * scale:.1f}-{hi * scale:.1f})"


async def run(args: argparse.Namespace) -> None:
    if args.trace:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = STALL
    names = args.shape or ["fanout_200"]
    results: dict[str, list[tuple[float, float, int, float, float]]] = {n: [] for n in names}
    for round_no in range(args.repeat):
        for name in names:
            worst, p99, stalls, busy, wall = await measure(args.backend, name)
            results[name].append((worst, p99, stalls, busy, wall))
            print(
                f"  round {round_no + 1} {name:18s} worst {worst * 1000:.1f} ms, p99 "
                f"{p99 * 1000:.1f} ms, {stalls} stalls > {STALL * 1000:.0f} ms, worst busy "
                f"{busy * 1000:.1f} ms, wall {wall:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    print(f"\n{args.backend}, median of {args.repeat} (min-max), trigger → run success")
    print(
        f"{'shape':18s} {'worst stall':24s} {'p99 lag':22s} {'stalls > 20 ms':16s} "
        f"{'worst busy':22s} wall"
    )
    for name, rows in results.items():
        print(
            f"{name:18s} {fmt([r[0] for r in rows]):24s} {fmt([r[1] for r in rows]):22s} "
            f"{statistics.median([r[2] for r in rows]):<16.0f} "
            f"{fmt([r[3] for r in rows]):22s} {fmt([r[4] for r in rows], 1.0, 's')}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--shape", action="append", choices=list(shapes.SHAPES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trace", action="store_true", help="log callbacks over 20 ms")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
