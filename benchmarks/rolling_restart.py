"""A rolling restart of three schedulers against an undisturbed run of the same DAG.

Both modes run the fault suite's layered DAG (10 layers of 50 tasks of 0.05 s, plus
a final task: 501 local processes, parallelism 12) under three `miniflow scheduler`
processes on a fresh PostgreSQL database:

- undisturbed: the three run it to the end;
- rolling: as in `tests/faults/test_several_schedulers.py`, after every 100 successes
  one more scheduler is started and, once it has registered, the oldest one is
  SIGTERMed (it hands its tries over), until all three were replaced.

Printed: each mode's run time (trigger to the run's end), median and min-max, and the
rolling restart's overhead against the undisturbed median (issue 8: within 20 %). The
invariant checker of the fault suite runs after each sample (nothing lost or doubled).
Also the CPU the whole machine was busy with meanwhile (`/proc/stat`, all cores; this
benchmark should run alone), and the rolling restart's extra CPU per replaced scheduler:
steadier than wall time on a VM whose speed drifts, and what the replacements cost.

Run: .venv/bin/python benchmarks/rolling_restart.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

from common import PG_BASE_URL, pg_admin  # noqa: E402

REPLACED = 3
"""Schedulers replaced by a rolling restart (all three)."""

SETTINGS = {
    "MINIFLOW_PARALLELISM": "12",
    "MINIFLOW_SCHEDULER_HEARTBEAT": "1",
    "MINIFLOW_SCHEDULER_TIMEOUT": "4",
    "MINIFLOW_SANITY_INTERVAL": "1",
}


async def _registered(h: object, count: int) -> None:
    from miniflow.store import instances as store_instances

    async def enough() -> bool:
        rows = await h.read(store_instances.list_all)  # type: ignore[attr-defined]
        return len([i for i in rows if i.ended_at is None]) >= count

    await h.until(enough, 30, f"{count} schedulers to register")  # type: ignore[attr-defined]


def busy_cpu() -> float:
    """CPU-seconds the machine has spent busy (all cores) since it booted."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


async def sample(rolling: bool) -> tuple[float, float]:
    """(seconds from trigger to the run's end, busy CPU-seconds meanwhile)."""
    from miniflow.store import schema
    from tests.faults.harness import Harness, harness_engine
    from tests.faults.invariants import check

    db_name = f"bench_rolling_{uuid.uuid4().hex[:8]}"
    await pg_admin(f'CREATE DATABASE "{db_name}"')
    url = f"{PG_BASE_URL}/{db_name}"
    engine = harness_engine(url)
    try:
        await schema.upgrade(engine)
        with tempfile.TemporaryDirectory(prefix="mf-rolling-") as tmp:
            h = Harness("rolling" if rolling else "undisturbed", url, Path(tmp), engine)
            try:
                h.settings.update(SETTINGS)
                h.write(h.layered(layers=10, width=50, seconds=0.05))
                await h.trigger()
                began, cpu_began = time.monotonic(), busy_cpu()
                old = [h.start_scheduler() for _ in range(REPLACED)]
                if rolling:
                    await _registered(h, REPLACED)
                    for n, proc in enumerate(old, start=1):
                        await h.wait_successes(100 * n)
                        h.start_scheduler()
                        await _registered(h, REPLACED + 1)
                        h.stop_scheduler(signal.SIGTERM, proc=proc)
                state = await h.wait_finished(300)
                took, cpu = time.monotonic() - began, busy_cpu() - cpu_began
                result = await check(h, run_timeout=60)
                if state != "success" or not result.ok:
                    raise RuntimeError(f"run {state}: {result.explain(h.log_tail())}")
                return took, cpu
            finally:
                await h.stop_watching()
                h.cleanup()
    finally:
        await engine.dispose()
        await pg_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


async def run(repeat: int) -> None:
    times: dict[str, list[float]] = {"undisturbed": [], "rolling": []}
    cpus: dict[str, list[float]] = {"undisturbed": [], "rolling": []}
    for _ in range(repeat):  # interleaved: a drift in the machine's load hits both modes
        for mode in times:
            took, cpu = await sample(rolling=mode == "rolling")
            times[mode].append(took)
            cpus[mode].append(cpu)
    print("501 local tasks (10 layers of 50 tasks of 0.05 s), 3 schedulers, parallelism 12")
    for mode, values in times.items():
        print(
            f"{mode:>12}: median {statistics.median(values):6.1f}s  "
            f"min-max {min(values):.1f}-{max(values):.1f}s  "
            f"busy CPU {statistics.median(cpus[mode]):.1f}s "
            f"({min(cpus[mode]):.1f}-{max(cpus[mode]):.1f})"
        )
    overhead = statistics.median(times["rolling"]) / statistics.median(times["undisturbed"]) - 1
    print(f"rolling restart overhead: {overhead * 100:+.0f}% (bound: +20%)")
    extra = statistics.median(cpus["rolling"]) - statistics.median(cpus["undisturbed"])
    print(f"extra CPU per replaced scheduler: {extra / REPLACED:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(run(parser.parse_args().repeat))


if __name__ == "__main__":
    main()
