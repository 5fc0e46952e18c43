"""Server time of the web UI's grid: a DAG of 1,000 tasks x 25 runs (target ≤ 1 s).

Builds the data the real way (a DAG file parsed by `DagParser`, 25 manual runs
created by `trigger`), then gives the task instances a mix of states, start
and end times and errors (plain UPDATEs: setup only, not what is measured).
Requests go to the real ASGI app in-process (`httpx.ASGITransport`), so the
figure is the server's time (queries + template), without a network. The CPU
time of this process is shown too: on a shared machine the wall time mostly
measures the neighbours (PostgreSQL's own CPU is not in it).

    .venv/bin/python benchmarks/web_grid.py [--backend sqlite|postgres|both] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import PG_BASE_URL, pg_admin
from miniflow.config import load_config
from miniflow.scheduler import manual_runs
from miniflow.scheduler.parse_loop import DagParser
from miniflow.store import engine as store_engine
from miniflow.store import schema
from miniflow.web import app as web_app

TASKS = 1000
RUNS = 25
TARGET = 1.0


def dag_source(tasks: int) -> str:
    return (
        "from datetime import datetime\n"
        "from miniflow import DAG, Bash\n\n"
        'with DAG("big", start_date=datetime(2026, 1, 1)):\n'
        '    start = Bash("start", "true")\n'
        f"    for i in range({tasks - 1}):\n"
        '        start >> Bash(f"task_{i:04d}", "true")\n'
    )


async def prepare(url: str, dags: Path) -> None:
    engine = store_engine.create_engine(url)
    try:
        await schema.upgrade(engine)
        sessions = store_engine.sessionmaker(engine)
        now = datetime.now(UTC)
        await DagParser(dags, timeout=60).parse_once(sessions, now)
        async with store_engine.transaction(sessions) as session:
            for i in range(RUNS):
                await manual_runs.trigger(
                    session, "big", conf_json=None, now=now,
                    logical_date=now - timedelta(hours=RUNS - i), run_id=f"run_{i:02d}",
                )
        async with engine.begin() as conn:
            # a realistic grid: mostly success, some failed with a reason, the last run running
            await conn.execute(
                text(
                    "UPDATE task_instance SET state = CASE WHEN id % 17 = 0 THEN 'failed' "
                    "ELSE 'success' END, try_number = 1, started_at = :start, ended_at = :end, "
                    "error = CASE WHEN id % 17 = 0 THEN 'exit code 1: something broke' END "
                    "WHERE run_id <> :last"
                ),
                {"start": now - timedelta(minutes=5), "end": now, "last": f"run_{RUNS - 1:02d}"},
            )
            await conn.execute(
                text("UPDATE task_instance SET state = 'running' WHERE run_id = :last"),
                {"last": f"run_{RUNS - 1:02d}"},
            )
    finally:
        await engine.dispose()


async def measure(url: str, repeat: int) -> dict[str, list[float]]:
    config = load_config(environ={}, database_url=url)
    engine = store_engine.create_engine(url)
    times: dict[str, list[float]] = {}
    try:
        app = web_app.create_app(config, engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for path in ("/dags/big", "/api/v1/dags/big/grid?runs=25"):
                first = await client.get(path)  # warm: connections, template compilation
                assert first.status_code == 200, first.text[:500]
                cells = first.text.count('class="cell st-') if path.startswith("/dags") else None
                samples, cpu = [], []
                for _ in range(repeat):
                    t0, c0 = time.perf_counter(), time.process_time()
                    response = await client.get(path)
                    samples.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                    assert response.status_code == 200
                times[path] = samples
                times[path + " (CPU)"] = cpu
                size = len(first.content) / 1e6
                print(f"  {path}: {size:.1f} MB" + (f", {cells} cells" if cells else ""))
    finally:
        await engine.dispose()
    return times


async def one(backend: str, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_web_") as tmp:
        dags = Path(tmp) / "dags"
        dags.mkdir()
        (dags / "big.py").write_text(dag_source(TASKS))
        db = f"bench_web_{os.getpid()}"
        if backend == "postgres":
            await pg_admin(f'CREATE DATABASE "{db}"')
            url = f"{PG_BASE_URL}/{db}"
        else:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'miniflow.db'}"
        try:
            print(f"{backend}: {TASKS} tasks x {RUNS} runs")
            await prepare(url, dags)
            for path, samples in (await measure(url, repeat)).items():
                median = statistics.median(samples)
                verdict = "ok" if median <= TARGET else "OVER TARGET"
                print(
                    f"  {path}: median {median * 1000:.0f} ms "
                    f"({min(samples) * 1000:.0f}-{max(samples) * 1000:.0f}), "
                    f"target <= {TARGET * 1000:.0f} ms: {verdict}"
                )
        finally:
            if backend == "postgres":
                await pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        asyncio.run(one(backend, args.repeat))


if __name__ == "__main__":
    main()
