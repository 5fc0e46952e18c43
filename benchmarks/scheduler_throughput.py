"""Scheduler alone: task instances per second and SQL statements per tick.

The real `Scheduler` in-process with the in-process `InstantLauncher`
(tests/instant_launcher.py: every attempt starts and exits at once, nothing
runs), so what is measured is the scheduler's own work through every state
transition (none → scheduled → queued → running → success) and the database.

DAG (`--shape`): `fanout`, N tasks (`start`, N-2 parallel, `join`), or `wide`, N tasks
(`start` and N-1 parallel tasks, no join: the run ends when the last of them does); no
schedule.
For each backend (Postgres, SQLite), size (200, 2000) and parallelism (2000,
so the limit is not the bottleneck, and 32), `--repeat` samples, each on a
fresh database (Postgres: CREATE DATABASE bench_tp_..., dropped at the end;
SQLite: a temp file) with a fresh scheduler: one `tick()` parses, then
`trigger()` and `run_until_done()`; TI/s = N / (wall from trigger to success).
The DAG's `max_active_tasks` equals the parallelism.

Statements are counted with a `before_cursor_execute` listener on
`engine.sync_engine` (an executemany counts once), per `tick()`; the table
shows the median and max per busy tick, so constant-per-tick means the max
does not grow from 200 to 2000 tasks. A per-phase breakdown (time and
statements of `_record_events`, `_create_and_start_runs`, `_advance_runs`,
`_claim`, `_launch`, and the `get_run` poll of `run_until_done`) is printed
for the largest case.

`--statements` lists the statements of that case by total time (count, ms: the driver
call's wall, so on a loaded machine also time waiting for a CPU). On Postgres, "TI rows
read/TI" is the task_instance rows the sample read (the table's statistics: sequential
scans + index fetches) per task instance: a figure the machine's load cannot blur, and
one that grows with the run's size where a round reads the run instead of what changed.

`--profile` runs one Postgres case (the largest size and parallelism given) under cProfile
and prints the top functions.

Run: .venv/bin/python benchmarks/scheduler_throughput.py [--backend postgres|sqlite|both]
        [--sizes 200,2000] [--parallelism 2000,32] [--shape fanout|wide] [--repeat 3]
        [--profile] [--statements]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import shapes  # noqa: E402
from common import PG_ADMIN_DSN, sample_database  # noqa: E402

RUN_TIMEOUT = 300.0
PHASES = ("_record_events", "_create_and_start_runs", "_advance_runs", "_claim", "_launch")


@dataclass
class Counter:
    """Statements seen by the listener, attributed to the current phase."""

    phase: str = "other"
    total: int = 0
    by_phase: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    time_by_phase: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    texts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    text_time: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _started: tuple[str, float] | None = None

    def on_execute(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool
    ) -> None:
        self.total += 1
        self.by_phase[self.phase] += 1
        text = f"[{self.phase}] " + " ".join(statement.split())[:90]
        self.texts[text] += 1
        self._started = (text, time.perf_counter())

    def on_executed(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool
    ) -> None:
        # Wall from the driver call to its return: the database's time plus the round trip
        # (on a loaded machine, also time spent waiting for the CPU).
        if self._started is not None:
            text, t0 = self._started
            self.text_time[text] += time.perf_counter() - t0
            self._started = None


@dataclass
class Sample:
    backend: str
    tasks: int
    parallelism: int
    wall: float
    cpu: float
    ticks: list[tuple[int, int, int]]  # (statements, launched, events) per tick
    first_launch: float  # seconds from trigger to the end of the first tick that launched
    counter: Counter
    state: str
    rows_read: int | None = None  # Postgres: task_instance rows read (sequential + index)


async def measure(
    backend: str, tasks: int, parallelism: int, *, shape: str = "fanout", profile: bool = False
) -> Sample:
    from sqlalchemy import event

    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from miniflow.scheduler.manual_runs import trigger
    from miniflow.store import engine as store_engine
    from tests.instant_launcher import InstantLauncher

    dag_id = f"{shape}_{tasks}"
    rows_read: list[int] = []  # Postgres: filled as the database is dropped

    async def read_rows(db_name: str) -> None:
        rows_read.append(await _rows_read(db_name))

    with tempfile.TemporaryDirectory(prefix="mf-tp-") as tmp_name:
        tmp = Path(tmp_name)
        dags = tmp / "dags"
        dags.mkdir()
        (dags / f"{dag_id}.py").write_text(
            shapes.fanout(
                dag_id,
                tasks - 2 if shape == "fanout" else tasks - 1,
                max_active_tasks=parallelism,
                join=shape == "fanout",
            )
        )
        async with sample_database(backend, "bench_tp", tmp, before_drop=read_rows) as engine:
            launcher = InstantLauncher()
            scheduler = Scheduler(
                engine=engine,
                launcher=launcher,
                dags_folder=dags,
                settings=SchedulerSettings(parallelism=parallelism, schedule_runs=False),
            )
            counter = Counter()
            event.listen(engine.sync_engine, "before_cursor_execute", counter.on_execute)
            event.listen(engine.sync_engine, "after_cursor_execute", counter.on_executed)
            for name in PHASES:
                _instrument(scheduler, name, counter)
            await scheduler.start()
            await scheduler.tick()  # parses
            ticks: list[tuple[int, int, int]] = []
            first_launch: list[float] = []
            original_tick = scheduler.tick

            async def counted_tick() -> Any:
                before = counter.total
                stats = await original_tick()
                ticks.append((counter.total - before, stats.launched, stats.events))
                if stats.launched and not first_launch:
                    first_launch.append(time.perf_counter() - t0)
                counter.phase = "run_until_done poll"
                return stats

            scheduler.tick = counted_tick  # type: ignore[method-assign]
            counter.by_phase.clear()
            counter.time_by_phase.clear()
            counter.texts.clear()
            counter.text_time.clear()
            prof = cProfile.Profile() if profile else None
            cpu0 = _cpu()
            t0 = time.perf_counter()
            async with store_engine.transaction(scheduler.sessions) as session:
                run_id = await trigger(session, dag_id, conf_json=None, now=datetime.now(UTC))
            if prof:
                prof.enable()
            state = await scheduler.run_until_done(dag_id, run_id, timeout=RUN_TIMEOUT)
            if prof:
                prof.disable()
            wall = time.perf_counter() - t0
            cpu = _cpu() - cpu0
            await scheduler.close()
            assert len(launcher.launched) == tasks, (len(launcher.launched), tasks)
    if prof:
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(25)
        stats.print_callers("raw_decode|_do_post_synchronize_evaluate|states_for_runs")
        stats.print_callees("_advance_runs")
        print(out.getvalue())
    return Sample(
        backend,
        tasks,
        parallelism,
        wall,
        cpu,
        ticks,
        first_launch[0],
        counter,
        state,
        rows_read[0] if rows_read else None,
    )


async def _rows_read(db_name: str) -> int:
    """task_instance rows the whole sample read (PostgreSQL's table statistics: sequential
    scans + index fetches), a figure no other process's load can blur. Each closed
    connection flushes its counts as its backend exits: read until they stop changing."""
    import asyncpg

    conn = await asyncpg.connect(f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{db_name}")
    try:
        last = -1
        for _ in range(30):
            found = await conn.fetchval(
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
                " FROM pg_stat_user_tables WHERE relname = 'task_instance'"
            )
            if found == last:
                break
            last = int(found or 0)
            await asyncio.sleep(0.2)
        return last
    finally:
        await conn.close()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _instrument(scheduler: Any, name: str, counter: Counter) -> None:
    original = getattr(scheduler, name)

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        counter.phase = name
        t0 = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            counter.time_by_phase[name] += time.perf_counter() - t0
            counter.phase = "other"

    setattr(scheduler, name, wrapped)


def fmt(values: list[float], digits: int = 0) -> str:
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


async def run(args: argparse.Namespace) -> None:
    backends = ["postgres", "sqlite"] if args.backend == "both" else [args.backend]
    sizes = [int(s) for s in args.sizes.split(",")]
    pars = [int(p) for p in args.parallelism.split(",")]
    if args.profile:
        await measure(backends[0], max(sizes), max(pars), shape=args.shape, profile=True)
        return
    cases = [(b, n, p) for b in backends for p in pars for n in sizes]
    samples: dict[tuple[str, int, int], list[Sample]] = defaultdict(list)
    for round_no in range(args.repeat):  # interleaved rounds
        for case in cases:
            s = await measure(*case, shape=args.shape)
            samples[case].append(s)
            print(
                f"  round {round_no + 1} {case[0]:8s} tasks={case[1]:5d} parallelism={case[2]:5d}"
                f" {s.state} {s.wall:.2f} s  {case[1] / s.wall:.0f} TI/s  ticks={len(s.ticks)}",
                file=sys.stderr,
                flush=True,
            )

    print(
        f"\nshape {args.shape}, median of {args.repeat} (min-max); "
        "TI/s = tasks / (trigger → run success)"
    )
    print(
        f"{'backend':8s} {'tasks':>5s} {'par':>5s}  {'TI/s':18s} {'wall s':20s} "
        f"{'1st launch s':12s} {'TI/s after':10s} {'CPU ms/TI':9s} {'ticks':>5s} "
        f"{'stmts/busy tick med':>19s} {'max':>5s} {'stmts/TI':>8s} {'TI rows read/TI':>15s}"
    )
    for (backend, n, p), ss in samples.items():
        busy = [c for s in ss for c, launched, events in s.ticks if launched or events]
        total_stmts = statistics.median([sum(c for c, _, _ in s.ticks) for s in ss])
        read = [s.rows_read / n for s in ss if s.rows_read is not None]
        print(
            f"{backend:8s} {n:5d} {p:5d}  {fmt([n / s.wall for s in ss]):18s} "
            f"{fmt([s.wall for s in ss], 2):20s} "
            f"{statistics.median([s.first_launch for s in ss]):<12.2f} "
            f"{statistics.median([n / (s.wall - s.first_launch) for s in ss]):<10.0f} "
            f"{statistics.median([s.cpu / n * 1000 for s in ss]):<9.2f} "
            f"{statistics.median([len(s.ticks) for s in ss]):5.0f} "
            f"{statistics.median(busy):19.0f} {max(busy):5d} {total_stmts / n:8.2f} "
            f"{statistics.median(read) if read else float('nan'):15.1f}"
        )
    print("\nper phase (median sample, largest size):")
    for backend, p in [(b, p) for b in backends for p in pars]:
        ss = samples[(backend, max(sizes), p)]
        s = sorted(ss, key=lambda x: x.wall)[len(ss) // 2]
        print(f"  {backend} parallelism {p}: wall {s.wall:.2f} s")
        for phase in (*PHASES, "run_until_done poll"):
            print(
                f"    {phase:24s} {s.counter.time_by_phase.get(phase, 0.0):7.3f} s "
                f"{s.counter.by_phase.get(phase, 0):6d} statements"
            )
        if args.statements:
            print("      count  total ms  statement (by total time)")
            by_time = sorted(s.counter.texts.items(), key=lambda kv: -s.counter.text_time[kv[0]])
            for text, count in by_time[:25]:
                print(f"      {count:6d} {s.counter.text_time[text] * 1000:9.0f}  {text}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--sizes", default="200,2000")
    parser.add_argument("--parallelism", default="2000,32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shape", choices=["fanout", "wide"], default="fanout")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--statements", action="store_true", help="list the statements by total time"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
