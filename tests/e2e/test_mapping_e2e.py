"""Mapping and XCom end to end: the real scheduler with the local launcher (real worker
processes) on both databases, and the `miniflow` CLI (`dags test`, `tasks ...`, `dags show`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.cli import operations
from miniflow.config import load_config
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from miniflow.store import xcom as store_xcom
from miniflow.store.records import TaskInstanceRecord
from tests.e2e.helpers import (
    cli_env,
    kill_group,
    max_overlap,
    query,
    run_cli,
    spawn_cli,
    stop,
    until,
    write_dag,
)
from tests.e2e.test_local_scheduler import local_scheduler

MAPPED = """
from datetime import datetime
from miniflow import DAG, Bash, get_current_context, task

with DAG("mapped", start_date=datetime(2026, 1, 1)):
    @task
    def sizes() -> list:
        get_current_context()["ti"].xcom_push("unit", "kB")
        return [1, 2, 3, 4]

    @task(max_active_mapped=2)
    def scale(size: int, factor: int) -> int:
        import time
        began = time.time()
        time.sleep(0.3)
        ti = get_current_context()["ti"]
        ti.xcom_push("seen", ti.map_index)
        ti.xcom_push("span", [began, time.time()])
        return size * factor

    @task
    def total(scaled: list) -> str:
        ti = get_current_context()["ti"]
        unit = ti.xcom_pull(task_ids="sizes", key="unit")
        seen = ti.xcom_pull(task_ids="scale", key="seen")
        one = ti.xcom_pull(task_ids="scale", map_indexes=2)
        return f"{sum(scaled)} {unit} {seen} {one}"

    report = total(scale.partial(factor=10).expand(size=sizes()))
    echo = Bash.partial("echo", push_result=True).expand(
        command=["echo {{ map_index }}-a", "echo {{ map_index }}-b"]
    )
    uses = Bash("uses", "test {{ ti.xcom_pull(task_ids='echo') | join(',') }} = 0-a,1-b")
    echo >> uses
"""


async def _spans(session: AsyncSession, run_id: str) -> list[tuple[datetime, datetime]]:
    data = await store_xcom.load(session, "mapped", run_id, ["scale"])
    return [
        (datetime.fromtimestamp(a, UTC), datetime.fromtimestamp(b, UTC))
        for a, b in data.pull("scale", key="span")
    ]


async def test_mapping_and_xcom_with_real_processes(db_url: str, tmp_path: Path) -> None:
    write_dag(tmp_path / "dags", "mapped.py", MAPPED)
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("mapped")
        rows: list[TaskInstanceRecord] = await query(
            db_url, store_tis.list_for_run, "mapped", run_id
        )
        attempts = await local.attempts("mapped", run_id)
    by_key = {(r.task_id, r.map_index): r for r in rows}
    errors = {k: r.error for k, r in by_key.items() if r.error}
    assert state == "success", errors
    assert [by_key[("scale", i)].result for i in range(4)] == [10, 20, 30, 40]
    assert by_key[("scale", -1)].state == "success" and by_key[("scale", -1)].try_number == 0
    assert by_key[("total", -1)].result == "100 kB [0, 1, 2, 3] 30"
    assert [by_key[("echo", i)].result for i in range(2)] == ["0-a", "1-b"]
    assert by_key[("uses", -1)].state == "success"
    scale_tries = [a for a in attempts if a.task_id == "scale"]
    assert sorted(a.map_index for a in scale_tries) == [0, 1, 2, 3]
    # The user's code, as each instance timed it (a worker process outlives its recorded
    # outcome a little, which is when its slot is free).
    spans = await query(db_url, _spans, run_id)
    assert len(spans) == 4 and max_overlap(spans) <= 2, "max_active_mapped=2"
    logs = sorted((tmp_path / "state" / "logs" / "mapped").glob("*/scale/map-*/1.log"))
    assert [p.parent.name for p in logs] == ["map-0", "map-1", "map-2", "map-3"]


def test_dags_test_and_the_cli_show_mapped_instances(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    write_dag(dags, "mapped.py", MAPPED)
    env = cli_env(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", dags, tmp_path / "state")
    shown = run_cli(["dags", "show", "mapped"], env)
    assert shown.returncode == 0, shown.stderr
    assert "scale (python) mapped over size=<result of sizes>" in shown.stdout
    assert "echo (bash, result: its last output line) mapped over command=[2 items]" in shown.stdout
    tested = run_cli(["dags", "test", "mapped"], env, timeout=90)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "scale[3]: success (try 1)" in tested.stdout
    assert "echo[1] | 1-b" in tested.stdout
    listed = run_cli(["tasks", "list", "mapped"], env)
    assert listed.returncode == 0, listed.stderr
    for ref in ("scale[0]", "scale[3]", "echo[1]"):
        assert ref in listed.stdout
    as_json = json.loads(run_cli(["tasks", "list", "mapped", "--output", "json"], env).stdout)
    assert sorted(t["map_index"] for t in as_json if t["task_id"] == "scale") == [-1, 0, 1, 2, 3]
    one = run_cli(["tasks", "result", "mapped", "scale", "--map-index", "1"], env)
    assert one.returncode == 0 and json.loads(one.stdout) == 20, one.stderr
    every = run_cli(["tasks", "result", "mapped", "scale"], env)
    assert json.loads(every.stdout) == [10, 20, 30, 40], every.stderr
    log = run_cli(["tasks", "logs", "mapped", "echo", "--map-index", "1"], env)
    assert log.returncode == 0 and "1-b" in log.stdout, log.stderr
    whole = run_cli(["tasks", "logs", "mapped", "echo"], env)
    assert whole.returncode != 0 and "--map-index" in whole.stdout + whole.stderr


def test_a_literal_list_over_the_limit_is_a_definition_error(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    write_dag(
        dags,
        "big.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash

        with DAG("big", start_date=datetime(2026, 1, 1)):
            Bash.partial("each").expand(command=[f"echo {i}" for i in range(5)])
        """,
    )
    env = cli_env(
        f"sqlite+aiosqlite:///{tmp_path / 'm.db'}",
        dags,
        tmp_path / "state",
        MINIFLOW_MAX_MAP_LENGTH="4",
    )
    result = run_cli(["dags", "errors"], env)
    text = result.stdout + result.stderr
    assert "big.py" in text and ":5" in text, text
    assert "gives 5 mapped instances, more than the maximum map length 4" in text, text


CRASH_DAG = """
from datetime import datetime
from miniflow import DAG, task

with DAG("crash", start_date=datetime(2026, 1, 1)):
    @task
    def items() -> list:
        return list(range({n}))

    @task
    def work(x: int) -> int:
        from miniflow import get_current_context
        ti = get_current_context()["ti"]
        with open({log!r}, "a") as f:
            f.write(f"{{x}} {{ti.map_index}} {{ti.try_number}}\\n")
        return x

    @task
    def total(xs: list) -> int:
        assert xs == list(range({n})), xs
        return sum(xs)

    total(work.expand(x=items()))
"""


async def test_scheduler_killed_around_the_expansion_creates_each_instance_once(
    db_url: str, tmp_path: Path
) -> None:
    """SIGKILL the scheduler as soon as the upstream's result is in (before, during or
    just after the expansion of 100 instances), and again while they run; after the
    restarts every map_index exists once and ran once."""
    n = 100
    ran = tmp_path / "ran.txt"
    dags, state_dir = tmp_path / "dags", tmp_path / "state"
    write_dag(dags, "crash.py", CRASH_DAG.format(n=n, log=str(ran)))
    env = cli_env(db_url, dags, state_dir)
    config = load_config(environ=env)
    run_id = await operations.trigger(config, "crash", conf_json=None)

    async def rows() -> list[TaskInstanceRecord]:
        return await query(db_url, store_tis.list_for_run, "crash", run_id)

    async def upstream_done() -> bool:
        return any(r.task_id == "items" and r.state == "success" for r in await rows())

    async def some_ran() -> bool:
        return sum(r.task_id == "work" and r.state == "success" for r in await rows()) >= 5

    async def finished() -> bool:
        run = await query(db_url, store_runs.get_run, "crash", run_id)
        return run.state in ("success", "failed")

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, moment in enumerate((upstream_done, some_ran)):
            proc = spawn_cli(["scheduler"], env, tmp_path / f"scheduler{i}.log")
            procs.append(proc)
            await until(moment, 60, moment.__name__)
            os.killpg(proc.pid, signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
        last = spawn_cli(["scheduler"], env, tmp_path / "scheduler-last.log")
        procs.append(last)
        await until(finished, 90, "the run to finish after the restarts")
        assert stop(last, signal.SIGTERM) == 0
    finally:
        for proc in procs:
            kill_group(proc)
            proc.wait(5)
    names = ["scheduler0.log", "scheduler1.log", "scheduler-last.log"]
    logs = "".join((tmp_path / name).read_text() for name in names)
    run = await query(db_url, store_runs.get_run, "crash", run_id)
    assert run.state == "success", logs[-3000:]
    work = [r for r in await rows() if r.task_id == "work"]
    assert sorted(r.map_index for r in work) == [-1, *range(n)]
    lines = ran.read_text().splitlines()
    assert len(lines) == len(set(lines)), "an instance's try ran twice"
    assert sorted({int(line.split()[1]) for line in lines}) == list(range(n))
    assert all(line.split()[0] == line.split()[1] for line in lines)
