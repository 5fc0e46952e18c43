"""Benchmark: cold parse of a DAGs folder and a no-change rescan.

Generates 200 DAG files of 20 Bash tasks each (a few dependencies) in a temp
dir, then measures, 3 times each, a cold `DagFolderScanner.scan()` (every file
parsed in its own forked process) and a rescan with nothing changed (stat
only). Prints median (min-max). Run: `.venv/bin/python benchmarks/parse_bench.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from miniflow.parsing.scanner import DagFolderScanner


def generate(folder: Path, files: int, tasks: int) -> None:
    for f in range(files):
        lines = [
            "from datetime import datetime",
            "from miniflow import DAG, Bash",
            "",
            f"with DAG('bench_{f:03d}', schedule='@daily', start_date=datetime(2026, 1, 1)):",
        ]
        lines += [f"    t{i} = Bash('t{i}', 'echo {{{{ ds }}}} {i}')" for i in range(tasks)]
        lines += [f"    t{i} >> t{i + 1}" for i in range(0, tasks - 1, 4)]
        (folder / f"dag_{f:03d}.py").write_text("\n".join(lines) + "\n")


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"


async def run(files: int, tasks: int, rounds: int) -> None:
    cold: list[float] = []
    rescan: list[float] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            generate(folder, files, tasks)
            scanner = DagFolderScanner(folder)
            started = time.perf_counter()
            result = await scanner.scan()
            cold.append(time.perf_counter() - started)
            errors = [r for r in result.results if r.error]
            dags = sum(len(r.dags) for r in result.results)
            assert not errors and dags == files, (errors[:1], dags)
            started = time.perf_counter()
            again = await scanner.scan()
            rescan.append(time.perf_counter() - started)
            assert again.results == [] and again.unchanged == files
    print(f"{files} files x {tasks} tasks, median of {rounds} (min-max)")
    per_file_ms = statistics.median(cold) / files * 1000
    print(f"  cold parse       : {summary(cold)}  ({per_file_ms:.1f} ms/file)")
    print(f"  no-change rescan : {summary(rescan)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.files, args.tasks, args.rounds))


if __name__ == "__main__":
    main()
