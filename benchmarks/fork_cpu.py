"""CPU of one forked Python task, phase by phase (issue 14, target 2).

The LocalLauncher in `python_mode="fork"` runs `--count` tries of the `@task`s of
`worker_startup.py`'s DAG one after another, through the real worker wrapped by an
entry that records, per phase of `miniflow_worker.runner` (argument parsing,
config, connection check, claim, the DAG file's import and the run, recording the
outcome, engine disposal), the process' CPU time and minor page faults (copy-on-write
of the forkserver's heap shows up there). Also, from `/proc/<forkserver>/stat`: the
forkserver's own CPU per try (the fork itself, reaping) and its children's (the whole
try, exit included). The floor: the same launcher forking an entry that returns at
once (the fork, the child's set-up, its exit; nothing of the worker).

Medians over the tries, ms. Run: .venv/bin/python benchmarks/fork_cpu.py
[--backend postgres|sqlite|both] [--count 20] [--profile] (`--profile`: cProfile of
the tries' main thread, by cumulative time, ignoring the DAG file's import thread).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for the forkserver's entry
import worker_startup

CLK_TCK = os.sysconf("SC_CLK_TCK")
PHASES: dict[str, list[float]] = {}


def _usage() -> tuple[float, int]:
    return time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(func: Callable[..., Any], label: str) -> Callable[..., Any]:
    def add(start: tuple[float, int]) -> None:
        now = _usage()
        cpu, faults = PHASES.setdefault(label, [0.0, 0])
        PHASES[label] = [cpu + now[0] - start[0], faults + now[1] - start[1]]

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            start = _usage()
            try:
                return await func(*args, **kwargs)
            finally:
                add(start)

        return timed_async

    @functools.wraps(func)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = _usage()
        try:
            return func(*args, **kwargs)
        finally:
            add(start)

    return timed


def measured_entry(argv: list[str]) -> int:
    """Forked-worker entry: the real worker, its phases timed (written to $MF_BENCH_OUT.cpu)."""
    entered = _usage()
    from miniflow_worker import outcome, runner
    from sqlalchemy.ext.asyncio import AsyncEngine

    for owner, name, label in (
        (runner, "parse_args", "parse arguments"),
        (runner, "load_config", "load config"),
        (runner, "try_config", "config (prepared, or loaded)"),
        (runner, "worker_engine", "engine"),
        (runner, "create_engine", "engine"),
        (runner, "check_connection", "connect + SELECT 1"),
        (runner, "claim_try", "claim transaction"),
        (runner.Worker, "_claim_relayed", "claim through the relay"),
        (runner.Worker, "_prepare", "import DAG file, render"),
        (outcome.Recorder, "success", "record success"),
        (AsyncEngine, "dispose", "dispose engine"),
    ):
        if hasattr(owner, name):
            setattr(owner, name, _timed(getattr(owner, name), label))
    profile = None
    if os.environ.get("MF_BENCH_PROFILE"):
        import cProfile

        profile = cProfile.Profile(time.process_time)
        profile.enable()
    try:
        return runner.main(argv)
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(os.environ["MF_BENCH_OUT"] + ".prof")
        end = _usage()
        report = {
            "before entry": [entered[0], entered[1]],
            "whole runner.main": [end[0] - entered[0], end[1] - entered[1]],
            **PHASES,
        }
        with open(os.environ["MF_BENCH_OUT"] + ".cpu", "w") as f:
            json.dump(report, f)


def noop_entry(argv: list[str]) -> int:
    """The floor's entry: nothing."""
    return 0


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


class ForkServerCPU:
    def __init__(self, launcher: Any) -> None:
        self.pid = launcher._forkserver.pid

    def read(self) -> tuple[float, float, float]:
        """(the forkserver's own CPU, its reaped children's, its live children's), seconds.

        Read between tries, the only live child is the relay process (see `local_fork`)."""
        fields = _stat(self.pid)
        with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
            live = [int(pid) for pid in f.read().split()]
        relay = sum(_stat(pid)[0] + _stat(pid)[1] for pid in live)
        return (
            (fields[0] + fields[1]) / CLK_TCK,
            (fields[2] + fields[3]) / CLK_TCK,
            relay / CLK_TCK,
        )


def _stat(pid: int) -> list[int]:
    """utime, stime, cutime, cstime of `pid`, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        return [int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15]]


async def measure(backend: str, count: int, profile: bool) -> None:
    from miniflow.launchers.base import AttemptExited, AttemptKey, TaskSpec
    from miniflow.launchers.local import LocalLauncher

    with tempfile.TemporaryDirectory(prefix="mf-forkcpu-") as tmp_name:
        bench = worker_startup.Bench(backend, Path(tmp_name))
        env = {"MINIFLOW_STATE_DIR": str(bench.tmp / "state")}
        if profile:
            env["MF_BENCH_PROFILE"] = "1"
        launcher = LocalLauncher(
            state_dir=bench.tmp / "state",
            dags_folder=bench.dags,
            worker_env=env,
            python_mode="fork",
            python_entry="fork_cpu:measured_entry",
        )
        await launcher.start()  # before setup(), as worker_startup.py explains
        await bench.setup()
        launcher.worker_env["MINIFLOW_DATABASE_URL"] = bench.url
        server = ForkServerCPU(launcher)
        try:
            await bench.forked(launcher)  # warm-up: the first fork prepares what it may
            before = server.read()
            reports = []
            for _ in range(count):
                await bench.forked(launcher)
                stamp = bench.tmp / f"p{bench.next_task - 1}.stamp"
                reports.append(_read_json(f"{stamp}.cpu"))
            after = server.read()
        finally:
            await launcher.close()
        await bench.teardown()

        floor_launcher = LocalLauncher(
            state_dir=bench.tmp / "floor-state",
            dags_folder=bench.dags,
            worker_env={},
            python_mode="fork",
            python_entry="fork_cpu:noop_entry",
        )
        await floor_launcher.start()
        floor_server = ForkServerCPU(floor_launcher)
        try:
            floor_before = floor_server.read()
            for i in range(count):
                key = AttemptKey("floor", "r", f"t{i}", 1)
                await floor_launcher.launch([TaskSpec(key=key, kind="python", fileloc="d.py")])
                while True:
                    event = await asyncio.wait_for(floor_launcher.events.get(), 60)
                    if isinstance(event, AttemptExited) and event.key == key:
                        break
            floor_after = floor_server.read()
        finally:
            await floor_launcher.close()

        def per_try(a: float, b: float) -> str:
            return f"{(b - a) / count * 1000:6.1f} ms"

        print(f"{backend}: {count} forked tries, medians per try")
        print(f"  forkserver's own CPU          {per_try(before[0], after[0])}")
        print(f"  children's CPU (whole try)    {per_try(before[1], after[1])}")
        print(f"  relay process' CPU            {per_try(before[2], after[2])}")
        print(f"  floor: forkserver's own CPU   {per_try(floor_before[0], floor_after[0])}")
        print(f"  floor: children's CPU         {per_try(floor_before[1], floor_after[1])}")
        for label in reports[0]:
            cpu = statistics.median(r.get(label, [0, 0])[0] for r in reports) * 1000
            faults = statistics.median(r.get(label, [0, 0])[1] for r in reports)
            print(f"  {label:30s}{cpu:6.1f} ms  {faults:6.0f} minor faults")
        if profile:
            import io
            import pstats

            out = io.StringIO()
            files = [
                str(bench.tmp / f"p{bench.next_task - i}.stamp.prof") for i in range(1, count + 1)
            ]
            stats = pstats.Stats(files[0], stream=out)
            for name in files[1:]:
                stats.add(name)
            stats.sort_stats(os.environ.get("MF_PROF_SORT", "cumulative")).print_stats(50)
            print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--forked-ahead",
        action="store_true",
        help="fork the measured forkserver from this process once it has imported what "
        "`miniflow scheduler` imports (as the scheduler does), instead of spawning it",
    )
    args = parser.parse_args()
    assert args.count + 1 <= worker_startup.TASKS
    backends = ["postgres", "sqlite"] if args.backend == "both" else [args.backend]
    for backend in backends:
        if args.forked_ahead:
            import miniflow.cli.daemon  # noqa: F401  (the scheduler's imports)
            from miniflow.launchers import local_fork
            from miniflow.store import engine as store_engine

            store_engine.load_driver(
                "postgresql+asyncpg://-/-" if backend == "postgres" else "sqlite+aiosqlite://"
            )
            assert local_fork.fork_ahead(), "this process runs threads: cannot fork ahead"
        asyncio.run(measure(backend, args.count, args.profile))


if __name__ == "__main__":
    main()
