"""DAG files for the standard benchmark shapes (see /work/shared/BENCHMARKS.md).

- `fanout_200`: a start Bash task, 200 parallel Bash `true` tasks, a join (202 tasks)
- `chain_50`: 50 Bash `true` tasks, one after another
- `python_fanout_100`: 100 parallel `@task` functions that return at once

All with `max_active_tasks=32` and no schedule (manual runs only). `fanout(n)`
makes a fan-out of any width (the scheduler throughput benchmark uses it).

Run: `.venv/bin/python benchmarks/shapes.py DIR` writes every shape into DIR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HEADER = """\
from datetime import datetime

from miniflow import DAG, Bash, task
"""


def fanout(dag_id: str, width: int, *, max_active_tasks: int = 32, join: bool = True) -> str:
    """`start` >> `width` parallel Bash `true` tasks (>> `join` when `join`)."""
    return (
        HEADER
        + f"""
with DAG({dag_id!r}, start_date=datetime(2026, 1, 1), max_active_tasks={max_active_tasks}):
    start = Bash("start", "true")
    middle = [Bash(f"t{{i}}", "true") for i in range({width})]
    for t in middle:
        start >> t
"""
        + (
            """    join = Bash("join", "true")
    for t in middle:
        t >> join
"""
            if join
            else ""
        )
    )


def chain(dag_id: str, length: int, *, max_active_tasks: int = 32) -> str:
    return (
        HEADER
        + f"""
with DAG({dag_id!r}, start_date=datetime(2026, 1, 1), max_active_tasks={max_active_tasks}):
    previous = None
    for i in range({length}):
        current = Bash(f"t{{i}}", "true")
        if previous is not None:
            previous >> current
        previous = current
"""
    )


def python_fanout(dag_id: str, width: int, *, max_active_tasks: int = 32) -> str:
    return (
        HEADER
        + f"""
with DAG({dag_id!r}, start_date=datetime(2026, 1, 1), max_active_tasks={max_active_tasks}):
    def make(i):
        @task(task_id=f"p{{i}}")
        def noop():
            return i
        return noop

    for i in range({width}):
        make(i)()
"""
    )


# name -> (file text, number of task instances)
SHAPES: dict[str, tuple[str, int]] = {
    "fanout_200": (fanout("fanout_200", 200), 202),
    "chain_50": (chain("chain_50", 50), 50),
    "python_fanout_100": (python_fanout("python_fanout_100", 100), 100),
}


def write_shapes(folder: Path, names: list[str] | None = None) -> dict[str, int]:
    """Write the named shapes (all by default) as `<name>.py`; returns {dag_id: tasks}."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names or list(SHAPES):
        text, count = SHAPES[name]
        (folder / f"{name}.py").write_text(text)
        written[name] = count
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--shape", action="append", choices=list(SHAPES))
    args = parser.parse_args()
    for name, count in write_shapes(args.folder, args.shape).items():
        print(f"{args.folder / name}.py: {count} tasks")


if __name__ == "__main__":
    main()
