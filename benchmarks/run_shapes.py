"""End-to-end benchmark of the standard shapes: real Scheduler + real LocalLauncher.

For each backend and shape, `--repeat` times (rounds interleaved so noise hits
every shape alike), one measurement runs in a fresh subprocess so that CPU and
peak-RSS figures belong to that measurement alone:

1. a fresh database (Postgres: `CREATE DATABASE bench_...`, migrated with
   `schema.upgrade`, dropped afterwards by the parent; SQLite: a temp file);
2. a `Config` from `load_config(environ={...})` (parallelism 32, temp state_dir,
   dags folder = the generated shape), `wiring.make_launcher(config)` (the
   real LocalLauncher: Bash tasks as `sh`-wrapped processes, Python tasks
   forked from its warm forkserver running the real worker), the real
   `Scheduler` in-process with the daemon's settings;
3. one `tick()` parses the folder; then `trigger()` creates the manual run and
   the clock starts; `run_until_done` ticks until the run succeeds.

Reported per shape: wall time trigger → run success, median of N (min-max),
per task (wall/tasks), SQL statements per task (the scheduler's engine, trigger → run
success: a count no load on the machine blurs), CPU seconds of the scheduler process
(getrusage(RUSAGE_SELF) delta over the run) and of its children
(RUSAGE_CHILDREN delta: the bash wrappers, plus the launcher's forkserver and
the worker processes it forked and its relay process, read from /proc once the launcher saw
every exit;
"CPU/task" = both, per task), and the scheduler process'
peak RSS (ru_maxrss). The floor (posix_spawn `true` 200x32 and a chain of 50)
is measured in the same run, as a comparison.

For a chain (`chain_50`), the scheduler's latency per link, from the attempt rows:
the previous try's exit as the launcher saw it (`task_attempt.ended_at`) to the next
try's claim (`queued_at`) and to its launch (`started_at`: the process let go),
median, p90 and max over every link of every sample.

With `--cli`, the same shapes also run as a user would: a `miniflow
scheduler` subprocess and `miniflow dags trigger --wait` (wall time of the
trigger command, which includes its own interpreter start; and its CPU).

Run: .venv/bin/python benchmarks/run_shapes.py [--backend sqlite|postgres|both]
        [--shape fanout_200 ...] [--repeat 3] [--cli]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import shapes  # noqa: E402
from common import drop_database, floor, fresh_database  # noqa: E402

RUN_TIMEOUT = 180.0  # one measurement; the subprocess is killed after this + margin
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- CPU of process trees ---------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """utime+stime+cutime+cstime of a live process, in seconds (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def tree_cpu(pid: int) -> float:
    """`proc_cpu` of a live process and of its live children (the forkserver's relay
    process lives as long as it does: its CPU is in no cutime until then)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            live = [int(child) for child in f.read().split()]
    except OSError:
        live = []
    return proc_cpu(pid) + sum(proc_cpu(child) for child in live)


def forkserver_pid(launcher: object) -> int | None:
    """The local launcher's forkserver (a child of this process until the launcher closes,
    so RUSAGE_CHILDREN misses it and the attempts it reaps: read from /proc instead)."""
    server = getattr(launcher, "_forkserver", None)
    return getattr(server, "pid", None)


async def attempts_ended(launcher: object, timeout: float = 10.0) -> None:
    """Wait until the launcher saw every attempt exit: a worker records its success before
    it disposes of its engine and exits, so the run can end while its CPU is still running."""
    watched = getattr(getattr(launcher, "_watcher", None), "attempts", {})
    deadline = time.monotonic() + timeout
    while watched and time.monotonic() < deadline:  # noqa: ASYNC110 (a benchmark's poll)
        await asyncio.sleep(0.01)


def rusage_pair() -> tuple[float, float]:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


# --- per-link latency of a chain, from the attempt rows --------------------------------------


def chain_links(attempts: list[Any]) -> dict[str, list[float]]:
    """For a chain (one try each, launched one after another): per link, in ms, from the
    previous try's exit as the launcher saw it (`ended_at`) to the next try's claim
    (`queued_at`: the claim transaction's time) and to its launch (`started_at`: the
    launcher let the process go). Empty unless every attempt has all three stamps."""
    rows = sorted(attempts, key=lambda a: a.queued_at)
    # (the last try's exit may still be on its way when `dags trigger --wait` returns)
    if len(rows) < 2 or any(a.started_at is None for a in rows[1:]):
        return {}
    if any(a.ended_at is None for a in rows[:-1]):
        return {}
    claim, launch = [], []
    for prev, nxt in itertools.pairwise(rows):
        claim.append((nxt.queued_at - prev.ended_at).total_seconds() * 1000)
        launch.append((nxt.started_at - prev.ended_at).total_seconds() * 1000)
    return {"exit_to_claim_ms": claim, "exit_to_launch_ms": launch}


async def links_of(url: str, dag_id: str) -> dict[str, list[float]]:
    """`chain_links` of the one run of `dag_id` in the database at `url`."""
    from miniflow.store import attempts as store_attempts
    from miniflow.store import engine as store_engine
    from miniflow.store import runs as store_runs

    if not dag_id.startswith("chain"):
        return {}
    engine = store_engine.create_engine(url)
    try:
        sessions = store_engine.sessionmaker(engine)
        async with store_engine.transaction(sessions) as session:
            runs = await store_runs.list_runs(session, dag_id)
            if len(runs) != 1:
                return {}
            attempts = await store_attempts.for_run(session, dag_id, runs[0].run_id)
    finally:
        await engine.dispose()
    return chain_links(attempts)


# --- one in-process measurement (runs in its own subprocess) ----------------------------------


async def measure_one(backend: str, shape: str, db_name: str) -> dict[str, object]:
    from sqlalchemy import event as sa_event

    from miniflow.cli import wiring
    from miniflow.config import load_config
    from miniflow.scheduler.core import Scheduler, SchedulerSettings
    from miniflow.scheduler.manual_runs import trigger
    from miniflow.store import engine as store_engine
    from miniflow.store import task_instances as store_tis

    with tempfile.TemporaryDirectory(prefix="mf-shapes-") as tmp_name:
        tmp = Path(tmp_name)
        dags = tmp / "dags"
        tasks = shapes.write_shapes(dags, [shape])[shape]
        url = await fresh_database(backend, tmp, db_name)
        config = load_config(
            environ={
                "MINIFLOW_DATABASE_URL": url,
                "MINIFLOW_DAGS_FOLDER": str(dags),
                "MINIFLOW_STATE_DIR": str(tmp / "state"),
                "MINIFLOW_PARALLELISM": "32",
                "MINIFLOW_LAUNCHER": "local",
            }
        )
        engine = store_engine.create_engine(config.database_url)
        statements = [0]

        def count(*_: object) -> None:
            statements[0] += 1

        sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
        launcher = wiring.make_launcher(config)
        scheduler = Scheduler(
            engine=engine,
            launcher=launcher,
            dags_folder=config.dags_folder,
            settings=SchedulerSettings(
                parallelism=config.parallelism, parse_interval=config.parse_interval
            ),
            parse_timeout=config.parse_timeout,
        )
        try:
            await scheduler.start()
            await scheduler.tick()  # parses the folder
            fs_pid = forkserver_pid(launcher)
            fs_cpu0 = tree_cpu(fs_pid) if fs_pid else 0.0
            self0, child0 = rusage_pair()
            t0 = time.perf_counter()
            statements[0] = 0
            async with store_engine.transaction(scheduler.sessions) as session:
                run_id = await trigger(session, shape, conf_json=None, now=datetime.now(UTC))
            state = await scheduler.run_until_done(shape, run_id, timeout=RUN_TIMEOUT)
            wall = time.perf_counter() - t0
            run_statements = statements[0]
            await attempts_ended(launcher)
            self1, child1 = rusage_pair()
            fs_cpu1 = tree_cpu(fs_pid) if fs_pid else 0.0
            async with store_engine.transaction(scheduler.sessions) as session:
                tis = await store_tis.list_for_run(session, shape, run_id)
            ti_states: dict[str, int] = {}
            for ti in tis:
                ti_states[ti.state] = ti_states.get(ti.state, 0) + 1
            errors = sorted({ti.error for ti in tis if ti.error})[:3]
        finally:
            await scheduler.close()
            await engine.dispose()
        links = await links_of(url, shape)
    return {
        "backend": backend,
        "shape": shape,
        "tasks": tasks,
        "state": state,
        "ti_states": ti_states,
        "errors": errors,
        "wall": wall,
        "cpu_self": self1 - self0,
        "cpu_children": (child1 - child0) + (fs_cpu1 - fs_cpu0),
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "statements": run_statements,
        "python_mode": getattr(launcher, "python_mode", None),
        **links,
    }


# --- one CLI measurement (scheduler daemon + `dags trigger --wait`) ---------------------------


def measure_cli(backend: str, shape: str, db_name: str) -> dict[str, object]:
    miniflow = str(Path(sys.executable).with_name("miniflow"))
    with tempfile.TemporaryDirectory(prefix="mf-shapes-cli-") as tmp_name:
        tmp = Path(tmp_name)
        dags = tmp / "dags"
        tasks = shapes.write_shapes(dags, [shape])[shape]
        url = asyncio.run(fresh_database(backend, tmp, db_name))
        env = {
            **os.environ,
            "MINIFLOW_DATABASE_URL": url,
            "MINIFLOW_DAGS_FOLDER": str(dags),
            "MINIFLOW_STATE_DIR": str(tmp / "state"),
            "MINIFLOW_PARALLELISM": "32",
            "MINIFLOW_LAUNCHER": "local",
        }
        log = open(tmp / "scheduler.log", "w")
        sched = subprocess.Popen(
            [miniflow, "scheduler"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            # Wait until the scheduler has parsed the DAG (it shows up in `dags list`).
            deadline = time.monotonic() + 60
            while True:
                out = subprocess.run(
                    [miniflow, "dags", "list"], env=env, capture_output=True, text=True, timeout=60
                )
                if shape in out.stdout:
                    break
                if sched.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"scheduler did not parse {shape}: {out.stdout}{out.stderr}")
                time.sleep(0.2)
            reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            done = subprocess.run(
                [miniflow, "dags", "trigger", shape, "--wait"],
                env=env,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
            )
            wall = time.perf_counter() - t0
            # Reaped since: the trigger command alone (the scheduler still runs).
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            trigger_cpu = (after.ru_utime + after.ru_stime) - (reaped.ru_utime + reaped.ru_stime)
            links = asyncio.run(links_of(url, shape)) if done.returncode == 0 else {}
        finally:
            if sched.poll() is None:
                os.killpg(sched.pid, signal.SIGTERM)
                try:
                    sched.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(sched.pid, signal.SIGKILL)
                    sched.wait()
            log.close()
    return {
        "backend": backend,
        "shape": shape,
        "tasks": tasks,
        "wall": wall,
        "trigger_cpu": trigger_cpu,
        "state": "success" if done.returncode == 0 else f"exit {done.returncode}",
        "errors": [done.stderr.strip()[-300:]] if done.returncode else [],
        **links,
    }


# --- the floor --------------------------------------------------------------------------------


# --- driver -----------------------------------------------------------------------------------


def run_child(mode: str, backend: str, shape: str) -> dict[str, object]:
    """One measurement in a fresh subprocess; the parent owns the database's lifetime."""
    db_name = f"bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--backend",
        backend,
        "--shape",
        shape,
        "--db-name",
        db_name,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=REPO,
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT + 90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return {"backend": backend, "shape": shape, "state": "timeout", "errors": [err[-500:]]}
    finally:
        if backend == "postgres":
            drop_database(db_name)
    if proc.returncode != 0:
        return {
            "backend": backend,
            "shape": shape,
            "state": f"crashed ({proc.returncode})",
            "errors": [err[-1500:]],
        }
    return json.loads(out.strip().splitlines()[-1])


def fmt(values: list[float], unit: str = "s", digits: int = 2) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.{digits}f} {unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def link_summary(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"{statistics.median(ordered):.1f} (p90 {p90:.1f}, max {ordered[-1]:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--shape", action="append", choices=list(shapes.SHAPES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also run via `miniflow scheduler`")
    parser.add_argument("--json", type=Path, help="write every sample to this file")
    parser.add_argument("--child", choices=["inproc", "cli"], help=argparse.SUPPRESS)
    parser.add_argument("--db-name", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        shape = args.shape[0]
        if args.child == "inproc":
            result = asyncio.run(measure_one(args.backend, shape, args.db_name))
        else:
            result = measure_cli(args.backend, shape, args.db_name)
        print(json.dumps(result))
        return

    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    names = args.shape or list(shapes.SHAPES)
    modes = ["inproc", "cli"] if args.cli else ["inproc"]
    samples: dict[tuple[str, str, str], list[dict[str, object]]] = {}
    floors: dict[str, list[float]] = {"fanout 200x32": [], "chain 50": []}
    for round_no in range(args.repeat):
        floors["fanout 200x32"].append(asyncio.run(floor(200, 32)))
        floors["chain 50"].append(asyncio.run(floor(50, 1)))
        for mode in modes:
            for backend in backends:
                for name in names:
                    result = run_child(mode, backend, name)
                    samples.setdefault((mode, backend, name), []).append(result)
                    wall = result.get("wall")
                    print(
                        f"  round {round_no + 1} {mode:6s} {backend:8s} {name:18s} "
                        f"{result['state']:8s} "
                        + (f"{wall:.2f} s" if isinstance(wall, float) else "")
                        + (f"  {result['errors']}" if result.get("errors") else ""),
                        file=sys.stderr,
                        flush=True,
                    )

    print(f"\nmedian of {args.repeat} (min-max); wall = trigger → run success")
    for name, values in floors.items():
        print(f"floor (posix_spawn true) {name:14s} {fmt(values, digits=3)}")
    header = (
        f"{'mode':6s} {'backend':8s} {'shape':18s} {'wall':24s} {'per task':10s} "
        f"{'sched CPU':22s} {'children CPU':22s} {'CPU/task':9s} {'sched peak RSS':14s} "
        f"{'SQL/task':9s} ok"
    )
    print(header)
    for (mode, backend, name), results in samples.items():
        good = [r for r in results if r.get("state") == "success"]
        walls = [float(r["wall"]) for r in good]  # type: ignore[arg-type]
        tasks = shapes.SHAPES[name][1]
        per_task = f"{statistics.median(walls) / tasks * 1000:.1f} ms" if walls else "-"
        cpu_self = fmt([float(r["cpu_self"]) for r in good if "cpu_self" in r])  # type: ignore[arg-type]
        cpu_child = fmt([float(r["cpu_children"]) for r in good if "cpu_children" in r])  # type: ignore[arg-type]
        totals = [
            float(r["cpu_self"]) + float(r["cpu_children"])  # type: ignore[arg-type]
            for r in good
            if "cpu_children" in r
        ]
        cpu_task = f"{statistics.median(totals) / tasks * 1000:.1f} ms" if totals else "-"
        rss = [float(r["maxrss_mb"]) for r in good if "maxrss_mb" in r]  # type: ignore[arg-type]
        rss_s = f"{max(rss):.0f} MB" if rss else "-"
        stmts = [int(r["statements"]) for r in good if "statements" in r]  # type: ignore[call-overload]
        stmts_s = f"{statistics.median(stmts) / tasks:.1f}" if stmts else "-"
        print(
            f"{mode:6s} {backend:8s} {name:18s} {fmt(walls):24s} {per_task:10s} "
            f"{cpu_self:22s} {cpu_child:22s} {cpu_task:9s} {rss_s:14s} {stmts_s:9s} "
            f"{len(good)}/{len(results)}"
        )
    for (mode, backend, name), results in samples.items():
        triggers = [float(r["trigger_cpu"]) for r in results if "trigger_cpu" in r]  # type: ignore[arg-type]
        if triggers:
            print(f"{mode:6s} {backend:8s} {name:18s} `dags trigger --wait` CPU {fmt(triggers)}")
    links = [(k, v) for k, v in samples.items() if any("exit_to_launch_ms" in r for r in v)]
    if links:
        print(
            "\nper link of a chain (ms; median over every link of every sample, p90, max;"
            " previous exit → next claim / → next launch)"
        )
    for (mode, backend, name), results in links:
        print(
            f"{mode:6s} {backend:8s} {name:18s} "
            + "  ".join(
                f"{label} {link_summary([x for r in results for x in r.get(field, [])])}"
                for label, field in (("claim", "exit_to_claim_ms"), ("launch", "exit_to_launch_ms"))
            )
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"floors": floors, "samples": [s for v in samples.values() for s in v]}, indent=1
            )
        )


if __name__ == "__main__":
    main()
