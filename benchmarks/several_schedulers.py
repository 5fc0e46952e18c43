"""Throughput with 1, 2 and 3 schedulers on one PostgreSQL database.

Each scheduler is its own process (as in production), running the real
`Scheduler` with the in-process `InstantLauncher` (tests/instant_launcher.py:
every attempt starts and exits at once), so what is measured is the schedulers'
own work and their contention in the database: the claim lock, conditional
writes, ownership. The shape is the 2,000-task fan-out of
`scheduler_throughput.py` (`start`, 1,998 parallel, `join`) at parallelism 32
(global: the schedulers share it).

Per sample: a fresh database (CREATE DATABASE bench_several_..., dropped at the
end), the DAG parsed once, N scheduler processes started and registered, then
the run triggered; TI/s = tasks / (wall from trigger to the run's success).
Also printed: the schedulers' CPU time per task (all processes together, from
/proc), which shows whether a drop in TI/s is work added by several schedulers
or only several busy processes sharing too few cores, and how many attempts each
scheduler launched (the spread).

Run: .venv/bin/python benchmarks/several_schedulers.py [--schedulers 1,2,3] [--claim-turn S]
        [--tasks 2000] [--parallelism 32] [--repeat 3]
With MINIFLOW_BENCH_PROFILE=DIR each scheduler process writes its cProfile stats to DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import shapes  # noqa: E402
from common import PG_BASE_URL, pg_admin  # noqa: E402

RUN_TIMEOUT = 300.0
CLAIM_TURN_ENV = "MINIFLOW_BENCH_CLAIM_TURN"
"""Set by `--claim-turn` for the scheduler processes."""


async def child(url: str, dags: str, parallelism: int, stats_dir: str) -> None:
    """One scheduler process: run until told to stop (SIGTERM)."""
    import signal

    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from miniflow.store import engine as store_engine
    from miniflow.store import wakeup
    from tests.instant_launcher import InstantLauncher

    logging.basicConfig(level=logging.WARNING, format="scheduler %(process)d: %(message)s")
    engine = store_engine.create_engine(url)
    statements = _count_statements(engine)
    scheduler = Scheduler(
        engine=engine,
        launcher=InstantLauncher(),
        dags_folder=Path(dags),
        # Heartbeat every second: each heartbeat counts the live peers, which split the
        # parallelism, and a sample lasts seconds (the default is every 5 s).
        settings=SchedulerSettings(
            parallelism=parallelism,
            schedule_runs=False,
            instance_heartbeat=1.0,
            instance_timeout=10.0,
            **({"claim_turn": float(turn)} if (turn := os.environ.get(CLAIM_TURN_ENV)) else {}),
        ),
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, scheduler.stop)
    await scheduler.start()
    gc.freeze()  # as `miniflow scheduler` does after start (miniflow/cli/daemon.py)
    try:
        # As `miniflow scheduler` does: a peer handing its claim turn on wakes the others.
        turn = (scheduler.scheduler_id, scheduler.turn_given)
        async with wakeup.Listener(engine, woken=scheduler.woken, turn=turn):
            await scheduler.run_forever()
    finally:
        await scheduler.close()
        await engine.dispose()
        _write_counts(stats_dir, statements[0])


def _statements(stats: Path) -> tuple[int, int]:
    """Statements and rounds of all the scheduler processes together."""
    counts = [json.loads(f.read_text()) for f in stats.glob("*.json")]
    return sum(c["statements"] for c in counts), sum(int(c["rounds"]) for c in counts)


def _count_statements(engine: object) -> list[int]:
    """Statements this process sent (a count that CPU contention cannot blur)."""
    from sqlalchemy import event

    count = [0]
    by_kind = Counter[str]()

    def before(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        count[0] += 1
        if os.environ.get("MINIFLOW_BENCH_STATEMENTS"):
            by_kind[" ".join(statement.split())[:90]] += 1

    atexit.register(lambda: by_kind and print(by_kind.most_common(25), file=sys.stderr))

    event.listen(engine.sync_engine, "before_cursor_execute", before)  # type: ignore[attr-defined]
    return count


def _write_counts(stats_dir: str, statements: int) -> None:
    import json

    from miniflow.scheduler import metrics

    rounds = metrics.REGISTRY.get_sample_value(
        "miniflow_scheduler_round_duration_seconds_count", {"loop": "tick"}
    )
    Path(stats_dir, f"{os.getpid()}.json").write_text(
        json.dumps({"statements": statements, "rounds": rounds or 0})
    )


def _spawn(url: str, dags: Path, parallelism: int, stats: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, __file__, "--child", url, str(dags), str(parallelism), str(stats)]
    return subprocess.Popen(args, cwd=REPO)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _explain_failure(sessions: Any) -> None:
    """Print the tries that did not succeed, with their reasons."""
    from sqlalchemy import select

    from miniflow.store import engine as store_engine
    from miniflow.store.models import TaskAttempt, TaskInstance

    async with store_engine.transaction(sessions) as session:
        bad = await session.execute(
            select(TaskInstance.task_id, TaskInstance.state, TaskInstance.error).where(
                TaskInstance.state.not_in(["success"])
            )
        )
        for row in bad.all():
            print("not success:", *row)
        tries = await session.execute(
            select(
                TaskAttempt.task_id,
                TaskAttempt.try_number,
                TaskAttempt.state,
                TaskAttempt.scheduler_id,
                TaskAttempt.reason,
                TaskAttempt.message,
            ).where(TaskAttempt.state.not_in(["success"]))
        )
        for row in tries.all():
            print("attempt:", *row)


async def sample(schedulers: int, tasks: int, parallelism: int) -> Sample:
    from sqlalchemy import func, select

    from miniflow.errors import NotFound
    from miniflow.store import dags as store_dags
    from miniflow.store import engine as store_engine
    from miniflow.store import instances as store_instances
    from miniflow.store import schema
    from miniflow.store.models import TaskAttempt

    db_name = f"bench_several_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    dag_id = f"fan_{tasks}"
    await pg_admin(f'CREATE DATABASE "{db_name}"')
    url = f"{PG_BASE_URL}/{db_name}"
    engine = store_engine.create_engine(url)
    procs: list[subprocess.Popen[bytes]] = []
    stats_tmp = tempfile.TemporaryDirectory(prefix="mf-several-stats-")
    stats = Path(stats_tmp.name)
    try:
        await schema.upgrade(engine)
        with tempfile.TemporaryDirectory(prefix="mf-several-") as tmp:
            dags = Path(tmp)
            (dags / f"{dag_id}.py").write_text(
                shapes.fanout(dag_id, tasks - 2, max_active_tasks=parallelism)
            )
            for _ in range(schedulers):
                procs.append(_spawn(url, dags, parallelism, stats))
            sessions = store_engine.sessionmaker(engine)
            deadline = time.monotonic() + 60
            while True:  # registered, and the DAG parsed
                async with store_engine.transaction(sessions) as session:
                    alive = [
                        i for i in await store_instances.list_all(session) if i.ended_at is None
                    ]
                    try:
                        parsed = bool(await store_dags.get_dag(session, dag_id))
                    except NotFound:
                        parsed = False
                if len(alive) == schedulers and parsed:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the schedulers did not start")
                await asyncio.sleep(0.05)
            first = await _run_once(sessions, dag_id, procs)
            wall, cpu, run_id = await _run_once(sessions, dag_id, procs)
            async with store_engine.transaction(sessions) as session:
                rows = await session.execute(
                    select(TaskAttempt.scheduler_id, func.count())
                    .where(TaskAttempt.run_id == run_id)
                    .group_by(TaskAttempt.scheduler_id)
                )
                spread = sorted((int(n) for _, n in rows.all()), reverse=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await engine.dispose()
        await pg_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    # Whole lifetime of each process (start-up and parse included: small beside 2,000 tasks).
    statements, rounds = _statements(stats)
    per_task = (statements / (2 * tasks), rounds / (2 * tasks))
    stats_tmp.cleanup()
    return Sample(first[0], wall, spread, cpu, per_task)


@dataclass(frozen=True)
class Sample:
    first_wall: float
    """The first run after the schedulers started: its walls pay their one-off costs
    (statements compiled, the DAG loaded, the first full collections)."""
    wall: float
    """The next run of the same DAG, as long-running schedulers see every run."""
    spread: list[int]
    """Attempts launched by each scheduler in the next run."""
    cpu: float
    """The schedulers' CPU seconds over the next run."""
    per_task: tuple[float, float]
    """SQL statements and rounds per task over the processes' lifetime (both runs)."""


async def _run_once(
    sessions: Any, dag_id: str, procs: list[subprocess.Popen[bytes]]
) -> tuple[float, float, str]:
    """Trigger a run and wait for its success: wall seconds, the schedulers' CPU seconds
    meanwhile, the run's id."""
    from miniflow.scheduler.manual_runs import trigger
    from miniflow.store import engine as store_engine
    from miniflow.store import runs as store_runs

    async with store_engine.transaction(sessions) as session:
        run_id = await trigger(session, dag_id, conf_json=None, now=datetime.now(UTC))
    began = time.monotonic()
    cpu_before = sum(_cpu_seconds(p.pid) for p in procs)
    while True:
        async with store_engine.transaction(sessions) as session:
            run = await store_runs.get_run(session, dag_id, run_id)
        if run.state == "success":
            break
        if run.state == "failed":
            await _explain_failure(sessions)
            raise RuntimeError("run failed")
        if time.monotonic() - began > RUN_TIMEOUT:
            raise RuntimeError(f"run not finished: {run.state}")
        await asyncio.sleep(0.02)
    wall = time.monotonic() - began
    return wall, sum(_cpu_seconds(p.pid) for p in procs) - cpu_before, run_id


async def run(args: argparse.Namespace) -> None:
    counts = [int(n) for n in args.schedulers.split(",")]
    print(
        f"fan-out of {args.tasks} tasks, instant launcher, Postgres, "
        f"global parallelism {args.parallelism}, {os.cpu_count()} cores"
    )
    print(
        f"{'schedulers':>10} {'TI/s median':>12} {'min-max':>14} {'first run':>10}"
        f" {'CPU ms/task':>12} {'SQL/task':>9} {'rounds/task':>11}  attempts per scheduler"
    )
    for count in counts:
        samples = [await sample(count, args.tasks, args.parallelism) for _ in range(args.repeat)]
        rates = [args.tasks / s.wall for s in samples]
        firsts = [args.tasks / s.first_wall for s in samples]
        print(
            f"{count:>10} {statistics.median(rates):>12.0f} "
            f"{min(rates):>6.0f}-{max(rates):<7.0f} {statistics.median(firsts):>10.0f}"
            f" {statistics.median(s.cpu * 1000 / args.tasks for s in samples):>12.2f}"
            f" {statistics.median(s.per_task[0] for s in samples):>9.1f}"
            f" {statistics.median(s.per_task[1] for s in samples):>11.2f}"
            f"  {samples[-1].spread}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--schedulers", default="1,2,3")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--parallelism", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--claim-turn", type=float, help="seconds (default: the scheduler's)")
    parser.add_argument("--child", nargs=4, metavar=("URL", "DAGS", "PARALLELISM", "STATS"))
    args = parser.parse_args()
    if args.child:
        url, dags, parallelism, stats_dir = args.child
        profile_dir = os.environ.get("MINIFLOW_BENCH_PROFILE")
        if not profile_dir:
            asyncio.run(child(url, dags, int(parallelism), stats_dir))
            return
        import cProfile

        # One stats file per scheduler process, for `python -m pstats`.
        with cProfile.Profile(time.process_time) as prof:  # CPU, not wall: cores are shared
            asyncio.run(child(url, dags, int(parallelism), stats_dir))
        prof.dump_stats(os.path.join(profile_dir, f"scheduler-{os.getpid()}.prof"))
        return
    if args.claim_turn is not None:
        os.environ[CLAIM_TURN_ENV] = str(args.claim_turn)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
