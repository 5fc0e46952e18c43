"""The real scheduler with the real LocalLauncher (one process per attempt) on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from miniflow.cli import operations, wiring
from miniflow.config import load_config
from miniflow.scheduler.core import Scheduler, SchedulerSettings
from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from miniflow.store.records import AttemptRecord
from tests.e2e.helpers import (
    SchedulerHandle,
    cli_env,
    kill_group,
    max_overlap,
    query,
    spawn_cli,
    stop,
    until,
    write_dag,
)

RUN_TIMEOUT = 60


class Local(SchedulerHandle):
    """An in-process scheduler with a LocalLauncher over a DAGs folder in tmp_path."""

    def __init__(self, scheduler: Scheduler, db_url: str) -> None:
        super().__init__(scheduler)
        self.db_url = db_url


@contextlib.asynccontextmanager
async def local_scheduler(
    db_url: str, tmp_path: Path, *, parallelism: int = 32, **settings: Any
) -> AsyncIterator[Local]:
    config = load_config(
        environ={},
        database_url=db_url,
        dags_folder=tmp_path / "dags",
        state_dir=tmp_path / "state",
        kill_grace_period=1.0,
        parallelism=parallelism,
        **settings,
    )
    engine = store_engine.create_engine(db_url)
    launcher = wiring.make_launcher(config)
    scheduler = Scheduler(
        engine=engine,
        launcher=launcher,
        dags_folder=config.dags_folder,
        settings=SchedulerSettings(
            parallelism=parallelism,
            schedule_runs=False,
            idle_wait=0.05,
            run_check_interval=0.1,
            full_sweep_interval=0.2,
        ),
    )
    try:
        await scheduler.start()
        await scheduler.tick()  # parse the DAGs folder
        yield Local(scheduler, db_url)
    finally:
        await launcher.shutdown_all()  # type: ignore[attr-defined]
        await scheduler.close()
        await engine.dispose()


async def test_fan_out_fan_in(db_url: str, tmp_path: Path) -> None:
    write_dag(
        tmp_path / "dags",
        "fan.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash

        with DAG("fan", start_date=datetime(2026, 1, 1)):
            start = Bash("start", "echo start {{ run_id }}")
            join = Bash("join", "echo joined")
            for i in range(4):
                start >> Bash(f"p{i}", f"echo part {i}") >> join
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("fan")
        tis = await local.tis("fan", run_id)
        attempts = {a.task_id: a for a in await local.attempts("fan", run_id)}
    assert state == "success"
    assert {t: (ti.state, ti.try_number, ti.exit_code) for t, ti in tis.items()} == {
        t: ("success", 1, 0) for t in ["start", "join", "p0", "p1", "p2", "p3"]
    }
    parts = [attempts[f"p{i}"] for i in range(4)]
    assert all(attempts["start"].ended_at <= p.started_at for p in parts)  # type: ignore[operator]
    assert all(p.ended_at <= attempts["join"].started_at for p in parts)  # type: ignore[operator]
    assert f"start {run_id}" in (attempts["start"].log_tail or "")


@pytest.mark.parametrize("per_try", [False, True])
async def test_python_tries_use_the_forkserver_s_import_unless_told_otherwise(
    db_url: str, tmp_path: Path, per_try: bool
) -> None:
    # By default the forkserver imports the DAG file once for the tries forked after it:
    # module-level code runs in the forkserver. MINIFLOW_DAG_IMPORT_PER_TRY: in each try.
    write_dag(
        tmp_path / "dags",
        "imports.py",
        """
        import os
        from datetime import datetime
        from miniflow import DAG, task

        IMPORTED_IN = os.getpid()

        @task
        def where():
            return [IMPORTED_IN, os.getpid()]

        with DAG("imports", start_date=datetime(2026, 1, 1)):
            for i in range(3):
                where.override(task_id=f"t{i}")()
    """,
    )
    async with local_scheduler(db_url, tmp_path, dag_import_per_try=per_try) as local:
        run_id, state = await local.run("imports")
        tis = await local.tis("imports", run_id)
    assert state == "success"
    pairs = [tis[f"t{i}"].result for i in range(3)]
    if per_try:
        assert all(imported == ran for imported, ran in pairs), pairs
    else:
        assert len({imported for imported, _ in pairs}) == 1, pairs
        assert all(imported != ran for imported, ran in pairs), pairs


async def test_bash_retries_until_success(db_url: str, tmp_path: Path) -> None:
    write_dag(
        tmp_path / "dags",
        "flaky.py",
        """
        from datetime import datetime, timedelta
        from miniflow import DAG, Bash

        with DAG("flaky", start_date=datetime(2026, 1, 1)):
            Bash("flaky", 'echo "try {{ try_number }}"; test {{ try_number }} -ge 3',
                 retries=3, retry_delay=timedelta(seconds=0.2))
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("flaky")
        ti = (await local.tis("flaky", run_id))["flaky"]
        attempts = await local.attempts("flaky", run_id)
    assert state == "success"
    assert (ti.state, ti.try_number) == ("success", 3)
    assert [(a.try_number, a.exit_code, a.state) for a in attempts] == [
        (1, 1, "up_for_retry"),
        (2, 1, "up_for_retry"),
        (3, 0, "success"),
    ]
    assert [(a.log_tail or "").strip() for a in attempts] == ["try 1", "try 2", "try 3"]
    # the back-off was respected between tries
    for before, after in itertools.pairwise(attempts):
        assert (after.queued_at - before.ended_at).total_seconds() >= 0.15  # type: ignore[operator]


async def test_timeout_kills_a_sleeping_task(db_url: str, tmp_path: Path) -> None:
    write_dag(
        tmp_path / "dags",
        "slow.py",
        """
        from datetime import datetime, timedelta
        from miniflow import DAG, Bash

        with DAG("slow", start_date=datetime(2026, 1, 1)):
            Bash("sleepy", "sleep 30", timeout=timedelta(seconds=1))
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        began = time.monotonic()
        run_id, state = await local.run("slow")
        took = time.monotonic() - began
        ti = (await local.tis("slow", run_id))["sleepy"]
        (attempt,) = await local.attempts("slow", run_id)
    assert state == "failed"
    assert ti.state == "failed"
    assert attempt.reason == "Timeout"
    assert attempt.state == "failed"
    assert "Timeout" in (ti.error or "")
    assert took < 15, took
    assert (attempt.ended_at - attempt.started_at).total_seconds() < 10  # type: ignore[operator]


async def test_python_etl_passes_results(db_url: str, tmp_path: Path) -> None:
    write_dag(
        tmp_path / "dags",
        "etl.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash, task

        with DAG("etl", start_date=datetime(2026, 1, 1), params={"n": 4}):
            @task
            def extract(n: int) -> list:
                return list(range(n))

            @task
            def transform(rows: list) -> dict:
                return {"count": len(rows), "total": sum(r * r for r in rows)}

            @task
            def load(summary: dict, label: str) -> str:
                print(f"loaded {summary['count']} rows ({label})")
                return f"{label}:{summary['total']}"

            done = Bash("done", "echo finished")
            load(transform(extract(4)), label="squares") >> done
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("etl")
        tis = await local.tis("etl", run_id)
        attempts = {a.task_id: a for a in await local.attempts("etl", run_id)}
    errors = {t: ti.error for t, ti in tis.items() if ti.error}
    assert state == "success", errors
    assert tis["extract"].result == [0, 1, 2, 3]
    assert tis["transform"].result == {"count": 4, "total": 14}
    assert tis["load"].result == "squares:14"
    assert "loaded 4 rows (squares)" in (attempts["load"].log_tail or "")
    assert {ti.try_number for ti in tis.values()} == {1}


async def test_parallelism_never_exceeded_by_real_processes(db_url: str, tmp_path: Path) -> None:
    write_dag(
        tmp_path / "dags",
        "wide.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash

        with DAG("wide", start_date=datetime(2026, 1, 1)):
            for i in range(10):
                Bash(f"t{i}", "sleep 0.3")
    """,
    )
    async with local_scheduler(db_url, tmp_path, parallelism=3) as local:
        run_id, state = await local.run("wide")
        attempts = await local.attempts("wide", run_id)
    assert state == "success"
    assert len(attempts) == 10
    spans = [(a.started_at, a.ended_at) for a in attempts]
    assert all(s is not None and e is not None for s, e in spans)
    overlap = max_overlap(spans)  # type: ignore[arg-type]
    assert overlap <= 3
    assert overlap >= 2  # they did run side by side


# --- the scheduler process killed and restarted ---------------------------------------------

RESTART_DAG = """
    from datetime import datetime
    from miniflow import DAG, Bash

    CMD = 'echo "{{{{ task_id }}}} {{{{ try_number }}}}" >> {log}; sleep 1'

    with DAG("restart", start_date=datetime(2026, 1, 1)):
        first = Bash("first", CMD)
        for i in range(5):
            first >> Bash(f"fan{{i}}", CMD)
"""


async def test_scheduler_sigkill_and_restart_runs_nothing_twice(
    db_url: str, tmp_path: Path
) -> None:
    ran = tmp_path / "ran.txt"
    dags, state_dir = tmp_path / "dags", tmp_path / "state"
    write_dag(dags, "restart.py", RESTART_DAG.format(log=ran))
    env = cli_env(db_url, dags, state_dir)
    config = load_config(environ=env)
    run_id = await operations.trigger(config, "restart", conf_json=None)

    async def attempts() -> list[AttemptRecord]:
        return await query(db_url, store_attempts.for_run, "restart", run_id)

    async def running() -> list[AttemptRecord]:
        return [a for a in await attempts() if a.state == "running"]

    async def finished() -> bool:
        run = await query(db_url, store_runs.get_run, "restart", run_id)
        return run.state in ("success", "failed")

    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = spawn_cli(["scheduler"], env, tmp_path / "scheduler1.log")
        procs.append(first)
        await until(running, 30, "an attempt to be running")
        os.killpg(first.pid, signal.SIGKILL)  # the scheduler "pod" dies; task processes live on
        assert first.wait(10) == -signal.SIGKILL
        second = spawn_cli(["scheduler"], env, tmp_path / "scheduler2.log")
        procs.append(second)
        await until(finished, RUN_TIMEOUT, "the run to finish after the restart")
        assert stop(second, signal.SIGTERM) == 0
    finally:
        for proc in procs:
            kill_group(proc)
            proc.wait(5)
    run = await query(db_url, store_runs.get_run, "restart", run_id)
    logs = (tmp_path / "scheduler1.log").read_text() + (tmp_path / "scheduler2.log").read_text()
    assert run.state == "success", logs
    lines = ran.read_text().splitlines()
    assert len(lines) == len(set(lines)), lines  # no (task, try) ran twice
    assert {line.split()[0] for line in lines} == {"first", *(f"fan{i}" for i in range(5))}
    tries = {(a.task_id, a.try_number) for a in await attempts()}
    assert len(tries) == len(await attempts())
    assert "adopting" in (tmp_path / "scheduler2.log").read_text()


TITLES_DAG = """
import os
from datetime import datetime
from pathlib import Path
from miniflow import DAG, task


def _stat_ppid(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@task
def titles():
    server = os.getppid()
    return {
        "mine": Path("/proc/self/cmdline").read_bytes().rstrip(b"\\0").decode(),
        "server": Path(f"/proc/{server}/cmdline").read_bytes().rstrip(b"\\0").decode(),
        "servers_parent": _stat_ppid(server),
        "server_pid": server,
        "settings_seen": sorted(
            entry.split(b"=")[0].decode()
            for entry in Path("/proc/self/environ").read_bytes().split(b"\\0")
            if entry.startswith(b"MINIFLOW_")
        ),
    }


with DAG("titles", start_date=datetime(2026, 1, 1)):
    titles()
"""


async def test_the_scheduler_forks_its_forkserver_and_ps_tells_them_apart(
    db_url: str, tmp_path: Path
) -> None:
    """`miniflow scheduler` forks the forkserver from itself (no new interpreter that
    imports SQLAlchemy again); the forkserver and the Python try show names of their own
    in `ps`, so `pkill -f "miniflow scheduler"` finds the scheduler alone, and a try's
    /proc/<pid>/environ does not show the scheduler's MINIFLOW_* settings."""
    dags, state_dir = tmp_path / "dags", tmp_path / "state"
    write_dag(dags, "titles.py", TITLES_DAG)
    env = cli_env(db_url, dags, state_dir)
    run_id = await operations.trigger(load_config(environ=env), "titles", conf_json=None)

    async def finished() -> bool:
        run = await query(db_url, store_runs.get_run, "titles", run_id)
        return run.state in ("success", "failed")

    log = tmp_path / "scheduler.log"
    proc = spawn_cli(["scheduler"], env, log)
    try:
        await until(finished, RUN_TIMEOUT, "the run to finish")
        pgrep = await asyncio.create_subprocess_exec(
            "pgrep", "-f", "miniflow scheduler", stdout=asyncio.subprocess.PIPE
        )
        found = (await pgrep.communicate())[0].decode().split()
        assert stop(proc, signal.SIGTERM) == 0
    finally:
        kill_group(proc)
        proc.wait(5)
    (ti,) = await query(db_url, store_tis.list_for_run, "titles", run_id)
    assert ti.state == "success", log.read_text()
    seen = ti.result
    assert "forked from this process" in log.read_text()
    assert seen["server"] == "miniflow forkserver"
    assert seen["servers_parent"] == proc.pid
    assert seen["mine"].startswith("miniflow-worker titles.titles try 1 manual__")
    assert str(proc.pid) in found
    assert str(seen["server_pid"]) not in found
    assert seen["settings_seen"] == []  # the scheduler's settings: not in the try's /proc
