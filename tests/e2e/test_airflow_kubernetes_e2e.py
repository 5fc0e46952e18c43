"""An Airflow DAG with KubernetesPodOperator and a per-task worker image
(`executor_config={"pod_override": ...}`), unmodified, on the fake Kubernetes cluster:
exactly one pod per task (Airflow's KubernetesExecutor needs two for the operator).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.dbs import PostgresDatabases
from tests.e2e.helpers import write_dag
from tests.e2e.kube_helpers import FakeKube, PodAudit, kube_scheduler, kubelet_env, settle

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

KPO_DAG = """
from datetime import datetime

from airflow import DAG
from airflow.decorators import task
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes_asyncio.client import models as k8s

with DAG("af_kpo", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
    hello = KubernetesPodOperator(
        task_id="hello",
        name="hello-pod",
        image="busybox:1.36",
        cmds=["sh", "-c"],
        arguments=["echo hello $GREETING on {{ ds }}"],
        env_vars=[k8s.V1EnvVar(name="GREETING", value="hi")],
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": "100m"}, limits={"memory": "64Mi"}
        ),
        labels={"team": "data"},
        get_logs=True,
        on_finish_action="delete_pod",
    )

    @task(
        executor_config={
            "pod_override": k8s.V1Pod(
                spec=k8s.V1PodSpec(
                    containers=[k8s.V1Container(name="base", image="etl-image:2.1")]
                )
            )
        }
    )
    def after():
        return "done"

    hello >> after()

    # mapped over literal arguments; each pod's /airflow/xcom/return.json is its result
    sizes = KubernetesPodOperator.partial(
        task_id="sizes", image="busybox:1.36", cmds=["sh", "-c"], do_xcom_push=True
    ).expand(
        arguments=[["echo 1 > /airflow/xcom/return.json"], ["echo 2 > /airflow/xcom/return.json"]]
    )

    @task
    def total(values):
        return sum(values)

    total(sizes.output)
"""


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"base_env": kubelet_env()}


@pytest.fixture
async def pg_url(postgres_dbs: PostgresDatabases) -> str:
    return await postgres_dbs.clone()


async def test_kubernetes_pod_operator_is_one_pod_per_task(
    fake_kube: FakeKube, pg_url: str, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    write_dag(dags, "af_kpo.py", KPO_DAG)
    audit = PodAudit(fake_kube)
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        run_id = await kube.trigger("af_kpo")
        state = await kube.scheduler.run_until_done("af_kpo", run_id, timeout=60)
        tis = await kube.tis("af_kpo", run_id)
        await settle(kube)
        attempts = {a.task_id: a for a in await kube.attempts("af_kpo", run_id)}
    assert state == "success", {t: (i.state, i.error) for t, i in tis.items()}
    assert tis["after"].result == "done"
    assert tis["total"].result == 3  # the two mapped pods' do_xcom_push results

    manifests = audit.manifests()
    assert set(audit.creates_per_pod().values()) == {1}
    # one pod per task (instance): no worker pod around the operator's pods
    assert len(manifests) == 5
    hello = manifests[attempts["hello"].handle]["spec"]["containers"][0]
    assert hello["image"] == "busybox:1.36"
    assert hello["command"] == ["sh", "-c"]
    assert hello["args"][0].startswith("echo hello $GREETING on 20")
    assert {"name": "GREETING", "value": "hi"} in hello["env"]
    assert hello["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}}
    labels = manifests[attempts["hello"].handle]["metadata"]["labels"]
    assert labels["team"] == "data"
    assert "hello hi on 20" in (attempts["hello"].log_tail or "")

    worker = manifests[attempts["after"].handle]["spec"]["containers"]
    (base,) = [c for c in worker if c["name"] == "base"]
    assert base["image"] == "etl-image:2.1"  # the per-task worker image
    assert base["command"][:2] == ["miniflow-worker", "run"]
