"""Mapped Pod and Bash tasks on the fake Kubernetes cluster: one pod per mapped instance,
named and labelled by its map_index, the worker told which instance it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from miniflow.cli import logs
from miniflow.launchers.pods import ANNOTATION_MAP_INDEX, LABEL_MAP_INDEX
from miniflow.store import task_instances as store_tis
from tests.dbs import PostgresDatabases
from tests.e2e.helpers import query, write_dag
from tests.e2e.kube_helpers import FakeKube, PodAudit, kube_scheduler, kubelet_env, settle

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"base_env": kubelet_env()}


@pytest.fixture
async def pg_url(postgres_dbs: PostgresDatabases) -> str:
    return await postgres_dbs.clone()


async def test_mapped_pod_and_bash_on_the_cluster(
    fake_kube: FakeKube, pg_url: str, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    write_dag(
        dags,
        "mapped.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash, Pod

        with DAG("mapped", start_date=datetime(2026, 1, 1)):
            pods = Pod.partial("each", image="busybox:1.36", command=["sh", "-c"]).expand(
                args=[["echo pod-$MINIFLOW_MAP_INDEX"], ["echo pod-{{ map_index }}-b"]]
            )
            words = Bash.partial("words", push_result=True).expand(
                command=["echo one", "echo two", "echo three"]
            )
            pods >> words
        """,
    )
    audit = PodAudit(fake_kube)
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        run_id, state = await kube.run("mapped")
        rows = await query(pg_url, store_tis.list_for_run, "mapped", run_id)
        await settle(kube)
        attempts = await kube.attempts("mapped", run_id)
        config = kube.config
    by_key = {(r.task_id, r.map_index): r for r in rows}
    assert state == "success", {k: r.error for k, r in by_key.items() if r.error}
    # Bash runs in the worker on the cluster: it records the pushed result itself.
    assert [by_key[("words", i)].result for i in range(3)] == ["one", "two", "three"]

    manifests = audit.manifests()
    assert set(audit.creates_per_pod().values()) == {1}
    assert len(attempts) == 5 and len({a.handle for a in attempts}) == 5
    for a in attempts:
        manifest = manifests[a.handle]
        assert manifest["metadata"]["labels"][LABEL_MAP_INDEX] == str(a.map_index)
        assert manifest["metadata"]["annotations"][ANNOTATION_MAP_INDEX] == str(a.map_index)
        assert a.handle.endswith(f"-{a.map_index}-{a.try_number}")
        container = manifest["spec"]["containers"][0]
        if a.task_id == "words":
            command = container["command"]
            assert command[command.index("--map-index") + 1] == str(a.map_index)
        else:
            expected = "echo pod-$MINIFLOW_MAP_INDEX" if a.map_index == 0 else "echo pod-1-b"
            assert container["args"] == [expected]
    second = [line async for line in logs.read(config, "mapped", run_id, "each", None, False, 1)]
    assert second == ["pod-1-b"]
    first = [line async for line in logs.read(config, "mapped", run_id, "each", None, False, 0)]
    assert first == ["pod-0"]
