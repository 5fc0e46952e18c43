"""`miniflow tasks logs`: read-only, from any process, for every kind of try.

- On Kubernetes a read is one log request for the try's pod (one stream with
  `--follow`): no watch, no relist, no delete, nothing done to other pods.
- Under the local launcher, `--follow` from another terminal keeps reading the
  log file until the try ends.
- A try that never started shows its recorded reason.
"""

from __future__ import annotations

import asyncio
import selectors
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from miniflow.cli import logs
from miniflow.store import task_instances as store_tis
from tests.dbs import PostgresDatabases
from tests.e2e.conftest import Cli
from tests.e2e.helpers import (
    MINIFLOW,
    kill_group,
    query_sync,
    spawn_cli,
    stop,
    wait_for,
    write_dag,
)
from tests.e2e.kube_helpers import (
    FakeKube,
    kube_scheduler,
    kubelet_env,
    settle,
)

WAITING = """
    from datetime import datetime
    from miniflow import DAG, Bash, Pod

    with DAG("{dag_id}", start_date=datetime(2026, 1, 1)):
        {kind}("quick", {quick})
        {kind}("slow", {slow})
"""


def waiting_dag(folder: Path, dag_id: str, go: Path, *, pods: bool) -> None:
    """`quick` ends at once; `slow` prints a line, waits for the file `go`, prints another."""
    script = f"echo slow started; while [ ! -f {go} ]; do sleep 0.05; done; echo slow done"
    if pods:
        quick = 'image="busybox:1.36", command=["sh", "-c", "echo quick"]'
        slow = f'image="busybox:1.36", command=["sh", "-c", {script!r}]'
    else:
        quick, slow = '"echo quick"', repr(script)
    source = WAITING.format(dag_id=dag_id, kind="Pod" if pods else "Bash", quick=quick, slow=slow)
    write_dag(folder, f"{dag_id}.py", source)


# --- Kubernetes -------------------------------------------------------------------------------


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"base_env": kubelet_env()}


@pytest.mark.postgres
async def test_kubernetes_logs_are_one_read_and_change_nothing(
    fake_kube: FakeKube, postgres_dbs: PostgresDatabases, tmp_path: Path
) -> None:
    pg_url = await postgres_dbs.clone()
    dags, go = tmp_path / "dags", tmp_path / "go"
    waiting_dag(dags, "waiting", go, pods=True)
    # Finished pods are kept, as after failures under the default policy: a launcher
    # started for reading would read their logs and clean them up.
    async with kube_scheduler(fake_kube, pg_url, dags, MINIFLOW_POD_CLEANUP="never") as kube:
        run_id = await kube.trigger("waiting")
        async with asyncio.timeout(30):  # until both tries' events are recorded
            while True:
                tis = await kube.tis("waiting", run_id)
                if (tis["slow"].state, tis["quick"].state) == ("running", "success"):
                    break
                if not (await kube.scheduler.tick()).busy:
                    await kube.scheduler._wait(0.2)
        attempts = {a.task_id: a for a in await kube.attempts("waiting", run_id)}
        config = kube.config
    assert attempts["quick"].ended_at is not None and attempts["slow"].ended_at is None
    assert len(fake_kube.state.pods()) == 2  # both pods still there, the quick one ended

    fake_kube.requests.clear()
    lines = [line async for line in logs.read(config, "waiting", run_id, "slow", None, False)]
    assert lines == ["slow started"]
    (read,) = fake_kube.requests
    assert (read.verb, read.name, read.status) == ("log", attempts["slow"].handle, 200)

    fake_kube.requests.clear()
    lines = [line async for line in logs.read(config, "waiting", "latest", "quick", None, False)]
    assert lines == ["quick"]
    assert [(r.verb, r.status) for r in fake_kube.requests] == [("log", 200)]

    # --follow: one stream, open until the container ends.
    fake_kube.requests.clear()
    followed: list[str] = []
    first_line = asyncio.Event()

    async def follow() -> None:
        async for line in logs.read(config, "waiting", run_id, "slow", None, True):
            followed.append(line)
            first_line.set()

    reader = asyncio.create_task(follow())
    await asyncio.wait_for(first_line.wait(), 30)
    assert followed == ["slow started"]
    go.touch()
    await asyncio.wait_for(reader, 30)
    assert followed == ["slow started", "slow done"]
    (stream,) = fake_kube.requests
    assert stream.verb == "log" and stream.query.get("follow", "").lower() == "true"
    assert len(fake_kube.state.pods()) == 2  # nothing deleted


@pytest.mark.postgres
async def test_kubernetes_logs_of_a_deleted_pod_come_from_the_saved_tail(
    fake_kube: FakeKube, postgres_dbs: PostgresDatabases, tmp_path: Path
) -> None:
    pg_url = await postgres_dbs.clone()
    dags, go = tmp_path / "dags", tmp_path / "go"
    go.touch()  # nothing waits
    waiting_dag(dags, "done", go, pods=True)
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        run_id, state = await kube.run("done")
        await settle(kube)  # the exits recorded: tails saved, pods deleted
        config = kube.config
    assert state == "success" and fake_kube.state.pods() == []
    fake_kube.requests.clear()
    lines = [line async for line in logs.read(config, "done", run_id, "slow", None, False)]
    assert lines == ["slow started", "slow done"]
    assert [(r.verb, r.status) for r in fake_kube.requests] == [("log", 404)]


# --- local processes --------------------------------------------------------------------------


def _read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    """Read the process's stdout until `needle` appears or it closes; never blocks forever."""
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while needle not in out:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"timed out waiting for {needle!r}; got {out!r}")
            chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                break
            out += chunk
    return out


def test_local_follow_from_another_terminal_lasts_until_the_try_ends(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    cli, go = sqlite_cli, tmp_path / "go"
    waiting_dag(cli.dags, "waiting", go, pods=False)
    cli("dags", "pause", "waiting")
    scheduler = spawn_cli(["scheduler"], cli.env, tmp_path / "scheduler.log")
    follower: subprocess.Popen[bytes] | None = None
    try:
        cli("dags", "trigger", "waiting")

        def slow_running() -> bool:
            tis = query_sync(cli.db_url, store_tis.list_for_run, "waiting", _latest(cli))
            return any(t.task_id == "slow" and t.state == "running" for t in tis)

        wait_for(slow_running, 60, "the slow task to run", interval=0.2)
        follower = subprocess.Popen(
            [MINIFLOW, "tasks", "logs", "waiting", "slow", "--follow"],
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert _read_until(follower, b"slow started\n", 30) == b"slow started\n"
        go.touch()
        assert _read_until(follower, b"slow done\n", 30) == b"slow done\n"
        assert follower.wait(30) == 0
        assert stop(scheduler, signal.SIGTERM) == 0
    finally:
        for proc in (follower, scheduler):
            if proc is not None:
                kill_group(proc)
                proc.wait(5)
        if follower is not None:
            follower.communicate()  # closes its pipes


def _latest(cli: Cli) -> str:
    listed = cli("runs", "list", "waiting").stdout
    return next(w for line in listed.splitlines() for w in line.split() if "__" in w)


TEMPLATE_ERROR = """
    from datetime import datetime
    from miniflow import DAG, Bash

    with DAG("typo", start_date=datetime(2026, 1, 1)):
        Bash("oops", "echo {{ no_such_variable }}")
"""


def test_logs_of_a_try_that_never_started_show_its_reason(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli.dag("typo.py", TEMPLATE_ERROR)
    cli("dags", "test", "typo", expect=1)
    shown = cli("tasks", "logs", "typo", "oops")
    assert "try 1 never started, so it has no log" in shown.stdout
    assert "no_such_variable" in shown.stdout
    assert "404" not in shown.stdout + shown.stderr
