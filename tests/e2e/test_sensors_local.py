"""Sensors under the real scheduler and the LocalLauncher (one process per poke), on both
databases: a rescheduled sensor frees its pool slot between pokes, a poking one holds it."""

from __future__ import annotations

from pathlib import Path

from miniflow.store import engine as store_engine
from miniflow.store import pools as store_pools
from tests.e2e.helpers import cli_env, run_cli, write_dag
from tests.e2e.test_local_scheduler import local_scheduler

POOLED_SENSOR_DAG = """
from datetime import datetime
from pathlib import Path
from miniflow import DAG, Bash, SensorResult, task

FLAG = Path({flag!r})

with DAG("pooled", start_date=datetime(2026, 1, 1)):
    @task.sensor(poke_interval=0.2, timeout={timeout}, mode={mode!r}, pool="one", retries=2,
                 priority=10)  # claimed before `produce`
    def wait_for_flag():
        if not FLAG.exists():
            return False
        return SensorResult(True, FLAG.read_text().strip())

    @task
    def use(value: str) -> str:
        return value.upper()

    # Shares the sensor's one-slot pool: it can only run while the sensor holds no slot.
    Bash("produce", "sleep 0.5 && echo ready > {flag}", pool="one")
    use(wait_for_flag())
"""


async def _one_slot_pool(local: object, name: str = "one") -> None:
    sessions = local.scheduler.sessions  # type: ignore[attr-defined]
    async with store_engine.transaction(sessions) as session:
        await store_pools.set_pool(session, name, 1, None)


async def test_rescheduled_sensor_gives_its_pool_slot_back_between_pokes(
    db_url: str, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    source = POOLED_SENSOR_DAG.format(flag=str(flag), timeout=60, mode="reschedule")
    write_dag(tmp_path / "dags", "pooled.py", source)
    async with local_scheduler(db_url, tmp_path) as local:
        await _one_slot_pool(local)
        run_id, state = await local.run("pooled")
        tis = await local.tis("pooled", run_id)
        attempts = await local.attempts("pooled", run_id)
    sensor = tis["wait_for_flag"]
    assert state == "success", {t: ti.error for t, ti in tis.items()}
    pokes = sorted(
        (a for a in attempts if a.task_id == "wait_for_flag"), key=lambda a: a.try_number
    )
    # the sensor poked before the file existed and gave its slot to `produce` in between
    assert len(pokes) >= 2
    assert [a.state for a in pokes] == ["up_for_reschedule"] * (len(pokes) - 1) + ["success"]
    assert sensor.try_number == len(pokes)
    assert sensor.max_tries - sensor.try_number == 2 - 1  # retries=2: none used by pokes
    # `produce` shares the one-slot pool and was claimed after the sensor (priority): it
    # ran while the sensor waited between pokes, holding nothing. Claim times are compared
    # (each is its round's clock); an end time is the launcher's, seen during a round.
    produce = next(a for a in attempts if a.task_id == "produce")
    assert pokes[0].queued_at < produce.queued_at < pokes[-1].queued_at  # type: ignore[operator]
    assert sensor.result == "ready" and tis["use"].result == "READY"


async def test_poking_sensor_holds_its_slot_and_times_out_without_retrying(
    db_url: str, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    source = POOLED_SENSOR_DAG.format(flag=str(flag), timeout=1.5, mode="poke")
    write_dag(tmp_path / "dags", "pooled.py", source)
    async with local_scheduler(db_url, tmp_path) as local:
        await _one_slot_pool(local)
        run_id, state = await local.run("pooled")
        tis = await local.tis("pooled", run_id)
    sensor = tis["wait_for_flag"]
    assert state == "failed"
    assert sensor.state == "failed" and sensor.try_number == 1  # retries=2, none used
    assert "sensor timed out" in (sensor.error or "")
    assert tis["use"].state == "upstream_failed"
    assert tis["produce"].started_at >= sensor.ended_at  # type: ignore[operator]


DAGS_TEST_DAG = """
from datetime import datetime
from pathlib import Path
from miniflow import DAG, Pod, get_current_context, task

with DAG("sensed", start_date=datetime(2026, 1, 1)):
    measure = Pod(
        "measure", image="busybox:1.36", push_result=True,
        command=["sh", "-c", "echo '{{\\"rows\\": 7}}' > /dev/termination-log"],
    )

    @task.sensor(poke_interval=0.2, timeout=60, mode="reschedule")
    def third_poke() -> bool:
        return get_current_context()["try_number"] >= 3

    @task
    def total(measured: dict, ready: bool) -> str:
        print(f"total rows {{measured['rows']}} ready={{ready}}")
        return "ok"

    total(measure.output, third_poke())
"""


def test_dags_test_runs_a_rescheduled_sensor_and_a_pod_result(tmp_path: Path) -> None:
    """`miniflow dags test` (SQLite, local launcher): one try per poke, each but the last
    up_for_reschedule, and the Pod task's result reaches the `@task` downstream."""
    dags, state = tmp_path / "dags", tmp_path / "state"
    write_dag(dags, "sensed.py", DAGS_TEST_DAG.format())
    env = cli_env(f"sqlite+aiosqlite:///{state / 'miniflow.db'}", dags, state)
    done = run_cli(["dags", "test", "sensed"], env, timeout=90)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "third_poke: success (try 3)" in out
    assert "total rows 7 ready=True" in out
    listed = run_cli(["tasks", "list", "sensed", "latest", "--all-tries"], env)
    rows = [line.split("│")[1:4] for line in listed.stdout.splitlines() if "third_poke" in line]
    assert [[c.strip() for c in r] for r in rows] == [
        ["third_poke", "1", "up_for_reschedule"],
        ["third_poke", "2", "up_for_reschedule"],
        ["third_poke", "3", "success"],
    ], listed.stdout
