"""A `miniflow scheduler` process SIGKILLed while a rescheduled sensor waits, then
restarted (local launcher, both databases): the sensor is neither lost nor poked twice."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from miniflow.cli import operations
from miniflow.config import load_config
from miniflow.store import attempts as store_attempts
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from miniflow.store.records import AttemptRecord
from tests.e2e.helpers import cli_env, kill_group, query, spawn_cli, stop, until, write_dag

RUN_TIMEOUT = 60

SENSOR_DAG = """
from datetime import datetime
from pathlib import Path
from miniflow import DAG, get_current_context, task

POKES, FLAG = Path({pokes!r}), Path({flag!r})

with DAG("restart_sensor", start_date=datetime(2026, 1, 1)):
    @task.sensor(poke_interval=0.3, timeout=120, mode="reschedule")
    def wait() -> bool:
        with POKES.open("a") as f:
            f.write(f"poke {{get_current_context()['try_number']}}\\n")
        return FLAG.exists()

    wait()
"""


async def test_scheduler_killed_while_a_sensor_waits_loses_nothing_and_pokes_once_per_try(
    db_url: str, tmp_path: Path
) -> None:
    pokes, flag = tmp_path / "pokes.txt", tmp_path / "flag"
    dags, state_dir = tmp_path / "dags", tmp_path / "state"
    write_dag(dags, "restart_sensor.py", SENSOR_DAG.format(pokes=str(pokes), flag=str(flag)))
    env = cli_env(db_url, dags, state_dir)
    run_id = await operations.trigger(load_config(environ=env), "restart_sensor", conf_json=None)

    async def attempts() -> list[AttemptRecord]:
        return await query(db_url, store_attempts.for_run, "restart_sensor", run_id)

    async def waiting() -> bool:
        tis = await query(db_url, store_tis.list_for_run, "restart_sensor", run_id)
        return any(t.state == "up_for_reschedule" for t in tis)

    async def finished() -> bool:
        run = await query(db_url, store_runs.get_run, "restart_sensor", run_id)
        return run.state in ("success", "failed")

    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = spawn_cli(["scheduler"], env, tmp_path / "scheduler1.log")
        procs.append(first)
        await until(waiting, 30, "the sensor to wait for its next poke")
        os.killpg(first.pid, signal.SIGKILL)  # maybe before its last poke's exit was recorded
        assert first.wait(10) == -signal.SIGKILL
        flag.touch()
        second = spawn_cli(["scheduler"], env, tmp_path / "scheduler2.log")
        procs.append(second)
        await until(finished, RUN_TIMEOUT, "the run to finish after the restart")
        assert stop(second, signal.SIGTERM) == 0
    finally:
        for proc in procs:
            kill_group(proc)
            proc.wait(5)
    logs = (tmp_path / "scheduler1.log").read_text() + (tmp_path / "scheduler2.log").read_text()
    run = await query(db_url, store_runs.get_run, "restart_sensor", run_id)
    assert run.state == "success", logs
    lines = pokes.read_text().splitlines()
    tries = [int(line.split()[1]) for line in lines]
    assert tries == list(range(1, len(tries) + 1)), lines  # each try poked once, in order
    rows = sorted(await attempts(), key=lambda a: a.try_number)
    assert [a.try_number for a in rows] == tries
    assert all(a.ended_at is not None for a in rows)  # every poke's exit recorded
    assert [a.state for a in rows] == ["up_for_reschedule"] * (len(rows) - 1) + ["success"]
