"""Fault injection on the fake cluster: real DAGs of Pod tasks, real Postgres, real faults.

Each scenario runs a DAG of fifty Pod tasks (each a `sh` process under the fake
kubelet), injects one fault, and checks from the database and from the fake's
own records that nothing was lost or doubled:

- every task instance ends in the state its outcome dictates;
- no pod is created twice for one (task, try) (the fake's store sees every create);
- no attempt row is left open;
- no pod is left behind (failed pods are kept for 0 s here, so they go too).

The scheduler is the real one: in-process (`kube_helpers.kube_scheduler`), or a
real `miniflow scheduler` process where the fault is the scheduler's own death.
Everything talks over loopback; every process is killed and reaped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.errors import MiniflowError
from miniflow.scheduler import manual_runs
from miniflow.store import attempts as store_attempts
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import states
from miniflow.store import task_instances as store_tis
from miniflow.store.records import AttemptRecord, TaskInstanceRecord
from tests.dbs import PostgresDatabases
from tests.e2e.helpers import MINIFLOW, cli_env, write_dag
from tests.e2e.kube_helpers import (
    NAMESPACE,
    SECRET,
    FakeKube,
    KubeRun,
    PodAudit,
    kube_environ,
    kube_scheduler,
    kubelet_env,
    settle,
)

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

TASKS = 50
SETTINGS = {
    "MINIFLOW_POD_KEEP_FAILED_FOR": "0",  # so "no pod left behind" covers failed pods too
    "MINIFLOW_POD_PENDING_TIMEOUT": "1",
    "MINIFLOW_KILL_GRACE_PERIOD": "1",
    "MINIFLOW_PARALLELISM": "64",
}
TERMINAL = ("Succeeded", "Failed")


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


def fan_dag(folder: Path, dag_id: str, script: str, *, extra: str = "", **task: str) -> Path:
    """`TASKS` independent Pod tasks t00..t49 running `script` (`{i}` is the index)."""
    options = "".join(f", {k}={v}" for k, v in task.items())
    return write_dag(
        folder,
        f"{dag_id}.py",
        f"""
        from datetime import datetime, timedelta
        from miniflow import DAG, Pod

        def sh(task_id, script, **kw):
            return Pod(task_id, image="busybox:1.36", command=["sh", "-c", script], **kw)

        with DAG("{dag_id}", start_date=datetime(2026, 1, 1)):
            for i in range({TASKS}):
                sh(f"t{{i:02d}}", {script!r}.format(i=i){options})
        {extra}
        """,
    )


# --- reading the outcome ------------------------------------------------------------------


@dataclass
class Outcome:
    tis: dict[str, TaskInstanceRecord]
    attempts: list[AttemptRecord]

    def states(self) -> dict[str, str]:
        return {t: ti.state for t, ti in self.tis.items()}

    def of(self, task_id: str) -> list[AttemptRecord]:
        return sorted(
            (a for a in self.attempts if a.task_id == task_id), key=lambda a: a.try_number
        )


async def read_outcome(engine: AsyncEngine, dag_id: str, run_id: str) -> Outcome:
    async with store_engine.transaction(store_engine.sessionmaker(engine)) as session:
        tis = {t.task_id: t for t in await store_tis.list_for_run(session, dag_id, run_id)}
        attempts = await store_attempts.for_run(session, dag_id, run_id)
    return Outcome(tis, attempts)


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


async def check_invariants(fake: FakeKube, audit: PodAudit, outcome: Outcome) -> None:
    """What every scenario must leave: see the module docstring."""
    twice = {k: n for k, n in audit.by_task().items() if n > 1}
    assert not twice, f"pods created twice for one (task, try): {twice}"
    tries = [(a.task_id, a.try_number) for a in outcome.attempts]
    assert len(tries) == len(set(tries))
    still_open = [(a.task_id, a.try_number, a.state) for a in outcome.attempts if not a.ended_at]
    assert not still_open, f"attempts left open: {still_open}"
    for ti in outcome.tis.values():  # the task instance agrees with its last attempt
        last = outcome.of(ti.task_id)[-1]
        assert (last.try_number, last.state) == (ti.try_number, ti.state), (ti.task_id, last)
    await eventually(lambda: not fake.state.pods(), "every pod to be deleted", timeout=20)


async def run_in_process(
    kube: KubeRun, engine: AsyncEngine, dag_id: str, run_id: str
) -> tuple[str, Outcome]:
    state = await kube.scheduler.run_until_done(dag_id, run_id, timeout=90)
    await settle(kube)
    return state, await read_outcome(engine, dag_id, run_id)


def running_pod(event: Any) -> bool:
    return event.type == "MODIFIED" and (event.obj.get("status") or {}).get("phase") == "Running"


# --- a. the scheduler dies between a pod's exit and its recording ---------------------------


class SchedulerProcess:
    """A real `miniflow scheduler` in its own process group; killed and reaped by `stop`."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                MINIFLOW,
                "scheduler",
                env=self.env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        """SIGKILL the whole group (the parse forkserver too) and reap the scheduler."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()


@contextlib.asynccontextmanager
async def scheduler_process(env: dict[str, str], log: Path) -> AsyncIterator[SchedulerProcess]:
    proc = SchedulerProcess(env, log)
    try:
        await proc.start()
        yield proc
    finally:
        await proc.stop()


@contextlib.asynccontextmanager
async def task_instance_locked(engine: AsyncEngine) -> AsyncIterator[None]:
    """Hold a lock that blocks every write to task_instance (reads still work) until exit."""
    async with engine.connect() as conn:
        transaction = await conn.begin()
        try:
            await conn.execute(text("LOCK TABLE task_instance IN EXCLUSIVE MODE"))
            yield
        finally:
            await transaction.rollback()


async def trigger_when_parsed(engine: AsyncEngine, dag_id: str) -> str:
    sessions = store_engine.sessionmaker(engine)

    async def parsed() -> bool:
        async with store_engine.transaction(sessions) as session:
            try:
                await store_dags.get_dag(session, dag_id)
            except MiniflowError:
                return False
            return True

    deadline = time.monotonic() + 30
    while not await parsed():
        assert time.monotonic() < deadline, f"the scheduler never parsed {dag_id}"
        await asyncio.sleep(0.1)
    async with store_engine.transaction(sessions) as session:
        return await manual_runs.trigger(session, dag_id, conf_json=None, now=datetime.now(UTC))


async def run_finished(engine: AsyncEngine, dag_id: str, run_id: str, timeout: float) -> str:
    sessions = store_engine.sessionmaker(engine)
    deadline = time.monotonic() + timeout
    while True:
        async with store_engine.transaction(sessions) as session:
            run = await store_runs.get_run(session, dag_id, run_id)
            if run.state in states.RUN_FINISHED:
                return run.state
        assert time.monotonic() < deadline, f"run {dag_id}/{run_id} did not finish"
        await asyncio.sleep(0.2)


class EndedWhileLocked:
    """Pods whose container finished while the test held the task_instance lock."""

    def __init__(self, fake: FakeKube) -> None:
        self.armed = False
        self.names: list[str] = []
        fake.state.add_listener(self._on_event)

    def _on_event(self, event: Any) -> None:
        phase = (event.obj.get("status") or {}).get("phase")
        before = ((event.old or {}).get("status") or {}).get("phase")
        if self.armed and event.type == "MODIFIED" and phase in TERMINAL and before != phase:
            self.names.append(event.obj["metadata"]["name"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_scheduler_death_between_a_pod_exit_and_its_recording(
    fake_kube: FakeKube, pg_url: str, engine: AsyncEngine, tmp_path: Path, sig: int
) -> None:
    dags = tmp_path / "dags"
    fan_dag(dags, "fifty", "sleep 1; echo finished t{i:02d}")
    env = cli_env(pg_url, dags, tmp_path / "state")
    env.update(kube_environ(fake_kube, pg_url, dags, **SETTINGS))
    fake_kube.secrets[(NAMESPACE, SECRET)] = {"url": pg_url}  # checked at start-up
    audit = PodAudit(fake_kube)
    ended = EndedWhileLocked(fake_kube)
    first_running = audit.when(running_pod)
    log = tmp_path / "scheduler.log"

    async with scheduler_process(env, log) as scheduler:
        run_id = await trigger_when_parsed(engine, "fifty")
        await asyncio.wait_for(first_running, 60)
        async with task_instance_locked(engine):
            ended.armed = True
            # Every pod created ends, and the launcher reads its log tail: the exit event
            # is on the scheduler's queue, and its recording is blocked by the lock.
            await eventually(
                lambda: all_logs_read(fake_kube, audit), "every pod to end and have its log read"
            )
            assert ended.names, "no pod ended while the recording was blocked"
            scheduler.signal(sig)
            if sig == signal.SIGKILL:
                await scheduler.wait(10)
        # Released: a SIGTERMed scheduler finishes its round and stops; a SIGKILLed one
        # is gone. Either way each pod that ended meanwhile is still there, or recorded.
        await scheduler.wait(30)
        outcome = await read_outcome(engine, "fifty", run_id)
        recorded = {a.handle for a in outcome.attempts if a.ended_at is not None}
        vanished = [n for n in ended.names if fake_kube.state.get(n) is None]
        assert set(vanished) <= recorded, f"pods gone with their exit unrecorded: {vanished}"
        if sig == signal.SIGKILL:
            assert not vanished and not recorded & set(ended.names)

    async with scheduler_process(env, log):
        state = await run_finished(engine, "fifty", run_id, timeout=60)
        outcome = await closed_outcome(engine, "fifty", run_id)
        await check_invariants(fake_kube, audit, outcome)

    assert state == "success", outcome.states()
    assert set(outcome.states().values()) == {"success"}
    for name in ended.names:  # recorded success exactly once, from the pod that ran
        (attempt,) = [a for a in outcome.attempts if a.handle == name]
        assert (attempt.try_number, attempt.state, attempt.exit_code) == (1, "success", 0)
        assert f"finished {attempt.task_id}" in (attempt.log_tail or "")
    assert len(outcome.attempts) == TASKS


def all_logs_read(fake: FakeKube, audit: PodAudit) -> bool:
    """Every pod created so far has had its log tail read (so it ended)."""
    read = {r.name for r in fake.requests if r.verb == "log"}
    created = audit.creates_per_pod()
    return bool(created) and all(name in read for name in created)


async def closed_outcome(engine: AsyncEngine, dag_id: str, run_id: str) -> Outcome:
    """The outcome once every attempt row has been closed (a few rounds after the run ends)."""
    deadline = time.monotonic() + 30
    while True:
        outcome = await read_outcome(engine, dag_id, run_id)
        if all(a.ended_at for a in outcome.attempts) or time.monotonic() > deadline:
            return outcome
        await asyncio.sleep(0.1)


# --- b. running pods deleted behind the scheduler's back ------------------------------------


async def test_pods_deleted_behind_the_schedulers_back_are_retried(
    fake_kube: FakeKube, pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    fan_dag(dags, "fifty", "sleep 2", retries="1", retry_delay="timedelta(0)")
    audit = PodAudit(fake_kube)
    async with kube_scheduler(fake_kube, pg_url, dags, **SETTINGS) as kube:
        run_id = await kube.trigger("fifty")
        done = asyncio.create_task(run_in_process(kube, engine, "fifty", run_id))
        running = await eventually(lambda: running_first_tries(fake_kube, 10), "ten running pods")
        victims = sorted(running)[:10]
        for name in victims:
            await fake_kube.faults.delete_pod(name)
        state, outcome = await done
        await check_invariants(fake_kube, audit, outcome)

    assert state == "success" and set(outcome.states().values()) == {"success"}
    killed = {audit.manifests()[n]["metadata"]["annotations"]["miniflow/task-id"] for n in victims}
    for task_id in outcome.tis:
        attempts = outcome.of(task_id)
        if task_id in killed:
            first, second = attempts
            assert (first.state, first.reason, first.exit_code) == ("up_for_retry", "Deleted", None)
            assert (second.try_number, second.state) == (2, "success")
        else:
            assert [(a.try_number, a.state) for a in attempts] == [(1, "success")], task_id


def running_first_tries(fake: FakeKube, n: int) -> list[str] | None:
    names = [
        p["metadata"]["name"]
        for p in fake.state.pods()
        if p["status"].get("phase") == "Running"
        and p["metadata"]["labels"].get("miniflow/try-number") == "1"
    ]
    return names if len(names) >= n else None


# --- c. the API server misbehaves -----------------------------------------------------------


async def run_with_fault(
    fake: FakeKube,
    pg_url: str,
    engine: AsyncEngine,
    dags: Path,
    inject: Callable[[KubeRun], Any],
    *,
    before_trigger: Callable[[], None] | None = None,
) -> tuple[str, Outcome, PodAudit]:
    """Run `fifty`, call `inject` once its first pod runs, check the invariants.

    `before_trigger` runs once the scheduler has started (its start-up checks done)."""
    audit = PodAudit(fake)
    first_running = audit.when(running_pod)
    async with kube_scheduler(fake, pg_url, dags, **SETTINGS) as kube:
        if before_trigger is not None:
            before_trigger()
        run_id = await kube.trigger("fifty")
        done = asyncio.create_task(run_in_process(kube, engine, "fifty", run_id))
        await asyncio.wait_for(first_running, 60)
        injected = inject(kube)
        if asyncio.iscoroutine(injected):
            await injected
        state, outcome = await done
        await check_invariants(fake, audit, outcome)
    return state, outcome, audit


def all_succeeded_once(state: str, outcome: Outcome) -> None:
    unhappy = [
        (a.task_id, a.try_number, a.state, a.reason, a.message)
        for a in outcome.attempts
        if a.state != "success"
    ]
    assert state == "success", unhappy
    assert set(outcome.states().values()) == {"success"}
    assert len(outcome.tis) == TASKS


async def test_api_server_outage(
    fake_kube: FakeKube, pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    fan_dag(dags, "fifty", "sleep 1; echo t{i:02d}")

    async def outage(kube: KubeRun) -> None:
        await fake_kube.stop_serving()
        await asyncio.sleep(30)  # the outage itself: pods keep running and ending meanwhile
        await fake_kube.resume_serving()

    state, outcome, _ = await run_with_fault(fake_kube, pg_url, engine, dags, outage)
    all_succeeded_once(state, outcome)
    ran = [a for a in outcome.attempts if a.state == "success"]
    assert len(ran) == TASKS and all(a.log_tail for a in ran)  # tails read after the outage


async def test_410_storm(
    fake_kube: FakeKube, pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    fan_dag(dags, "fifty", "sleep 1")
    lists = 0

    def storm(kube: KubeRun) -> None:
        nonlocal lists
        lists = fake_kube.requests.counts("list")
        fake_kube.faults.expire_next_watch(20)  # every reconnect answered 410, twenty times
        fake_kube.faults.drop_watches()

    state, outcome, _ = await run_with_fault(fake_kube, pg_url, engine, dags, storm)
    all_succeeded_once(state, outcome)
    assert [a.try_number for a in outcome.attempts] == [1] * TASKS
    assert fake_kube.faults.expire_watches == 0
    assert fake_kube.requests.counts("list") >= lists + 20


async def test_500_and_429_bursts_on_create(
    fake_kube: FakeKube, pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    fan_dag(dags, "fifty", "sleep 0.5")

    def bursts() -> None:
        # Before the first create: refused, throttled, and carried out with the answer lost.
        fake_kube.faults.fail_next(10, code=500, verb="create")
        fake_kube.faults.fail_next(10, code=429, verb="create", retry_after=0)
        fake_kube.faults.fail_next(5, code=500, verb="create", after_write=True)

    state, outcome, audit = await run_with_fault(
        fake_kube, pg_url, engine, dags, lambda kube: None, before_trigger=bursts
    )
    all_succeeded_once(state, outcome)
    statuses = [r.status for r in fake_kube.requests.of("create")]
    assert statuses.count(500) == 15 and statuses.count(429) == 10
    assert statuses.count(409) >= 5  # the lost answers: retried, found created, adopted
    assert len(audit.added) == len({(a.task_id, a.try_number) for a in outcome.attempts})


async def test_malformed_watch_events(
    fake_kube: FakeKube, pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    fan_dag(dags, "fifty", "sleep 1")
    garbage = {"type": "MODIFIED", "object": {"metadata": {}, "status": {"phase": 5}}}

    def corrupt(kube: KubeRun) -> None:
        fake_kube.faults.corrupt_watch_events(3)  # truncated JSON
        fake_kube.faults.corrupt_watch_events(2, json.dumps(garbage).encode())
        fake_kube.faults.corrupt_watch_events(3)

    lists = fake_kube.requests.counts("list")
    state, outcome, _ = await run_with_fault(fake_kube, pg_url, engine, dags, corrupt)
    all_succeeded_once(state, outcome)
    assert [a.try_number for a in outcome.attempts] == [1] * TASKS
    assert not fake_kube.faults.corrupt_lines
    assert fake_kube.requests.counts("list") > lists + 1  # each loss led to a relist


# --- d. pods that never start ----------------------------------------------------------------


async def test_pods_that_never_start_fail_with_the_reason(
    fake_kube: FakeKube, pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    fan_dag(dags, "fifty", "echo t{i:02d}")
    stuck = {"t07": "ImagePullBackOff", "t21": "Unschedulable", "t42": "ContainerCreating"}
    fake_kube.faults.image_pull_backoff({"miniflow/task-id": "t07"}, "manifest unknown")
    fake_kube.faults.unschedulable({"miniflow/task-id": "t21"})
    fake_kube.faults.hold_waiting({"miniflow/task-id": "t42"}, "ContainerCreating")
    audit = PodAudit(fake_kube)
    async with kube_scheduler(fake_kube, pg_url, dags, **SETTINGS) as kube:
        run_id = await kube.trigger("fifty")
        state, outcome = await run_in_process(kube, engine, "fifty", run_id)
        await check_invariants(fake_kube, audit, outcome)

    assert state == "failed"
    for task_id, ti in outcome.tis.items():
        (attempt,) = outcome.of(task_id)
        if task_id in stuck:
            assert ti.state == "failed" and attempt.exit_code is None
            assert attempt.reason in (stuck[task_id], "ErrImagePull"), attempt.reason
            assert attempt.started_at is None  # it never ran
            assert "still pending after 1s" in (attempt.message or "")
        else:
            assert (ti.state, attempt.exit_code) == ("success", 0), task_id
    message = outcome.of("t07")[0].message or ""
    assert "manifest unknown" in message
