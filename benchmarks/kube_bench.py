"""KubernetesLauncher + scheduler against the fake Kubernetes API server (tests/fakekube).

The real `Scheduler` in-process, the real `KubernetesLauncher` (built by
`wiring.make_launcher` from a `Config`, as the daemon does) talking HTTP to
the fake API server on 127.0.0.1, and a fresh Postgres database per sample
(CREATE DATABASE bench_kube_..., migrated, dropped at the end).

DAG: a fan-out of N independent Pod tasks (`true`), no schedule;
parallelism and the DAG's max_active_tasks are N (the limits are not what is
measured).

(a) requests per task: kubelet ENABLED (each pod's `true` runs as a local
    process); counts the fake server's request log by verb after the run and
    the scheduler's close (so cleanup deletes are in). Budget: 3 per task
    (create + log read + delete), status only through the one watch.
(b) launch rate: kubelet DISABLED; a store listener completes each pod as
    soon as it is created (phase Succeeded, container terminated exitCode 0,
    written with `state.mutate` on the next loop iteration). Launch rate =
    creates per second between the first and the last create, as the
    scheduler issues them; wall = trigger to run success. Median of
    `--repeat` samples. The fake server shares the scheduler's process and
    event loop, so these figures are lower bounds for the scheduler.
(c) scheduler RSS while watching P pods: a fake server in a CHILD process
    (so its memory is not counted) holding P labelled pods (real manifests
    from `pods.build_manifest`, status Running); this process builds the
    scheduler, `start()`s it (the launcher lists + watches and tracks every
    pod) and reads VmRSS before and after, plus ru_maxrss.

The pods of (c) carry this scheduler's owner label (what a scheduler watches while its
pods run); with `--unowned` they have none and the scheduler takes each over at start
(re-labels it: one PATCH per pod), as after an upgrade from a miniflow without owners.

`--rss-only` runs (c) alone; `--tracemalloc` adds to (c) the 15 allocation sites (file:line)
that grew most from before `start()` to watching (tracing slows the list and adds its own
overhead to the RSS figures: read those from a run without it).

Run: .venv/bin/python benchmarks/kube_bench.py [--tasks 1000] [--watched 5000] [--repeat 3]
        [--rss-only] [--tracemalloc] [--unowned]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import textwrap
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402

from miniflow.cli import wiring  # noqa: E402
from miniflow.config import load_config  # noqa: E402
from miniflow.launchers import pods  # noqa: E402
from miniflow.launchers.base import AttemptKey, TaskSpec  # noqa: E402
from miniflow.launchers.kubernetes import KubernetesLauncher  # noqa: E402
from miniflow.scheduler import manual_runs  # noqa: E402
from miniflow.scheduler.core import Scheduler, SchedulerSettings  # noqa: E402
from miniflow.store import engine as store_engine  # noqa: E402
from miniflow.store import schema  # noqa: E402
from tests.fakekube import FakeKube  # noqa: E402

PG_ADMIN_DSN = os.environ.get(
    "MINIFLOW_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_BASE_URL = os.environ.get("MINIFLOW_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432")
DAG_ID = "kube_bench_fanout"


# --- fixtures -----------------------------------------------------------------------------------


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    name = f"bench_kube_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"{PG_BASE_URL}/{name}"
    try:
        engine = store_engine.create_engine(url)
        try:
            await schema.upgrade(engine)
        finally:
            await engine.dispose()
        yield url
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def write_fanout(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fanout.py").write_text(
        textwrap.dedent(f"""
        from datetime import datetime
        from miniflow import DAG, Pod

        with DAG("{DAG_ID}", start_date=datetime(2026, 1, 1), max_active_tasks={n}):
            for i in range({n}):
                Pod(f"t{{i}}", image="busybox:1.36", command=["true"])
    """)
    )


def make_scheduler(kubeconfig: str, db_url: str, dags: Path, parallelism: int) -> Scheduler:
    config = load_config(
        environ={
            "MINIFLOW_LAUNCHER": "kubernetes",
            "MINIFLOW_KUBECONFIG": kubeconfig,
            "MINIFLOW_DATABASE_URL": db_url,
            "MINIFLOW_DAGS_FOLDER": str(dags),
            "MINIFLOW_POD_DAGS_FOLDER": str(dags),
        }
    )  # every benchmark task is a Pod task, but the start-up check wants the Secret
    return Scheduler(
        engine=store_engine.create_engine(db_url),
        launcher=wiring.make_launcher(config),
        dags_folder=dags,
        settings=SchedulerSettings(
            parallelism=parallelism, schedule_runs=False, idle_wait=0.05, run_check_interval=0.05
        ),
        parse_timeout=120,
    )


async def run_fanout(fake: FakeKube, db_url: str, dags: Path, n: int) -> tuple[str, float]:
    scheduler = make_scheduler(str(fake.kubeconfig_path), db_url, dags, n)
    fake.secrets[("default", "miniflow-database")] = {"url": db_url}
    try:
        await scheduler.start()
        await scheduler.tick()  # parse
        async with store_engine.transaction(scheduler.sessions) as session:
            run_id = await manual_runs.trigger(
                session, DAG_ID, conf_json=None, now=datetime.now(UTC)
            )
        t0 = time.perf_counter()
        state = await scheduler.run_until_done(DAG_ID, run_id, timeout=600)
        wall = time.perf_counter() - t0
    finally:
        await scheduler.close()
        await scheduler.engine.dispose()
    return state, wall


# --- (a) requests per task ----------------------------------------------------------------------


async def bench_requests(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        dags = Path(tmp) / "dags"
        write_fanout(dags, n)
        async with fresh_database() as db_url, FakeKube(Path(tmp), kubelet=True) as fake:
            state, wall = await run_fanout(fake, db_url, dags, n)
            counts = dict(fake.requests.counts())
    per_task = {v: counts.get(v, 0) / n for v in ("create", "log", "delete", "get")}
    return {
        "state": state,
        "wall_s": wall,
        "counts": counts,
        "per_task_create_log_delete": sum(counts.get(v, 0) for v in ("create", "log", "delete"))
        / n,
        "per_task_all": sum(counts.values()) / n,
        "per_task_by_verb": per_task,
    }


# --- (b) launch rate ----------------------------------------------------------------------------


def complete(pod: dict[str, Any]) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod["status"] = {
        "phase": "Succeeded",
        "startTime": now,
        "containerStatuses": [
            {
                "name": pods.MAIN_CONTAINER,
                "ready": False,
                "restartCount": 0,
                "image": pod["spec"]["containers"][0]["image"],
                "imageID": "",
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": now,
                        "finishedAt": now,
                    }
                },
            }
        ],
    }


async def bench_launch_rate(n: int) -> dict[str, Any]:
    # No kubelet, no container log: each log read is answered 400 (and not retried);
    # the launcher's warning about it is expected here.
    logging.getLogger("miniflow.launchers.kubernetes").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        dags = Path(tmp) / "dags"
        write_fanout(dags, n)
        async with (
            fresh_database() as db_url,
            FakeKube(Path(tmp), kubelet=False, history_size=4 * n) as fake,
        ):
            created: list[float] = []
            loop = asyncio.get_running_loop()

            def on_event(ev: Any) -> None:
                if ev.type == "ADDED":
                    created.append(time.perf_counter())
                    meta = ev.obj["metadata"]
                    loop.call_soon(fake.state.mutate, meta["name"], meta["namespace"], complete)

            fake.state.add_listener(on_event)
            state, wall = await run_fanout(fake, db_url, dags, n)
    span = created[-1] - created[0] if len(created) > 1 else float("nan")
    return {
        "state": state,
        "wall_s": wall,
        "creates": len(created),
        "launch_rate": (len(created) - 1) / span if span > 0 else float("inf"),
    }


# --- (c) RSS while watching -----------------------------------------------------------------------


def vm_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def print_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> None:
    """The 15 allocation sites (file:line) that grew most between the snapshots."""
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(keep).compare_to(before.filter_traces(keep), "lineno")
    total = sum(d.size_diff for d in diff)
    print(f"    tracemalloc: +{total / 2**20:.1f} MiB traced; top 15 by growth:")
    for stat in diff[:15]:
        frame = stat.traceback[0]
        print(
            f"      {stat.size_diff / 2**20:7.2f} MiB {stat.count_diff:+8d} blocks  "
            f"{frame.filename.removeprefix(str(REPO) + '/')}:{frame.lineno}"
        )


async def serve_fake(count: int) -> None:
    """Child process: a fake API server (kubelet off) holding `count` managed pods.

    Prints the kubeconfig, reads one line: the scheduler id the pods' owner label names
    (empty: no owner label, pods an older miniflow left, which the scheduler takes over
    with one PATCH each at start), creates the pods and prints "ready"; serves until its
    stdin closes."""
    defaults = pods.PodDefaults(
        namespace="default", worker_image="miniflow:bench", database_secret_name="miniflow-database"
    )
    async with FakeKube(kubelet=False, history_size=count + 1000) as fake:
        # The launcher's start-up check wants the Secret worker pods read the URL from.
        fake.secrets[("default", "miniflow-database")] = {"url": "postgresql://unused"}
        print(json.dumps({"kubeconfig": str(fake.kubeconfig_path)}), flush=True)
        loop = asyncio.get_running_loop()
        owner = (await loop.run_in_executor(None, sys.stdin.readline)).strip() or None
        for i in range(count):
            key = AttemptKey("watched_dag", "manual__2026-01-01T00:00:00+00:00", f"task_{i}", 1)
            spec = TaskSpec(
                key=key,
                kind="pod",
                fileloc="watched.py",
                image="busybox:1.36",
                cmds=["sh", "-c", "sleep 3600"],
            )
            manifest = pods.build_manifest(spec, defaults, owner=owner)
            pod = fake.state.create(manifest, "default")
            pod["status"] = {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": pods.MAIN_CONTAINER,
                        "ready": True,
                        "restartCount": 0,
                        "started": True,
                        "image": "busybox:1.36",
                        "imageID": "",
                        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                    }
                ],
            }
            fake.state.write(pod)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)


async def bench_rss(count: int, *, trace: bool = False, owned: bool = True) -> dict[str, Any]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-fake",
        str(count),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        line = await child.stdout.readline()
        kubeconfig = json.loads(line)["kubeconfig"]
        with tempfile.TemporaryDirectory() as tmp:
            dags = Path(tmp) / "dags"
            dags.mkdir()
            async with fresh_database() as db_url:
                scheduler = make_scheduler(kubeconfig, db_url, dags, 32)
                # Owned: the pods this scheduler launched, as a running scheduler watches
                # them. Not owned: leftovers it takes over first (one PATCH each).
                child.stdin.write(f"{scheduler.scheduler_id if owned else ''}\n".encode())
                await child.stdin.drain()
                assert (await child.stdout.readline()).strip() == b"ready"
                before = vm_rss_mib()
                if trace:
                    tracemalloc.start(1)
                    snapshot = tracemalloc.take_snapshot()
                try:
                    t0 = time.perf_counter()
                    await scheduler.start()  # lists and starts the watch; waits for the list
                    synced_s = time.perf_counter() - t0
                    launcher = scheduler.launcher
                    assert isinstance(launcher, KubernetesLauncher)
                    tracked = len(await launcher.alive())
                    await asyncio.sleep(1.0)  # watch stream open, bookmarks flowing
                    after = vm_rss_mib()
                    if trace:
                        print_growth(snapshot, tracemalloc.take_snapshot())
                        tracemalloc.stop()
                finally:
                    await scheduler.close()
                    await scheduler.engine.dispose()
    finally:
        if child.stdin is not None:
            child.stdin.close()  # the child serves until its stdin closes
        try:
            await asyncio.wait_for(child.wait(), 30)
        except TimeoutError:
            child.kill()
            await child.wait()
    return {
        "tracked": tracked,
        "list_s": synced_s,
        "rss_before_mib": before,
        "rss_after_mib": after,
        "rss_delta_mib": after - before,
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --- main -----------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    # (c) first, while this process has not yet run anything else.
    print(
        f"(c) scheduler RSS while watching {args.watched} "
        f"{'unowned (taken over)' if args.unowned else 'own'} pods (fake server in a child process)"
    )
    c = await bench_rss(args.watched, trace=args.tracemalloc, owned=not args.unowned)
    print(
        f"    tracked {c['tracked']} pods; initial list+sync {c['list_s']:.2f}s; VmRSS "
        f"{c['rss_before_mib']:.1f} MiB before start -> {c['rss_after_mib']:.1f} MiB watching "
        f"(+{c['rss_delta_mib']:.1f} MiB); ru_maxrss {c['maxrss_mib']:.1f} MiB"
    )

    if args.rss_only:
        return
    print(f"(a) requests per task: {args.tasks}-task fan-out of Pod tasks, kubelet enabled")
    a = await bench_requests(args.tasks)
    print(f"    run {a['state']} in {a['wall_s']:.1f}s; requests by verb: {a['counts']}")
    print(
        f"    create+log+delete per task: {a['per_task_create_log_delete']:.3f}  "
        f"(all requests incl. list/watch: {a['per_task_all']:.3f}; get per task: "
        f"{a['per_task_by_verb']['get']:.3f})"
    )

    print(f"(b) launch rate: {args.tasks}-task fan-out, kubelet disabled, pods completed by script")
    samples = []
    for i in range(args.repeat):
        b = await bench_launch_rate(args.tasks)
        samples.append(b)
        print(
            f"    sample {i + 1}: run {b['state']}, {b['creates']} creates, "
            f"launch rate {b['launch_rate']:.0f} pods/s, trigger->success {b['wall_s']:.2f}s"
        )
    print(
        f"    median: {statistics.median(s['launch_rate'] for s in samples):.0f} pods/s, "
        f"wall {statistics.median(s['wall_s'] for s in samples):.2f}s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--watched", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rss-only", action="store_true", help="only (c), the RSS figure")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="(c): print the top 15 allocation sites (file:line) grown while watching",
    )
    parser.add_argument(
        "--unowned",
        action="store_true",
        help="(c): pods without an owner label, taken over (re-labelled) at start",
    )
    parser.add_argument("--serve-fake", type=int, default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve_fake is not None:
        asyncio.run(serve_fake(ns.serve_fake))
    else:
        asyncio.run(main(ns))
