"""Sensors and Pod task results on the fake Kubernetes cluster: the real scheduler and
KubernetesLauncher over HTTP, real Postgres, worker pods running `miniflow-worker`.

A rescheduled sensor is one pod per poke and none in between (its pool slot goes to
another task meanwhile); a `push_result` Pod task's result comes from the pod status
the watch already delivers: no request beyond create, log read and delete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from miniflow.store import engine as store_engine
from miniflow.store import pools as store_pools
from tests.dbs import PostgresDatabases
from tests.e2e.helpers import write_dag
from tests.e2e.kube_helpers import FakeKube, PodAudit, kube_scheduler, kubelet_env, settle
from tests.e2e.test_sensors_local import POOLED_SENSOR_DAG

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"base_env": kubelet_env()}


@pytest.fixture
async def pg_url(postgres_dbs: PostgresDatabases) -> str:
    return await postgres_dbs.clone()


async def test_rescheduled_sensor_is_one_pod_per_poke_and_frees_its_slot(
    fake_kube: FakeKube, pg_url: str, tmp_path: Path
) -> None:
    dags, flag = tmp_path / "dags", tmp_path / "flag"
    write_dag(
        dags, "pooled.py", POOLED_SENSOR_DAG.format(flag=str(flag), timeout=60, mode="reschedule")
    )
    audit = PodAudit(fake_kube)
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        async with store_engine.transaction(kube.scheduler.sessions) as session:
            await store_pools.set_pool(session, "one", 1, None)
        run_id, state = await kube.run("pooled")
        await settle(kube)
        tis = await kube.tis("pooled", run_id)
        attempts = await kube.attempts("pooled", run_id)
    assert state == "success", {t: (ti.state, ti.error) for t, ti in tis.items()}
    pokes = sorted(
        (a for a in attempts if a.task_id == "wait_for_flag"), key=lambda a: a.try_number
    )
    assert len(pokes) >= 2
    assert [a.state for a in pokes] == ["up_for_reschedule"] * (len(pokes) - 1) + ["success"]
    # one pod per poke, each created once
    assert set(audit.creates_per_pod().values()) == {1}
    assert sorted(a.handle for a in attempts) == sorted(audit.manifests())
    # `produce` shares the one-slot pool and was claimed after the sensor (priority): it
    # ran while the sensor waited between pokes, holding nothing. Claim times are compared
    # (each is its round's clock); an end time is the launcher's, seen during a round.
    produce = next(a for a in attempts if a.task_id == "produce")
    assert pokes[0].queued_at < produce.queued_at < pokes[-1].queued_at  # type: ignore[operator]
    assert tis["wait_for_flag"].result == "ready" and tis["use"].result == "READY"
    assert tis["wait_for_flag"].max_tries - tis["wait_for_flag"].try_number == 1  # retries=2


PUSH_DAG = """
from datetime import datetime
from miniflow import DAG, Pod, task

with DAG("pushed", start_date=datetime(2026, 1, 1)):
    measure = Pod(
        "measure", image="busybox:1.36", push_result=True,
        command=["sh", "-c", "echo measuring; echo '{\\"rows\\": 42}' > /dev/termination-log"],
    )
    broken = Pod(
        "broken", image="busybox:1.36", push_result=True,
        command=["sh", "-c", "echo 'rows: 42' > /dev/termination-log"],
    )

    airflowish = Pod(
        "airflowish", image="busybox:1.36", push_result=True,
        result_file="/airflow/xcom/return.json",
        command=["sh", "-c", "echo '[1, 2]' > /airflow/xcom/return.json"],
    )

    @task
    def double(measured: dict) -> int:
        return measured["rows"] * 2

    double(measure.output)
"""


async def test_pod_result_from_the_termination_message_without_extra_requests(
    fake_kube: FakeKube, pg_url: str, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    write_dag(dags, "pushed.py", PUSH_DAG)
    audit = PodAudit(fake_kube)
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        run_id, state = await kube.run("pushed")
        await settle(kube)
        tis = await kube.tis("pushed", run_id)
        attempts = {a.task_id: a for a in await kube.attempts("pushed", run_id)}
    assert state == "failed"
    assert (tis["measure"].state, tis["measure"].result) == ("success", {"rows": 42})
    assert (tis["double"].state, tis["double"].result) == ("success", 84)
    assert (tis["airflowish"].state, tis["airflowish"].result) == ("success", [1, 2])
    airflowish = audit.manifests()[attempts["airflowish"].handle]["spec"]["containers"][0]
    assert airflowish["terminationMessagePath"] == "/airflow/xcom/return.json"
    assert tis["broken"].state == "failed" and "is not valid JSON" in (tis["broken"].error or "")
    assert attempts["broken"].exit_code == 0  # the container succeeded; its result did not
    container = audit.manifests()[attempts["measure"].handle]["spec"]["containers"][0]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "File"
    # No sidecar, no exec, no extra read: create + log read per pod, delete per pod that
    # exited 0 (`broken`'s too: its container succeeded),
    # the start-up checks' dry-run create and Secret GET, the watch's lists.
    counts = fake_kube.requests.counts()
    assert len(audit.manifests()[attempts["measure"].handle]["spec"]["containers"]) == 1
    assert counts["create"] == 4 + 1 and counts["log"] == 4
    assert counts["get"] == 1 and counts["delete"] == 4
    assert "exec" not in counts and "attach" not in counts
