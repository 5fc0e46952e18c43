"""Scale (issue 14, target 6): many DAGs x many runs triggered at once, against one run.

The real `Scheduler` in-process with the `InstantLauncher` (tests/instant_launcher.py:
every attempt starts and exits at once, nothing runs), so what is measured is the
scheduler's own work per task instance. Target: the scheduler's CPU per task instance
with `--dags` DAGs x `--runs` runs x `--tasks` tasks all triggered at once no higher than
for one DAG x one run x `--tasks` tasks.

Each DAG is a fan-out (`shapes.fanout`): `start`, `--tasks` - 2 parallel tasks, `join`;
`max_active_tasks` = `--tasks` (so one run is never held back by it), default
`max_active_runs` (16, above 10 runs), no schedule. Global parallelism `--parallelism`.

Each sample runs in its own subprocess (so peak RSS is the sample's own) on a fresh
database (Postgres: CREATE DATABASE bench_scale_..., dropped WITH (FORCE) at the end;
SQLite: a temp file): the DAG files are written, `tick()`s parse until every DAG is in
the database, then every run is triggered in one transaction (its CPU is reported apart:
the API or the CLI does it, not the scheduler), then `tick()`s run (waiting as the
daemon does between idle rounds) until every run has ended. Reported: the scheduler's
CPU (RUSAGE_SELF, trigger excluded) per task instance, wall from trigger to the last run's
end, TI/s, ticks, peak RSS (ru_maxrss) and VmRSS at the end. One invocation measures the
baseline (1 DAG x 1 run) and the scale case alternately: `--repeat` rounds of
`--baseline-repeat` baseline samples and one scale sample.

Run: .venv/bin/python benchmarks/scale_bench.py [--backend postgres|sqlite]
        [--dags 100] [--runs 10] [--tasks 50] [--parallelism 256] [--repeat 1] [--baseline-repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import shapes  # noqa: E402
from common import sample_database  # noqa: E402

RUN_TIMEOUT = 1800.0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _vm_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(
    backend: str, dags: int, runs: int, tasks: int, parallelism: int
) -> dict[str, Any]:
    """One sample: `dags` DAGs x `runs` runs x `tasks` tasks, trigger → every run ended."""
    from sqlalchemy import func, select

    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from miniflow.scheduler.manual_runs import trigger
    from miniflow.store import engine as store_engine
    from miniflow.store.models import Dag, DagRun
    from tests.instant_launcher import InstantLauncher

    dag_ids = [f"scale_{d:03d}" for d in range(dags)]
    with tempfile.TemporaryDirectory(prefix="mf-scale-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "dags"
        folder.mkdir()
        for dag_id in dag_ids:
            (folder / f"{dag_id}.py").write_text(
                shapes.fanout(dag_id, tasks - 2, max_active_tasks=tasks)
            )
        async with sample_database(backend, "bench_scale", tmp) as engine:
            launcher = InstantLauncher()
            scheduler = Scheduler(
                engine=engine,
                launcher=launcher,
                dags_folder=folder,
                settings=SchedulerSettings(parallelism=parallelism, schedule_runs=False),
                parse_timeout=300,
            )
            await scheduler.start()
            async with asyncio.timeout(300):
                while True:
                    await scheduler.tick()  # parses
                    async with store_engine.transaction(scheduler.sessions) as session:
                        parsed = await session.scalar(select(func.count()).select_from(Dag))
                    if parsed == dags:
                        break
                    await asyncio.sleep(0.1)
            t0 = time.perf_counter()
            cpu0 = _cpu()
            now = datetime.now(UTC)
            async with store_engine.transaction(scheduler.sessions) as session:
                for r in range(runs):
                    logical = now - timedelta(seconds=r)
                    for dag_id in dag_ids:
                        await trigger(
                            session, dag_id, conf_json=None, now=now, logical_date=logical
                        )
            trigger_cpu = _cpu() - cpu0
            trigger_wall = time.perf_counter() - t0
            ended: set[tuple[str, str]] = set()
            ticks = 0
            cpu1 = _cpu()
            async with asyncio.timeout(RUN_TIMEOUT):
                while len(ended) < dags * runs:
                    stats = await scheduler.tick()
                    ticks += 1
                    ended.update(stats.runs_ended)
                    if not stats.busy and len(ended) < dags * runs:
                        await scheduler._wait(await scheduler._idle_timeout())
            cpu = _cpu() - cpu1
            wall = time.perf_counter() - t0
            async with store_engine.transaction(scheduler.sessions) as session:
                by_state = dict(
                    (
                        await session.execute(
                            select(DagRun.state, func.count()).group_by(DagRun.state)
                        )
                    ).all()
                )
            await scheduler.close()
            assert len(launcher.launched) == dags * runs * tasks, len(launcher.launched)
    tis = dags * runs * tasks
    return {
        "dags": dags,
        "runs": runs,
        "tasks": tasks,
        "tis": tis,
        "runs_by_state": by_state,
        "wall_s": wall,
        "ti_per_s": tis / wall,
        "cpu_s": cpu,
        "cpu_ms_per_ti": 1000 * cpu / tis,
        "trigger_s": trigger_wall,
        "trigger_cpu_ms_per_ti": 1000 * trigger_cpu / tis,
        "ticks": ticks,
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_end_mib": _vm_rss_mib(),
    }


def sample(args: argparse.Namespace, dags: int, runs: int) -> dict[str, Any]:
    """Run one sample in a subprocess of its own (its own peak RSS, its own heap)."""
    command = [
        sys.executable,
        __file__,
        "--sample",
        f"--backend={args.backend}",
        f"--dags={dags}",
        f"--runs={runs}",
        f"--tasks={args.tasks}",
        f"--parallelism={args.parallelism}",
    ]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(name: str, ss: list[dict[str, Any]]) -> None:
    def med(key: str) -> float:
        return statistics.median(s[key] for s in ss)

    first = ss[0]
    print(
        f"{name:9s} {first['dags']:4d}x{first['runs']:<3d}x{first['tasks']:<4d} "
        f"{first['tis']:7d} {med('cpu_ms_per_ti'):10.3f} {med('wall_s'):8.2f} "
        f"{med('ti_per_s'):7.0f} {med('ticks'):6.0f} {med('trigger_cpu_ms_per_ti'):11.3f} "
        f"{med('maxrss_mib'):9.1f} {med('rss_end_mib'):8.1f}  {first['runs_by_state']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--dags", type=int, default=100)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--parallelism", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--baseline-repeat",
        type=int,
        default=3,
        help="baseline samples per round (each is small: its median is steadier)",
    )
    parser.add_argument("--sample", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tasks < 3:
        parser.error("--tasks must be at least 3 (start, one parallel task, join)")
    if args.sample:
        result = asyncio.run(
            measure(args.backend, args.dags, args.runs, args.tasks, args.parallelism)
        )
        print(json.dumps(result), flush=True)
        return
    print(
        f"backend {args.backend}, parallelism {args.parallelism}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    baseline: list[dict[str, Any]] = []
    scale: list[dict[str, Any]] = []
    for i in range(args.repeat):  # interleaved
        for _ in range(args.baseline_repeat):
            baseline.append(sample(args, 1, 1))
            print(
                f"  round {i + 1} baseline {json.dumps(baseline[-1])}", file=sys.stderr, flush=True
            )
        scale.append(sample(args, args.dags, args.runs))
        print(f"  round {i + 1} scale    {json.dumps(scale[-1])}", file=sys.stderr, flush=True)
    print(
        f"\nmedian of {args.repeat} (baseline: of {args.repeat * args.baseline_repeat}); "
        "CPU = scheduler process (RUSAGE_SELF), trigger excluded\n"
        f"{'case':9s} {'dagsxrunsxtasks':15s} {'TIs':>6s} {'CPU ms/TI':>10s} {'wall s':>8s} "
        f"{'TI/s':>7s} {'ticks':>6s} {'trig ms/TI':>11s} {'maxRSS MiB':>9s} {'RSS end':>8s}"
    )
    report("baseline", baseline)
    report("scale", scale)
    ratio = statistics.median(s["cpu_ms_per_ti"] for s in scale) / statistics.median(
        s["cpu_ms_per_ti"] for s in baseline
    )
    print(f"CPU per TI, scale / baseline: {ratio:.2f} (target ≤ 1.00)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
