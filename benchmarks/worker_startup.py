"""Worker start-up: time from process start to the first line of user code.

A DAG of independent `@task` functions, each writing `time.time()` to the
file named by `MF_BENCH_OUT`. For each sample, one task instance is moved to
`queued` with a new try in the store (as the scheduler would), then:

- **cold**: `time.time()` just before `Popen([.venv/bin/miniflow-worker, "run",
  ...])`; start-up = the timestamp the task wrote minus that; "total" = until
  the process exited (the outcome recorded, engine disposed).
- **cold, bytecode cached**: the same, with every module's bytecode already
  compiled, as in the image (`pip install` compiles it; this venv's editable
  install does not, and `PYTHONDONTWRITEBYTECODE=1` keeps it from caching, so
  plain "cold" compiles miniflow's sources on every start). The bytecode lives
  in a temporary `PYTHONPYCACHEPREFIX`, filled by one unmeasured run.
- **fork**: the LocalLauncher in `python_mode="fork"` (forkserver booted
  beforehand, as in a running scheduler): `time.time()` just before
  `launcher.launch([spec])`; start-up = the written timestamp minus that;
  "total" = until its `AttemptExited` event.

Each sample checks that the worker recorded success. For comparison in the
same run: a bare `python -c pass` and `python -c "import miniflow_worker.runner"`.
Median of `--repeat` (5) with min-max, on each backend.

Run: .venv/bin/python benchmarks/worker_startup.py [--backend postgres|sqlite|both] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for the forkserver (--profile)
from common import PG_BASE_URL, pg_admin

VENV_BIN = Path(sys.executable).parent
DAG_ID = "startup"
TASKS = 40

DAG_FILE = f"""\
import os
import time
from datetime import datetime

from miniflow import DAG, task

with DAG({DAG_ID!r}, start_date=datetime(2026, 1, 1)):
    def make(i):
        @task(task_id=f"p{{i}}")
        def stamp():
            now = time.time()  # the first line of user code
            with open(os.environ["MF_BENCH_OUT"], "w") as f:
                f.write(repr(now))
        return stamp

    for i in range({TASKS}):
        make(i)()
"""


class Bench:
    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend = backend
        self.tmp = tmp
        self.dags = tmp / "dags"
        self.db_name = f"bench_ws_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.next_task = 0

    async def setup(self) -> None:
        from miniflow.scheduler.manual_runs import trigger
        from miniflow.scheduler.parse_loop import DagParser
        from miniflow.store import engine as store_engine
        from miniflow.store import schema

        self.dags.mkdir()
        (self.dags / "startup.py").write_text(DAG_FILE)
        if self.backend == "postgres":
            await pg_admin(f'CREATE DATABASE "{self.db_name}"')
            self.url = f"{PG_BASE_URL}/{self.db_name}"
        else:
            self.url = f"sqlite+aiosqlite:///{self.tmp / 'bench.db'}"
        self.engine = store_engine.create_engine(self.url)
        await schema.upgrade(self.engine)
        self.sessions = store_engine.sessionmaker(self.engine)
        changed = await DagParser(self.dags).parse_once(self.sessions, datetime.now(UTC))
        assert changed == [DAG_ID], changed
        async with store_engine.transaction(self.sessions) as session:
            self.run_id = await trigger(session, DAG_ID, conf_json=None, now=datetime.now(UTC))
        self.env = {
            **os.environ,
            "MINIFLOW_DATABASE_URL": self.url,
            "MINIFLOW_DAGS_FOLDER": str(self.dags),
            "MINIFLOW_STATE_DIR": str(self.tmp / "state"),
        }

    async def teardown(self) -> None:
        await self.engine.dispose()
        if self.backend == "postgres":
            await pg_admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    async def queue_next(self) -> tuple[str, int]:
        """Move the next task instance none → scheduled → queued; returns (task_id, try)."""
        from miniflow.store import engine as store_engine
        from miniflow.store import states
        from miniflow.store import task_instances as store_tis

        task_id = f"p{self.next_task}"
        self.next_task += 1
        now = datetime.now(UTC)
        async with store_engine.transaction(self.sessions) as session:
            ti = {t.task_id: t for t in await store_tis.list_for_run(session, DAG_ID, self.run_id)}[
                task_id
            ]
            await store_tis.set_states(session, [(ti.id, states.NONE, states.SCHEDULED)], now)
            claimed = await store_tis.mark_queued(session, [ti.id], now)
        return task_id, claimed[ti.id]

    async def check_success(self, task_id: str) -> None:
        from miniflow.store import engine as store_engine
        from miniflow.store import task_instances as store_tis

        async with store_engine.transaction(self.sessions) as session:
            ti = {t.task_id: t for t in await store_tis.list_for_run(session, DAG_ID, self.run_id)}[
                task_id
            ]
        assert ti.state == "success", (task_id, ti.state, ti.error)

    async def cold(self, pycache: Path | None = None) -> tuple[float, float]:
        task_id, try_number = await self.queue_next()
        out = self.tmp / f"{task_id}.stamp"
        argv = [
            str(VENV_BIN / "miniflow-worker"),
            "run",
            "--dag-id",
            DAG_ID,
            "--run-id",
            self.run_id,
            "--task-id",
            task_id,
            "--try",
            str(try_number),
        ]
        env = {**self.env, "MF_BENCH_OUT": str(out)}
        if pycache is not None:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(pycache)
        t0 = time.time()
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        total = time.time() - t0
        assert proc.returncode == 0, output.decode()[-2000:]
        await self.check_success(task_id)
        return float(out.read_text()) - t0, total

    async def forked(self, launcher: object) -> tuple[float, float]:
        from miniflow.launchers.base import AttemptExited, AttemptKey, TaskSpec

        task_id, try_number = await self.queue_next()
        out = self.tmp / f"{task_id}.stamp"
        key = AttemptKey(DAG_ID, self.run_id, task_id, try_number)
        spec = TaskSpec(
            key=key, kind="python", fileloc="startup.py", env={"MF_BENCH_OUT": str(out)}
        )
        t0 = time.time()
        results = await launcher.launch([spec])  # type: ignore[attr-defined]
        assert results[0].handle is not None, results
        while True:
            event = await asyncio.wait_for(launcher.events.get(), 60)  # type: ignore[attr-defined]
            if isinstance(event, AttemptExited) and event.key == key:
                break
        total = time.time() - t0
        assert event.exit_code == 0, event
        await self.check_success(task_id)
        return float(out.read_text()) - t0, total


def profiled_entry(argv: list[str]) -> int:
    """Forked-worker entry for `--profile`: the real worker under a sampling profiler.

    A thread samples every thread's stack each 2 ms (cProfile would miss the
    worker's daemon threads and time spent outside Python calls) and writes the
    innermost miniflow/worker frames, by count, to `$MF_BENCH_OUT.samples`.
    """
    import collections
    import threading
    import traceback

    entered = time.time()
    from miniflow_worker import runner

    samples: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(0.002):
            for ident, frame in sys._current_frames().items():
                if ident == threading.get_ident():
                    continue
                stack = traceback.extract_stack(frame)
                ours = [f for f in stack if "/miniflow" in f.filename or "/worker/" in f.filename]
                leaf = stack[-1]
                top = ours[-1] if ours else None
                where = "?"
                if top is not None:
                    where = f"{top.filename.split('/work/main/')[-1]}:{top.lineno} {top.name}"
                leaf_at = f"{leaf.filename.split('/')[-1]}:{leaf.lineno} {leaf.name}"
                samples[f"{where}  <- leaf {leaf_at}"] += 1

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        return runner.main(argv)
    finally:
        stop.set()
        thread.join()
        out = os.environ["MF_BENCH_OUT"]
        with open(out + ".entry", "w") as f:
            f.write(repr(entered))
        with open(out + ".samples", "w") as f:
            f.write(f"runner.main: {time.time() - entered:.3f} s after entry; 2 ms samples:\n")
            for line, count in samples.most_common(25):
                f.write(f"{count:5d}  {line}\n")


async def profile_fork(backend: str) -> None:
    """Profile forked workers (after a warm-up) and print the top functions."""
    from miniflow.launchers.local import LocalLauncher

    with tempfile.TemporaryDirectory(prefix="mf-ws-") as tmp_name:
        bench = Bench(backend, Path(tmp_name))
        await bench.setup()
        launcher = LocalLauncher(
            state_dir=bench.tmp / "state",
            dags_folder=bench.dags,
            worker_env={"MINIFLOW_DATABASE_URL": bench.url},
            python_mode="fork",
            python_entry="worker_startup:profiled_entry",
        )
        try:
            await launcher.start()
            for i in range(3):
                up, total = await bench.forked(launcher)
                entry = float((bench.tmp / f"p{bench.next_task - 1}.stamp.entry").read_text())
                user = float((bench.tmp / f"p{bench.next_task - 1}.stamp").read_text())
                print(
                    f"forked worker {i}: user code after {up * 1000:.0f} ms (entry function "
                    f"reached {(up - (user - entry)) * 1000:.0f} ms after launch()), "
                    f"total {total * 1000:.0f} ms"
                )
            print((bench.tmp / f"p{bench.next_task - 1}.stamp.samples").read_text())
        finally:
            await launcher.close()
            await bench.teardown()


def bare_python(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    return time.perf_counter() - t0


def fmt(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):7.0f} ms ({min(ms):.0f}-{max(ms):.0f})"


async def run(backend: str, repeat: int) -> dict[str, list[float]]:
    from miniflow.launchers.local import LocalLauncher

    res: dict[str, list[float]] = {
        k: []
        for k in (
            "cold start→user code",
            "cold total",
            "cold, bytecode cached: start→user code",
            "cold, bytecode cached: total",
            "fork start→user code",
            "fork total",
            "python -c pass",
            "python -c 'import miniflow_worker.runner'",
        )
    }
    with tempfile.TemporaryDirectory(prefix="mf-ws-") as tmp_name:
        bench = Bench(backend, Path(tmp_name))
        launcher = LocalLauncher(
            state_dir=bench.tmp / "state",
            dags_folder=bench.dags,
            worker_env={"MINIFLOW_STATE_DIR": str(bench.tmp / "state")},
            python_mode="fork",
        )
        # Start the launcher (and so the shared forkserver, with the worker preloaded)
        # before setup() parses the DAG: as the scheduler does. Parsing first would boot
        # the forkserver with the parser's preload only, and the forks would not be warm.
        await launcher.start()
        await bench.setup()
        launcher.worker_env["MINIFLOW_DATABASE_URL"] = bench.url  # known once set up
        try:
            assert launcher.python_mode == "fork", "the worker is not importable"
            await bench.forked(launcher)  # warm-up (first fork touches the page cache)
            pycache = bench.tmp / "pycache"
            await bench.cold(pycache)  # compiles and caches every module's bytecode
            for _ in range(repeat):  # interleaved
                up, total = await bench.cold()
                res["cold start→user code"].append(up)
                res["cold total"].append(total)
                up, total = await bench.cold(pycache)
                res["cold, bytecode cached: start→user code"].append(up)
                res["cold, bytecode cached: total"].append(total)
                up, total = await bench.forked(launcher)
                res["fork start→user code"].append(up)
                res["fork total"].append(total)
                res["python -c pass"].append(bare_python("pass"))
                res["python -c 'import miniflow_worker.runner'"].append(
                    bare_python("import miniflow_worker.runner")
                )
        finally:
            await launcher.close()
            await bench.teardown()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile a forked worker")
    args = parser.parse_args()
    if args.profile:
        asyncio.run(profile_fork("postgres" if args.backend == "both" else args.backend))
        return
    assert args.repeat * 3 + 2 <= TASKS
    backends = ["postgres", "sqlite"] if args.backend == "both" else [args.backend]
    print(f"median of {args.repeat} (min-max)")
    for backend in backends:
        for name, values in asyncio.run(run(backend, args.repeat)).items():
            print(f"{backend:8s} {name:44s} {fmt(values)}")


if __name__ == "__main__":
    main()
