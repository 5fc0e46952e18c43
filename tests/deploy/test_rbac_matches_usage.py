"""The scheduler's Role grants exactly what the scheduler uses: no more, no less.

Two real schedulers (the real `Scheduler` and `KubernetesLauncher`, built from config
as the daemon does) share one PostgreSQL database and one namespace of the fake API
server, and go through every path that talks to the API: start-up checks (a dry-run
create, the worker Secret), launches, the watch and its relists, a live pod's log read
by `miniflow tasks logs` (run in the scheduler's pod, with its account), one scheduler
leaving and its peer re-labelling (adopting) its pods, a pod deleted behind the
scheduler's back (a GET tells it from a handed-over one), log tails and clean-up. The
fake server logs every request's verb, resource and subresource, as the RBAC authorizer
sees them; the set of (resource, verb) pairs must equal the Role's in deploy/base.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from miniflow.cli import logs
from miniflow.launchers import pods
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import states
from tests.dbs import PostgresDatabases
from tests.deploy.render import DEPLOY, find, rbac_pairs, render
from tests.e2e.helpers import until, write_dag
from tests.e2e.kube_helpers import FakeKube, KubeRun, PodAudit, kube_scheduler, kubelet_env

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

NON_RESOURCE_PATHS = {"/version"}  # readable by every authenticated client
SETTINGS = {
    "MINIFLOW_POD_KEEP_FAILED_FOR": "0",
    "MINIFLOW_POD_PENDING_TIMEOUT": "60",
    "MINIFLOW_SCHEDULER_HEARTBEAT": "1",
    "MINIFLOW_SCHEDULER_TIMEOUT": "10",
}
TASKS = 6


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"base_env": kubelet_env()}


def gated_dag(folder: Path, gate: Path) -> None:
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    write_dag(
        folder,
        "rbac.py",
        f"""
        from datetime import datetime
        from miniflow import DAG, Bash, Pod

        with DAG("rbac", start_date=datetime(2026, 1, 1)):
            Bash("worker_task", "echo worker started; {wait}; echo worker done")
            for i in range({TASKS}):
                Pod(f"p{{i}}", image="busybox:1.36",
                    command=["sh", "-c", "echo p{{i}} started; {wait}; echo p{{i}} done"])
        """,
    )


def observed_pairs(fake: FakeKube) -> set[tuple[str, str]]:
    """(resource, verb) of every request, as RBAC names them (a log read: get pods/log)."""
    pairs = set()
    for record in fake.requests:
        if record.path in NON_RESOURCE_PATHS:
            continue
        assert record.verb != "other", record  # a request this test cannot name
        resource = f"{record.resource}/{record.subresource}" if record.subresource else (
            record.resource
        )
        pairs.add((resource, "get" if record.verb == "log" else record.verb))
    return pairs


async def test_role_grants_exactly_the_pairs_the_schedulers_use(
    fake_kube: FakeKube, postgres_dbs: PostgresDatabases, tmp_path: Path
) -> None:
    pg_url = await postgres_dbs.clone()
    dags, gate = tmp_path / "dags", tmp_path / "gate"
    gated_dag(dags, gate)
    audit = PodAudit(fake_kube)
    engine = store_engine.create_engine(pg_url)
    sessions = store_engine.sessionmaker(engine)
    try:
        async with contextlib.AsyncExitStack() as stack:
            kubes: list[KubeRun] = [
                await stack.enter_async_context(
                    kube_scheduler(fake_kube, pg_url, dags, **SETTINGS)
                )
                for _ in range(2)
            ]
            run_id = await kubes[0].trigger("rbac")
            loops = {id(k): asyncio.create_task(k.scheduler.run_forever()) for k in kubes}
            try:

                async def all_running() -> bool:
                    live = fake_kube.state.pods()
                    return len(live) == TASKS + 1 and all(
                        (p.get("status") or {}).get("phase") == "Running" for p in live
                    )

                await until(all_running, 60, "every pod to run", interval=0.1)
                # `miniflow tasks logs` of a running try reads the live pod's log.
                async def logged() -> bool:
                    config = kubes[0].config
                    read = logs.read(config, "rbac", run_id, "worker_task", None, False)
                    return any([line.endswith("worker started") async for line in read])

                await until(logged, 30, "the worker's first line", interval=0.1)

                # The scheduler with the most pods leaves; its peer re-labels them (PATCH).
                owners = [pods.owner_of(p) for p in fake_kube.state.pods()]
                leaving = max(
                    kubes, key=lambda k: owners.count(pods.label_value(k.scheduler.scheduler_id))
                )
                leaving.scheduler.stop()
                await loops.pop(id(leaving))
                await leaving.scheduler.close()
                gone = pods.label_value(leaving.scheduler.scheduler_id)

                async def adopted() -> bool:
                    return gone not in {pods.owner_of(p) for p in fake_kube.state.pods()}

                await until(adopted, 30, "the peer to re-label the pods left behind", 0.1)
                assert fake_kube.requests.of("patch")

                # A pod deleted behind the scheduler's back leaves its watch like one
                # handed over: the scheduler GETs it to tell which.
                victim = next(p for p in fake_kube.state.pods())["metadata"]["name"]
                await fake_kube.faults.delete_pod(victim)

                async def looked() -> bool:
                    return any(r.name == victim for r in fake_kube.requests.of("get", "pods"))

                await until(looked, 30, "a GET of the vanished pod", 0.1)
                gate.touch()

                async def finished() -> bool:
                    async with store_engine.transaction(sessions) as session:
                        run = await store_runs.get_run(session, "rbac", run_id)
                    return run.state in states.RUN_FINISHED and not fake_kube.state.pods()

                await until(finished, 90, "the run and its pods to be done", 0.1)
            finally:
                gate.touch()  # a failed test leaves no task command waiting behind
                for k in kubes:
                    if id(k) in loops:
                        k.scheduler.stop()
                await asyncio.gather(*loops.values())
    finally:
        await engine.dispose()
    assert audit.added, "no pod was created"

    used = observed_pairs(fake_kube)
    role = find(render(DEPLOY / "base"), "Role", "miniflow-scheduler")
    granted = rbac_pairs(role["rules"])
    print(f"\n(resource, verb) pairs used: {sorted(used)}")
    assert used == granted, f"unused grants {granted - used}, missing grants {used - granted}"
