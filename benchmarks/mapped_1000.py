"""A 1,000-way mapped `@task` against the same 1,000 tasks written as a static fan-out.

The real `Scheduler` in-process with the `InstantLauncher` (tests/instant_launcher.py:
every attempt starts and exits at once), so what is measured is the scheduler's own work
per task instance: for the mapped DAG that includes the expansion (one `none → mapped`,
1,000 inserted instances, the `mapped → success` settle), for the static one the run's
1,000 rows created with the run. Both DAGs: `start` >> 1,000 `work` >> `join`.

For each backend, `--repeat` samples, each on a fresh database (Postgres: CREATE DATABASE
bench_map_..., dropped at the end; SQLite: a temp file) and a fresh scheduler; prints the
wall time from trigger to success, ms per task instance and SQL statements (total, and the
most in one tick), and the mapped / static ratio.

Run: .venv/bin/python benchmarks/mapped_1000.py [--backend postgres|sqlite|both]
        [--width 1000] [--parallelism 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

from common import sample_database  # noqa: E402

SHAPES = {
    "static": """
        from datetime import datetime
        from miniflow import DAG, Empty, task

        with DAG("static", start_date=datetime(2026, 1, 1), max_active_tasks={par}):
            @task
            def work(x):
                return x

            start, join = Empty("start"), Empty("join")
            for i in range({width}):
                start >> work(i) >> join
    """,
    "mapped": """
        from datetime import datetime
        from miniflow import DAG, Empty, task

        with DAG("mapped", start_date=datetime(2026, 1, 1), max_active_tasks={par}):
            @task
            def work(x):
                return x

            Empty("start") >> work.expand(x=list(range({width}))) >> Empty("join")
    """,
}


async def measure(backend: str, shape: str, width: int, par: int) -> tuple[float, int, int]:
    """(seconds from trigger to success, statements, most statements in one tick)."""
    from sqlalchemy import event

    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from miniflow.scheduler.manual_runs import trigger
    from miniflow.store import engine as store_engine
    from tests.instant_launcher import InstantLauncher

    with tempfile.TemporaryDirectory(prefix="mf-map-") as tmp_name:
        tmp = Path(tmp_name)
        dags = tmp / "dags"
        dags.mkdir()
        source = textwrap.dedent(SHAPES[shape]).format(width=width, par=par)
        (dags / f"{shape}.py").write_text(source)
        async with sample_database(backend, "bench_map", tmp) as engine:
            launcher = InstantLauncher()
            scheduler = Scheduler(
                engine=engine,
                launcher=launcher,
                dags_folder=dags,
                settings=SchedulerSettings(
                    parallelism=par, schedule_runs=False, max_map_length=max(width, 1024)
                ),
            )
            await scheduler.start()
            await scheduler.tick()  # parses
            statements = [0]
            per_tick: list[int] = []

            def count(*_: Any) -> None:
                statements[0] += 1

            event.listen(engine.sync_engine, "before_cursor_execute", count)
            original = scheduler.tick

            async def counted() -> Any:
                before = statements[0]
                stats = await original()
                per_tick.append(statements[0] - before)
                return stats

            scheduler.tick = counted  # type: ignore[method-assign]
            t0 = time.perf_counter()
            async with store_engine.transaction(scheduler.sessions) as session:
                run_id = await trigger(session, shape, conf_json=None, now=datetime.now(UTC))
            state = await scheduler.run_until_done(shape, run_id, timeout=120)
            wall = time.perf_counter() - t0
            await scheduler.close()
            assert state == "success", state
            launched = [s for s in launcher.launched if s.key.task_id.startswith("work")]
            assert len(launched) == width, len(launched)
    return wall, statements[0], max(per_tick, default=0)


async def run(args: argparse.Namespace) -> None:
    backends = ["postgres", "sqlite"] if args.backend == "both" else [args.backend]
    print(f"{args.width}-way, parallelism {args.parallelism}, {args.repeat} samples (median)")
    print(f"{'backend':9} {'shape':7} {'wall s':>7} {'ms/task':>8} {'stmts':>6} {'max/tick':>8}")
    for backend in backends:
        walls: dict[str, float] = {}
        for shape in ("static", "mapped"):
            samples = [
                await measure(backend, shape, args.width, args.parallelism)
                for _ in range(args.repeat)
            ]
            wall = statistics.median(s[0] for s in samples)
            stmts = int(statistics.median(s[1] for s in samples))
            most = max(s[2] for s in samples)
            walls[shape] = wall
            per_task = 1000 * wall / args.width
            print(f"{backend:9} {shape:7} {wall:7.2f} {per_task:8.2f} {stmts:6d} {most:8d}")
        print(f"{backend:9} mapped / static: {walls['mapped'] / walls['static']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--parallelism", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
