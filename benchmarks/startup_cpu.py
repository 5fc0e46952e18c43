"""CPU a `miniflow scheduler` costs to start, process by process (issue 8).

A rolling restart replaces each scheduler while tasks run; on a machine whose cores the
tasks keep busy, what it costs is mostly the CPU the new scheduler and the processes it
starts spend getting ready. This starts `miniflow scheduler` (local launcher) on a fresh
database with one DAG that has no schedule (nothing runs: `--dag idle`, two tasks, or
`--dag layered`, the 501 tasks of the fault suite and `rolling_restart.py`, whose
parsing and caching a new scheduler pays for too), waits `--settle` seconds, and
reads the CPU (user + system, reaped children included) of every process it started:
the scheduler itself, the local launcher's forkserver and its relay process, and the
DAG-parsing forkserver with its resource tracker. Then it stops it with SIGTERM.

Printed per process kind: median of `--repeat` samples (min-max), and the total.

Run: .venv/bin/python benchmarks/startup_cpu.py [--backend postgres|sqlite]
[--dag idle|layered] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from common import drop_database, fresh_database  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")

IDLE_DAG = textwrap.dedent(
    """
    from datetime import datetime

    from miniflow import DAG, Bash, task

    with DAG("idle", start_date=datetime(2026, 1, 1), schedule=None):

        @task
        def hello():
            return 1

        hello() >> Bash("b", "true")
    """
)

KINDS = (
    ("miniflow forkserver", "forkserver (+ relay)"),  # its title (`proc_title`)
    ("local_fork", "forkserver (+ relay)"),
    ("multiprocessing.forkserver", "parse forkserver"),
    ("multiprocessing.resource_tracker", "resource tracker"),
    ("miniflow scheduler", "scheduler"),
)


def _cpu_and_cmdline(pid: int) -> tuple[float, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK, cmdline


def _descendants(root: int) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            threads = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for thread in threads:  # a child is listed under the thread that started it
            try:
                todo.extend(int(child) for child in (thread / "children").read_text().split())
            except OSError:
                continue
    return found


def _by_kind(root: int) -> dict[str, float]:
    """CPU of `root` and its live descendants, summed per kind (a relay process is the
    forkserver's child: counted with it)."""
    totals: dict[str, float] = collections.Counter()
    for pid in _descendants(root):
        got = _cpu_and_cmdline(pid)
        if got is None:
            continue
        cpu, cmdline = got
        kind = next((name for needle, name in KINDS if needle in cmdline), "other")
        totals[kind] += cpu
    return dict(totals)


def _dag_source(dag: str, tmp: Path) -> str:
    if dag == "idle":
        return IDLE_DAG
    from tests.faults.dags.layered import LayeredDag

    layered = LayeredDag("faults", proof=tmp / "proof", began=tmp / "began", layers=10, width=50)
    return layered.source()


def sample(backend: str, dag: str, settle: float) -> dict[str, float]:
    miniflow = str(Path(sys.executable).with_name("miniflow"))
    with tempfile.TemporaryDirectory(prefix="mf-startup-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "dags").mkdir()
        (tmp / "dags" / f"{dag}.py").write_text(_dag_source(dag, tmp))
        db_name = f"bench_startup_{uuid.uuid4().hex[:8]}" if backend == "postgres" else None
        try:
            url = asyncio.run(fresh_database(backend, tmp, db_name or ""))
            env = {
                **os.environ,
                "MINIFLOW_HOME": str(tmp / "home"),
                "MINIFLOW_DATABASE_URL": url,
                "MINIFLOW_DAGS_FOLDER": str(tmp / "dags"),
                "MINIFLOW_STATE_DIR": str(tmp / "state"),
                "MINIFLOW_LAUNCHER": "local",
            }
            with open(tmp / "scheduler.log", "w") as log:
                proc = subprocess.Popen(
                    [miniflow, "scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            try:
                time.sleep(settle)  # a benchmark's fixed window: the CPU spent in it
                totals = _by_kind(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.returncode not in (0, -signal.SIGTERM):
                raise RuntimeError((tmp / "scheduler.log").read_text()[-2000:])
            return totals
        finally:
            if db_name is not None:
                drop_database(db_name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--dag", choices=("idle", "layered"), default="idle")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--settle", type=float, default=4.0, help="seconds to let it start")
    args = parser.parse_args()
    samples = [sample(args.backend, args.dag, args.settle) for _ in range(args.repeat)]
    print(
        f"`miniflow scheduler` start-up CPU, {args.backend}, DAG {args.dag}, "
        f"{args.repeat} samples (s)"
    )
    kinds = [*dict.fromkeys(name for _, name in KINDS), "other"]
    for kind in [*kinds, "total"]:
        values = [sum(s.values()) if kind == "total" else s.get(kind, 0.0) for s in samples]
        if not any(values):
            continue
        print(
            f"{kind:>22}: median {statistics.median(values):.2f}  "
            f"min-max {min(values):.2f}-{max(values):.2f}"
        )


if __name__ == "__main__":
    main()
