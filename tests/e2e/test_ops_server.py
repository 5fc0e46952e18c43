"""The scheduler's ops HTTP server, asked over real HTTP: a real `miniflow scheduler`
process on Postgres, and an in-process scheduler for the moment before it registers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from miniflow.cli import operations, wiring
from miniflow.config import load_config
from miniflow.launchers import pods
from miniflow.launchers.base import AliveAttempt
from miniflow.launchers.kube_client import RetryPolicy
from miniflow.launchers.kubernetes import KubernetesLauncher
from miniflow.scheduler import liveness
from miniflow.scheduler.core import Scheduler, SchedulerSettings
from miniflow.scheduler.ops_server import OpsServer
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from tests.dbs import PG_ADMIN_DSN, PostgresDatabases
from tests.e2e.helpers import (
    MINIFLOW,
    cli_env,
    kill_group,
    query,
    spawn_cli,
    stop,
    until,
    write_dag,
)

DAG = """
    from datetime import datetime
    from miniflow import DAG, Bash

    with DAG("ops", start_date=datetime(2026, 1, 1)):
        Bash("good", "true") >> Bash("bad", "exit 3")
        Bash("broken", "echo {{ no_such_variable.field }}")  # never launched
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def get(base: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(base + path) as response:
        return response.status, await response.text()


async def answers(base: str, path: str, status: int) -> bool:
    try:
        return (await get(base, path))[0] == status
    except aiohttp.ClientConnectionError:
        return False  # not listening yet


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) → value, parsed by prometheus-client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def set_connections(db_url: str, allowed: bool) -> None:
    """Open or shut the database to new connections; shutting ends the open ones."""
    name = db_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
    finally:
        await conn.close()


async def test_health_readiness_and_metrics_of_a_running_scheduler(
    postgres_dbs: PostgresDatabases, tmp_path: Path
) -> None:
    db_url = await postgres_dbs.clone()
    dags, state = tmp_path / "dags", tmp_path / "state"
    write_dag(dags, "ops.py", DAG)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = cli_env(
        db_url,
        dags,
        state,
        MINIFLOW_LAUNCHER="local",
        MINIFLOW_HTTP_PORT=str(port),
        MINIFLOW_HTTP_HOST="127.0.0.1",
        MINIFLOW_LOG_FORMAT="",  # unset: stderr is a file, so JSON by default
    )
    run_id = await operations.trigger(load_config(environ=env), "ops", conf_json=None)
    log = tmp_path / "scheduler.log"
    proc = spawn_cli(["scheduler"], env, log)
    try:
        await until(lambda: answers(base, "/healthz", 200), 30, "/healthz to answer 200")
        await until(lambda: answers(base, "/readyz", 200), 30, "/readyz to answer 200")

        async def finished() -> bool:
            run = await query(db_url, store_runs.get_run, "ops", run_id)
            return run.state in ("success", "failed")

        await until(finished, 60, "the run to finish")

        async def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            status, text = await get(base, "/metrics")
            assert status == 200
            found = samples(text)
            done = ("miniflow_task_instances_finished_total", (("state", "failed"),))
            return found if found.get(done) == 2.0 else {}

        found = await until(counted, 30, "the failed tasks to be counted")
        assert found[("miniflow_task_instances_finished_total", (("state", "success"),))] == 1.0
        assert found[("miniflow_attempts_launched_total", (("launcher", "local"),))] == 2.0
        assert found[("miniflow_attempt_exits_total", (("reason", "Completed"),))] == 1.0
        assert found[("miniflow_attempt_exits_total", (("reason", "Error"),))] == 1.0
        assert found[("miniflow_attempt_exits_total", (("reason", "LaunchFailed"),))] == 1.0
        assert found[("miniflow_scheduler_instances_live", ())] == 1.0
        assert found[("miniflow_scheduler_sanity_lock_held", ())] == 1.0  # the only one: leader
        assert found[("miniflow_tries_in_flight", ())] == 0.0
        assert found[("miniflow_scheduler_round_duration_seconds_count", (("loop", "tick"),))] > 0
        assert found[("miniflow_sanity_findings_total", (("kind", "zombie"),))] == 0.0
        # The state gauges count the database: the three tasks of the one run.
        assert found[("miniflow_task_instances", (("state", "failed"),))] == 2.0
        assert found[("miniflow_task_instances", (("state", "success"),))] == 1.0
        assert found[("miniflow_task_instances", (("state", "running"),))] == 0.0
        assert found[("miniflow_runs", (("state", "failed"),))] == 1.0
        # Statement latency by kind, never by SQL text.
        kinds = {
            dict(labels)["kind"]
            for name, labels in found
            if name == "miniflow_db_statement_duration_seconds_count"
        }
        assert {"select", "update", "insert"} <= kinds <= {
            "select",
            "insert",
            "update",
            "delete",
            "other",
        }
        assert found[("miniflow_db_statement_duration_seconds_count", (("kind", "update"),))] > 0
        assert ("miniflow_kube_relists_total", ()) in found  # 0 under the local launcher
        assert not [name for name, _ in found if name.endswith("_created")]

        # The database goes away: not ready (and still alive); back: ready again.
        await set_connections(db_url, allowed=False)
        try:
            await until(lambda: answers(base, "/readyz", 503), 15, "/readyz to answer 503")
            status, text = await get(base, "/readyz")
            assert status == 503 and text.startswith("database unreachable"), text
            assert (await get(base, "/healthz"))[0] == 200

            async def round_failed() -> bool:
                return "round failed" in log.read_text()

            await until(round_failed, 15, "a failed round to be logged")
        finally:
            await set_connections(db_url, allowed=True)
        await until(lambda: answers(base, "/readyz", 200), 30, "/readyz to recover")
        assert stop(proc, signal.SIGTERM) == 0
    finally:
        kill_group(proc)
        proc.wait(5)
    # No MINIFLOW_LOG_FORMAT and stderr not a terminal: every line is one JSON object.
    lines = log.read_text().splitlines()
    assert lines
    records = [json.loads(line) for line in lines]
    assert all({"timestamp", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["message"].startswith("ops server on http://127.0.0.1") for r in records)
    assert any(r["level"] == "ERROR" and "round failed" in r["message"] for r in records)
    # Lines about a try carry its ids as fields of their own.
    exits = [r for r in records if " exited: code=" in r["message"]]
    assert {(r["dag_id"], r["run_id"], r["task_id"], r["try"]) for r in exits} == {
        ("ops", run_id, "good", 1),
        ("ops", run_id, "bad", 1),
    }
    finished = [r for r in records if r["message"].startswith(f"run ops/{run_id} finished")]
    assert [(r["dag_id"], r["run_id"]) for r in finished] == [("ops", run_id)]


@contextlib.asynccontextmanager
async def in_process(
    db_url: str, tmp_path: Path, port: int, launcher: Any = None
) -> AsyncIterator[Scheduler]:
    config = load_config(environ={}, database_url=db_url, state_dir=tmp_path / "state")
    engine = store_engine.create_engine(db_url)
    scheduler = Scheduler(
        engine=engine,
        launcher=launcher or wiring.make_launcher(config),
        dags_folder=None,
        settings=SchedulerSettings(instance_heartbeat=1.0, instance_timeout=15.0),
    )
    server = OpsServer(scheduler, host="127.0.0.1", port=port)
    await server.start()
    try:
        yield scheduler
    finally:
        await server.close()
        await engine.dispose()


async def test_not_ready_before_registration_nor_after_the_goodbye(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with in_process(db_url, tmp_path, port) as scheduler:
        assert await get(base, "/readyz") == (503, "not registered yet\n")
        assert await get(base, "/healthz") == (200, "ok\n")
        await scheduler.start()
        assert await get(base, "/readyz") == (200, "ready\n")
        await scheduler.close()  # the goodbye ends the instance's row
        assert await get(base, "/readyz") == (503, "heartbeat stale or instance ended\n")


def test_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = cli_env(
            f"sqlite+aiosqlite:///{tmp_path / 'state' / 'miniflow.db'}",
            tmp_path / "dags",
            tmp_path / "state",
            MINIFLOW_HTTP_PORT=str(port),
            MINIFLOW_HTTP_HOST="127.0.0.1",
        )
        (tmp_path / "dags").mkdir()
        result = subprocess.run(
            [MINIFLOW, "scheduler"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"MINIFLOW_HTTP_PORT: cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("port", ["0", ""])
def test_no_server_unless_a_port_is_set(port: str) -> None:
    assert load_config({"MINIFLOW_HTTP_PORT": port}).http_port == 0


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_healthz_names_the_loop_that_stopped_making_progress(
    db_url: str, tmp_path: Path
) -> None:
    """A sanity round that hangs (the launcher never answers `alive()`): the ops server
    still answers, and says which loop is stuck; once the round ends, healthy again."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with in_process(db_url, tmp_path, port) as scheduler:
        clock = FakeMonotonic()
        scheduler.liveness = liveness.Liveness(stall_after=10.0, clock=clock)
        entered, release = asyncio.Event(), asyncio.Event()
        seen = scheduler.launcher.alive

        async def hanging_alive(*, fresh: bool = True) -> list[AliveAttempt]:
            entered.set()
            await release.wait()
            return await seen(fresh=fresh)

        scheduler.launcher.alive = hanging_alive  # the fault: a view that never comes
        await scheduler.start()
        loop = asyncio.create_task(scheduler.run_forever())
        try:
            await asyncio.wait_for(entered.wait(), 30)
            assert await get(base, "/healthz") == (200, "ok\n")  # not stale yet
            clock.now += 5.0 + 10.0 + 1  # past the sanity interval and the stall limit
            status, text = await get(base, "/healthz")
            assert status == 503
            assert text.startswith("stale: sanity: no progress for 16s (due every 5s)"), text
            clock.now += 30.0  # and past the round's own period: the round, in sanity
            status, text = await get(base, "/healthz")
            assert "scheduling round: no progress for 46s (due every 30s, in sanity)" in text
            assert "instance heartbeat: no progress" in text
            release.set()

            async def healthy() -> bool:
                return (await get(base, "/healthz")) == (200, "ok\n")

            await until(healthy, 30, "the round to complete and /healthz to recover")
        finally:
            scheduler.stop()
            await loop
            await scheduler.close()


def counter(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def test_ready_only_once_the_kubernetes_watch_listed_and_its_counts(
    db_url: str, tmp_path: Path, fake_kube: Any
) -> None:
    """Registered but the pod list refused (403): not ready, the refusals counted by code;
    the list allowed: ready; a dropped watch: a restart and a relist counted."""
    defaults = pods.PodDefaults(
        namespace="default", worker_image="miniflow:test", database_secret_name="miniflow-db"
    )
    fake_kube.secrets[("default", "miniflow-db")] = {"url": "postgresql://x@db/x"}
    fake_kube.faults.forbid("list", "default")
    launcher = KubernetesLauncher(
        defaults=defaults,
        kubeconfig=str(fake_kube.kubeconfig_path),
        retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05),
        start_timeout=60.0,
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with in_process(db_url, tmp_path, port, launcher) as scheduler:
        _, before = await get(base, "/metrics")
        starting = asyncio.create_task(scheduler.start())
        try:

            async def waiting_for_the_list() -> bool:
                return await get(base, "/readyz") == (503, "starting: launcher not synced yet\n")

            async def refusal_counted() -> bool:
                # The counter is the process's: compare with its value before this start.
                _, text = await get(base, "/metrics")
                refused = counter(text, "miniflow_kube_api_errors_total", code="403")
                return refused > counter(before, "miniflow_kube_api_errors_total", code="403")

            await until(waiting_for_the_list, 30, "/readyz to wait for the watch's list")
            await until(refusal_counted, 30, "the refused list to be counted by its code")
            assert await get(base, "/readyz") == (503, "starting: launcher not synced yet\n")
            fake_kube.faults.allow("list", "default")
            await asyncio.wait_for(starting, 60)
            assert await get(base, "/readyz") == (200, "ready\n")
            assert await get(base, "/healthz") == (200, "ok\n")
            assert "kube watch default" in launcher.loop_progress()
            _, synced = await get(base, "/metrics")
            relists = counter(synced, "miniflow_kube_relists_total")
            restarts = counter(synced, "miniflow_kube_watch_restarts_total")
            assert relists > counter(before, "miniflow_kube_relists_total")

            assert fake_kube.faults.drop_watches() >= 1

            async def relisted() -> bool:
                _, text = await get(base, "/metrics")
                return (
                    counter(text, "miniflow_kube_watch_restarts_total") > restarts
                    and counter(text, "miniflow_kube_relists_total") > relists
                )

            await until(relisted, 30, "the dropped watch to be restarted and relisted")
        finally:
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(BaseException):
                    await starting
            await scheduler.close()
