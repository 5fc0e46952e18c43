"""Three real schedulers on one PostgreSQL database and one namespace of the fake cluster.

Each scheduler (the real `Scheduler` with the real `KubernetesLauncher`, built
from config as the daemon does) labels its pods with its id and follows only
those. The fake API server records every request with its User-Agent, which
names the scheduler that sent it, so the test checks from the server's side
that no scheduler ever touched a peer's pod: every pod created once, its log
read once and deleted once, by the scheduler that owns it; no 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.launchers import pods
from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import states
from tests.dbs import PostgresDatabases
from tests.e2e.helpers import write_dag
from tests.e2e.kube_helpers import FakeKube, KubeRun, PodAudit, kube_scheduler, kubelet_env

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

TASKS = 300
SCHEDULERS = 3
SETTINGS = {
    "MINIFLOW_POD_KEEP_FAILED_FOR": "0",
    "MINIFLOW_PARALLELISM": "48",
    "MINIFLOW_POD_PENDING_TIMEOUT": "60",  # a busy two-core machine starts pods slowly
    # Each heartbeat counts the live peers, whose number splits the parallelism: the first
    # scheduler to start learns of the other two within a second.
    "MINIFLOW_SCHEDULER_HEARTBEAT": "1",
    "MINIFLOW_SCHEDULER_TIMEOUT": "10",
}


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"base_env": kubelet_env()}


@pytest.fixture
async def pg_url(postgres_dbs: PostgresDatabases) -> str:
    return await postgres_dbs.clone()


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    eng = store_engine.create_engine(pg_url)
    try:
        yield eng
    finally:
        await eng.dispose()


def fan_dag(folder: Path, proof: Path, *, tasks: int = TASKS, gate: Path | None = None) -> None:
    """`tasks` Pod tasks; each appends its id to `proof` (once `gate` exists, if given)."""
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done; " if gate else ""
    write_dag(
        folder,
        "shared.py",
        f"""
        from datetime import datetime
        from miniflow import DAG, Pod

        with DAG("shared", start_date=datetime(2026, 1, 1)):
            for i in range({tasks}):
                Pod(
                    f"t{{i:03d}}",
                    image="busybox:1.36",
                    command=["sh", "-c", f"{wait}echo t{{i:03d}} >> {proof}; echo ran t{{i:03d}}"],
                )
        """,
    )


async def until(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.1)


async def test_three_schedulers_share_one_namespace_and_never_touch_a_peers_pod(
    fake_kube: FakeKube, pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    dags, proof = tmp_path / "dags", tmp_path / "proof"
    fan_dag(dags, proof)
    audit = PodAudit(fake_kube)
    sessions = store_engine.sessionmaker(engine)
    began = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        kubes: list[KubeRun] = [
            # Turns of 0.3 s: with the default second, the 300 pods are all claimed within
            # two turns and the third scheduler never gets one.
            await stack.enter_async_context(
                kube_scheduler(fake_kube, pg_url, dags, claim_turn=0.3, **SETTINGS)
            )
            for _ in range(SCHEDULERS)
        ]
        run_id = await kubes[0].trigger("shared")
        loops = [asyncio.create_task(k.scheduler.run_forever()) for k in kubes]
        try:

            async def finished() -> bool:
                async with store_engine.transaction(sessions) as session:
                    run = await store_runs.get_run(session, "shared", run_id)
                    attempts = await store_attempts.for_run(session, "shared", run_id)
                closed = len(attempts) == TASKS and all(a.ended_at for a in attempts)
                return run.state in states.RUN_FINISHED and closed and not fake_kube.state.pods()

            await until(finished, "the run, its attempts and its pods to be done", 180)
        finally:
            for k in kubes:
                k.scheduler.stop()
            await asyncio.gather(*loops)
        ids = {pods.label_value(k.scheduler.scheduler_id): k.scheduler.scheduler_id for k in kubes}
    elapsed = time.monotonic() - began

    async with store_engine.transaction(sessions) as session:
        run = await store_runs.get_run(session, "shared", run_id)
        attempts = await store_attempts.for_run(session, "shared", run_id)
    assert run.state == states.RUN_SUCCESS
    assert all(a.state == states.SUCCESS for a in attempts)
    executed = Counter(proof.read_text().split())
    assert len(executed) == TASKS and set(executed.values()) == {1}, "a task ran twice or never"

    created = audit.by_task()
    assert len(created) == TASKS and set(created.values()) == {1}, "a pod was created twice"
    owner_of = {p["metadata"]["name"]: ids[str(pods.owner_of(p))] for p in audit.added}

    def sender(record: Any) -> str:
        (who,) = [i for i in ids.values() if f"(scheduler {i})" in record.user_agent]
        return who

    per_pod: Counter[tuple[str, str]] = Counter()
    for record in fake_kube.requests:
        if record.resource != "pods" or record.dry_run:
            continue
        if record.name is not None:  # a request on one pod: only its owner sends it
            assert sender(record) == owner_of[record.name], record
            per_pod[(record.verb, record.name)] += 1
        elif record.verb in ("list", "watch"):  # its own pods only, or owner-less ones
            # (a starting scheduler takes over pods launched before owners existed)
            assert record.query["labelSelector"] in (
                pods.selector(sender(record)),
                f"{pods.selector()},!{pods.LABEL_OWNER}",
            ), record
        assert record.status != 404, record
    for name in owner_of:
        assert (per_pod[("log", name)], per_pod[("delete", name)]) == (1, 1), name
    assert {verb for verb, _ in per_pod} == {"log", "delete"}  # no PATCH, no GET

    spread = Counter(owner_of.values())
    print(
        f"\n{TASKS} Pod tasks, {SCHEDULERS} schedulers: {elapsed:.1f}s; pods per scheduler "
        f"{sorted(spread.values(), reverse=True)}; requests {dict(fake_kube.requests.counts())}"
    )
    assert len(spread) == SCHEDULERS, f"the work was not spread over all three: {spread}"


async def test_a_stopped_schedulers_pods_are_relabelled_once_and_finished_by_its_peers(
    fake_kube: FakeKube, pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    tasks = 30  # all running at once: within a DAG's default max_active_tasks
    dags, proof, gate = tmp_path / "dags", tmp_path / "proof", tmp_path / "gate"
    fan_dag(dags, proof, tasks=tasks, gate=gate)
    audit = PodAudit(fake_kube)
    sessions = store_engine.sessionmaker(engine)
    async with contextlib.AsyncExitStack() as stack:
        kubes: list[KubeRun] = [
            await stack.enter_async_context(kube_scheduler(fake_kube, pg_url, dags, **SETTINGS))
            for _ in range(SCHEDULERS)
        ]
        for k in kubes:
            fast = replace(k.scheduler.settings.sanity, interval=0.3)
            k.scheduler.settings = replace(k.scheduler.settings, sanity=fast)
        run_id = await kubes[0].trigger("shared")
        loops = {id(k): asyncio.create_task(k.scheduler.run_forever()) for k in kubes}
        try:

            async def all_running() -> bool:
                return len(audit.added) == tasks and all(
                    (p.get("status") or {}).get("phase") == "Running"
                    for p in fake_kube.state.pods()
                )

            await until(all_running, "every pod to run", 60)
            owners = Counter(str(pods.owner_of(p)) for p in audit.added)
            # The scheduler with the most pods goes away (SIGTERM: it says goodbye).
            leaving = max(kubes, key=lambda k: owners[pods.label_value(k.scheduler.scheduler_id)])
            left_behind = {
                p["metadata"]["name"]
                for p in audit.added
                if pods.owner_of(p) == pods.label_value(leaving.scheduler.scheduler_id)
            }
            leaving.scheduler.stop()
            await loops.pop(id(leaving))
            await leaving.scheduler.close()

            async def adopted() -> bool:
                labels = {pods.owner_of(p) for p in fake_kube.state.pods()}
                return pods.label_value(leaving.scheduler.scheduler_id) not in labels

            began = time.monotonic()
            await until(adopted, "the peers to re-label the pods left behind", 30)
            adoption = time.monotonic() - began
            gate.touch()

            async def finished() -> bool:
                async with store_engine.transaction(sessions) as session:
                    run = await store_runs.get_run(session, "shared", run_id)
                    attempts = await store_attempts.for_run(session, "shared", run_id)
                closed = len(attempts) == tasks and all(a.ended_at for a in attempts)
                return run.state in states.RUN_FINISHED and closed and not fake_kube.state.pods()

            await until(finished, "the run, its attempts and its pods to be done", 120)
        finally:
            for k in kubes:
                k.scheduler.stop()
            await asyncio.gather(*loops.values())

    async with store_engine.transaction(sessions) as session:
        run = await store_runs.get_run(session, "shared", run_id)
        attempts = await store_attempts.for_run(session, "shared", run_id)
    assert run.state == states.RUN_SUCCESS
    assert sorted(a.task_id for a in attempts) == sorted(f"t{i:03d}" for i in range(tasks))
    executed = Counter(proof.read_text().split())
    assert len(executed) == tasks and set(executed.values()) == {1}, "a task ran twice or never"
    assert set(audit.by_task().values()) == {1}, "a pod was created twice"

    leaver = f"(scheduler {leaving.scheduler.scheduler_id})"
    patches = [r for r in fake_kube.requests.of("patch")]
    assert Counter(r.name for r in patches) == Counter({n: 1 for n in left_behind})
    assert all(r.status == 200 and leaver not in r.user_agent for r in patches)
    per_pod = Counter((r.verb, r.name) for r in fake_kube.requests if r.verb in ("log", "delete"))
    for name in {p["metadata"]["name"] for p in audit.added}:
        assert (per_pod[("log", name)], per_pod[("delete", name)]) == (1, 1), name
    assert not [r for r in fake_kube.requests if r.status == 404]
    assert not [
        r
        for r in fake_kube.requests
        if leaver in r.user_agent and r.name in left_behind and r.verb != "create"
    ]
    print(
        f"\n{tasks} Pod tasks, {SCHEDULERS} schedulers, one leaving with {len(left_behind)} "
        f"pods: re-labelled within {adoption:.1f}s, each once"
    )
