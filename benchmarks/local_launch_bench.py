"""Benchmark of LocalLauncher against the physical floor (BENCHMARKS.md).

Shapes, each timed from the first launch to the last exit event, median of 3
(min-max), with the floor measured in the same run (the machines are noisy):

- fanout: 200 bash `true` attempts, at most 32 in flight (a new one is launched
  as soon as one exits, as the scheduler would);
- chain:  50 bash `true` attempts, one after another;
- python: 100 Python attempts, at most 32 in flight, forked from the warm
  forkserver (the entry is a no-op function standing in for the worker);
- floor:  the same fanout/chain shapes with bare `posix_spawn("true")` + a
  pidfd, no wrapper, no files.

Run: .venv/bin/python benchmarks/local_launch_bench.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import floor

from miniflow.launchers.base import AttemptExited, AttemptKey, TaskSpec
from miniflow.launchers.local import LocalLauncher

ROUNDS = 3
BENCH_DIR = Path(__file__).resolve().parent


def _spec(i: int, kind: str, run: str) -> TaskSpec:
    key = AttemptKey("bench", run, f"t{i}", 1)
    if kind == "bash":
        return TaskSpec(key=key, kind="bash", fileloc="b.py", bash_command="true")
    return TaskSpec(key=key, kind="python", fileloc="b.py")


async def _pipeline(launcher: LocalLauncher, kind: str, total: int, width: int) -> float:
    run = f"r{time.monotonic_ns()}"
    started = time.perf_counter()
    next_i = min(width, total)
    await launcher.launch([_spec(i, kind, run) for i in range(next_i)])
    done = 0
    while done < total:
        event = await launcher.events.get()
        if isinstance(event, AttemptExited):
            assert event.exit_code == 0, event
            done += 1
            if next_i < total:
                await launcher.launch([_spec(next_i, kind, run)])
                next_i += 1
    return time.perf_counter() - started


def _fmt(samples: list[float]) -> str:
    return f"{statistics.median(samples):.3f} s ({min(samples):.3f}-{max(samples):.3f})"


async def main() -> None:
    bench_dir = BENCH_DIR
    # The no-op entry of the python shape lives here; the forkserver must be able to
    # preload it (it inherits the environment, not sys.path).
    sys.path.insert(0, str(bench_dir))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(bench_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    with tempfile.TemporaryDirectory() as tmp:
        launcher = LocalLauncher(
            state_dir=Path(tmp),
            dags_folder=Path(tmp),
            worker_env={},
            python_entry="local_launch_bench:noop_entry",
        )
        await launcher.start()
        shapes: dict[str, Callable[[], Awaitable[float]]] = {
            "floor fanout 200x32 (posix_spawn true)": lambda: floor(200, 32),
            "bash fanout 200x32": lambda: _pipeline(launcher, "bash", 200, 32),
            "floor chain 50 (posix_spawn true)": lambda: floor(50, 1),
            "bash chain 50": lambda: _pipeline(launcher, "bash", 50, 1),
            f"python ({launcher.python_mode}) fanout 100x32": lambda: _pipeline(
                launcher, "python", 100, 32
            ),
            f"python ({launcher.python_mode}) chain 20": lambda: _pipeline(
                launcher, "python", 20, 1
            ),
        }
        results: dict[str, list[float]] = {name: [] for name in shapes}
        for _ in range(ROUNDS):  # interleaved, so noise hits every shape alike
            for name, run in shapes.items():
                results[name].append(await run())
        await launcher.close()
    for name, samples in results.items():
        print(f"{name:42s} {_fmt(samples)}")


def noop_entry(argv: list[str]) -> int:
    """Stands in for the worker: returns at once."""
    return 0


if __name__ == "__main__":
    asyncio.run(main())
