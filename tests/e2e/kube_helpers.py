"""Helpers for end-to-end tests on the fake Kubernetes cluster (tests/fakekube).

`kube_scheduler` builds the real in-process `Scheduler` with the real
`KubernetesLauncher` from a `Config` (exactly as the daemon does, through
`wiring.make_launcher`), pointed at the fake API server's kubeconfig. Worker
pods run `miniflow-worker` on this host: the fake kubelet's PATH gets the
venv's bin directory and the database URL is served from the fake's Secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from miniflow.cli import wiring
from miniflow.config import Config, load_config
from miniflow.launchers.kubernetes import KubernetesLauncher
from miniflow.scheduler.core import Scheduler, SchedulerSettings
from miniflow.store import engine as store_engine
from tests.e2e.helpers import SchedulerHandle

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "dags"
VENV_BIN = str(Path(sys.executable).parent)
NAMESPACE = "default"
SECRET = "miniflow-database"
RUN_TIMEOUT = 60

FakeKube = Any  # tests.fakekube.FakeKube


def kubelet_env() -> dict[str, str]:
    """The fake kubelet's base environment: PATH with the venv first (miniflow-worker)."""
    return {"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def kube_environ(fake: FakeKube, db_url: str, dags_folder: Path, **extra: str) -> dict[str, str]:
    """`MINIFLOW_*` settings of a scheduler on the fake cluster."""
    env = {
        "MINIFLOW_LAUNCHER": "kubernetes",
        "MINIFLOW_KUBECONFIG": str(fake.kubeconfig_path),
        "MINIFLOW_NAMESPACE": NAMESPACE,
        "MINIFLOW_DATABASE_URL": db_url,
        "MINIFLOW_DAGS_FOLDER": str(dags_folder),
        "MINIFLOW_POD_DAGS_FOLDER": str(dags_folder),
        "MINIFLOW_POD_PENDING_TIMEOUT": "2",
    }
    env.update(extra)
    return env


def kube_config(fake: FakeKube, db_url: str, dags_folder: Path, **extra: str) -> Config:
    return load_config(environ=kube_environ(fake, db_url, dags_folder, **extra))


class KubeRun(SchedulerHandle):
    """An in-process scheduler + KubernetesLauncher on the fake cluster."""

    def __init__(self, scheduler: Scheduler, config: Config, fake: FakeKube) -> None:
        super().__init__(scheduler)
        self.config = config
        self.fake = fake

    @property
    def launcher(self) -> KubernetesLauncher:
        launcher = self.scheduler.launcher
        assert isinstance(launcher, KubernetesLauncher)
        return launcher


@contextlib.asynccontextmanager
async def kube_scheduler(
    fake: FakeKube,
    db_url: str,
    dags_folder: Path,
    *,
    claim_turn: float | None = None,
    **extra: str,
) -> AsyncIterator[KubeRun]:
    """Scheduler + launcher built from config; closed (watch stopped) on exit."""
    fake.secrets[(NAMESPACE, SECRET)] = {"url": db_url}
    config = kube_config(fake, db_url, dags_folder, **extra)
    engine = store_engine.create_engine(db_url)
    launcher = wiring.make_launcher(config)
    scheduler = Scheduler(
        engine=engine,
        launcher=launcher,
        dags_folder=dags_folder,
        settings=SchedulerSettings(
            parallelism=config.parallelism if "MINIFLOW_PARALLELISM" in extra else 64,
            instance_heartbeat=config.scheduler_heartbeat,
            instance_timeout=config.scheduler_timeout,
            schedule_runs=False,
            idle_wait=0.05,
            run_check_interval=0.05,
            full_sweep_interval=0.2,
            **({} if claim_turn is None else {"claim_turn": claim_turn}),
        ),
    )
    try:
        await scheduler.start()
        await scheduler.tick()  # parse the DAGs folder
        yield KubeRun(scheduler, config, fake)
    finally:
        await scheduler.close()
        await engine.dispose()


def running(task_id: str, try_number: int = 1) -> Callable[[Any], bool]:
    """Store-event predicate: the pod of `task_id`/`try_number` is Running."""

    def check(event: Any) -> bool:
        meta = event.obj["metadata"]
        ann = meta.get("annotations") or {}
        return (
            event.type == "MODIFIED"
            and ann.get("miniflow/task-id") == task_id
            and ann.get("miniflow/try-number") == str(try_number)
            and (event.obj.get("status") or {}).get("phase") == "Running"
        )

    return check


async def settle(kube: KubeRun, timeout: float = 30) -> None:
    """Tick until every launched try's exit has been recorded (attempts closed).

    A worker task records its own success, so its run can finish before the
    pod's exit event arrives; tests that inspect attempts wait for those too.
    """
    scheduler = kube.scheduler
    async with asyncio.timeout(timeout):
        while scheduler.inflight:
            stats = await scheduler.tick()
            if not stats.busy:
                await scheduler._wait(1.0)


# --- request log ------------------------------------------------------------------------------


def ok(record: Any) -> bool:
    return 200 <= int(record.status) < 300


class PodAudit:
    """Every pod the fake cluster ever stored (a store listener: one ADDED per create)."""

    def __init__(self, fake: FakeKube) -> None:
        self.added: list[dict[str, Any]] = []
        self._waiters: list[tuple[Callable[[Any], bool], asyncio.Future[dict[str, Any]]]] = []
        fake.state.add_listener(self._on_event)

    def _on_event(self, event: Any) -> None:
        if event.type == "ADDED":
            self.added.append(event.obj)
        for waiter in list(self._waiters):
            predicate, future = waiter
            if not future.done() and predicate(event):
                future.set_result(event.obj)
                self._waiters.remove(waiter)

    def when(self, predicate: Callable[[Any], bool]) -> asyncio.Future[dict[str, Any]]:
        """A future resolved with the pod of the first store event matching `predicate`."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        return future

    def creates_per_pod(self) -> Counter[str]:
        """Pods created, per name (a name counted twice = a duplicate pod)."""
        return Counter(p["metadata"]["name"] for p in self.added)

    def manifests(self) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.added}

    def by_task(self) -> Counter[tuple[str, str, str, str]]:
        """Pods created per (dag, run, task, try) from their annotations."""
        out: Counter[tuple[str, str, str, str]] = Counter()
        for p in self.added:
            a = p["metadata"].get("annotations") or {}
            out[
                (
                    a.get("miniflow/dag-id", ""),
                    a.get("miniflow/run-id", ""),
                    a.get("miniflow/task-id", ""),
                    a.get("miniflow/try-number", ""),
                )
            ] += 1
        return out


def per_pod_requests(fake: FakeKube) -> Counter[str]:
    """Requests naming one pod (create, get, log, delete...), per pod name."""
    names: Counter[str] = Counter()
    for r in fake.requests:
        if r.verb in ("create", "get", "log", "delete", "patch", "update"):
            names[str(r.name)] += 1
    return names
