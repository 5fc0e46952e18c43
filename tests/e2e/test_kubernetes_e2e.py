"""End to end on the fake Kubernetes cluster: the real scheduler (in-process), the real
KubernetesLauncher built from config, real Postgres, worker pods running `miniflow-worker`.

Nothing in miniflow knows the cluster is fake: the launcher talks HTTP to
tests/fakekube, whose kubelet runs each pod's command as a local process and
whose request log lets us count what the scheduler asked of the API server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from miniflow.cli import logs
from miniflow.scheduler.parse_loop import DagParser
from miniflow.store import engine as store_engine
from tests.dbs import PostgresDatabases
from tests.e2e.helpers import MINIFLOW, write_dag
from tests.e2e.kube_helpers import (
    EXAMPLES,
    NAMESPACE,
    SECRET,
    FakeKube,
    PodAudit,
    kube_environ,
    kube_scheduler,
    kubelet_env,
    running,
    settle,
)

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"base_env": kubelet_env()}


@pytest.fixture
async def pg_url(postgres_dbs: PostgresDatabases) -> str:
    return await postgres_dbs.clone()


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    folder = tmp_path / "dags"
    shutil.copytree(EXAMPLES, folder)
    return folder


def pod_dag(folder: Path, dag_id: str, body: str) -> Path:
    """A DAG file of Pod tasks (`sh` runs on this host under the fake kubelet)."""
    return write_dag(
        folder,
        f"{dag_id}.py",
        f"""
        from datetime import datetime, timedelta
        from miniflow import DAG, Pod

        def sh(task_id, script, **kw):
            return Pod(task_id, image="busybox:1.36", command=["sh", "-c", script], **kw)

        with DAG("{dag_id}", start_date=datetime(2026, 1, 1)):
        {body}
        """,
    )


# --- 1. the example DAGs ----------------------------------------------------------------------


async def test_example_dags_run_on_the_cluster(
    fake_kube: FakeKube, pg_url: str, examples: Path
) -> None:
    audit = PodAudit(fake_kube)
    async with kube_scheduler(fake_kube, pg_url, examples) as kube:
        runs = {
            d: await kube.trigger(d) for d in ("example_etl", "example_fanout", "example_retries")
        }
        for dag_id, run_id in runs.items():
            state = await kube.scheduler.run_until_done(dag_id, run_id, timeout=60)
            tis = await kube.tis(dag_id, run_id)
            assert state == "success", (dag_id, {t: (i.state, i.error) for t, i in tis.items()})
        await settle(kube)
        attempts = [a for d, r in runs.items() for a in await kube.attempts(d, r)]
    # The scheduler is closed: its background deletes are done.

    manifests = audit.manifests()
    # One pod per attempt, named by the attempt, never created twice; nothing else created.
    assert set(audit.creates_per_pod().values()) == {1}
    assert sorted(a.handle for a in attempts) == sorted(manifests)
    assert len(attempts) == 3 + 4 + 12 + 1  # etl, retries (flaky x3 + cleanup), fanout

    by_task = {(a.dag_id, a.task_id, a.try_number): a for a in attempts}
    for a in attempts:
        command = manifests[a.handle]["spec"]["containers"][0]["command"]
        if (a.dag_id, a.task_id) == ("example_etl", "load"):
            # The Pod task runs the user's image and command directly: no wrapper pod.
            assert manifests[a.handle]["spec"]["containers"][0]["image"] == "busybox:1.36"
            assert command[:2] == ["sh", "-c"]
            assert a.log_tail is not None and "loading 100 rows" in a.log_tail
        else:
            assert command[:2] == ["miniflow-worker", "run"]
            assert command[command.index("--try") + 1] == str(a.try_number)
            env = {e["name"]: e for e in manifests[a.handle]["spec"]["containers"][0]["env"]}
            assert env["MINIFLOW_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
                "name": SECRET,
                "key": "url",
            }
        assert a.ended_at is not None
    assert sum(1 for a in attempts if a.task_id == "load") == 1

    # Exit codes and reasons from the container status, on every attempt.
    for (_dag_id, task_id, try_number), a in by_task.items():
        if task_id == "flaky" and try_number < 3:
            assert (a.exit_code, a.reason) == (1, "Error"), a
            # The worker records up_for_retry itself; when the retry is claimed before the
            # pod's exit event is recorded, the superseded attempt is judged by its exit
            # code (miniflow/scheduler/events.py, _record_exits): failed.
            assert a.state in ("up_for_retry", "failed"), a.state
        else:
            assert (a.state, a.exit_code, a.reason) == ("success", 0, "Completed"), a

    # Request budget: create + log read + delete per successful attempt, create + log read
    # per failed one (failed pods are kept for inspection); status only from one watch.
    # Once at start-up: the namespace check's dry-run create and its GET of the Secret.
    counts = fake_kube.requests.counts()
    succeeded = sum(1 for a in attempts if a.state == "success")
    (dry_run,) = [r for r in fake_kube.requests.of("create") if r.dry_run]
    assert (dry_run.namespace, dry_run.status) == (NAMESPACE, 201)
    (secret,) = fake_kube.requests.of("get")
    assert (secret.resource, secret.name) == ("secrets", SECRET)
    assert counts["create"] == len(attempts) + 1
    assert counts["log"] == len(attempts)
    assert counts["delete"] == succeeded
    assert counts["get"] == 1 and counts["patch"] == 0 and counts["update"] == 0
    # Lists: the watch's, and one at start-up for pods launched before owners existed.
    assert counts["list"] == 2 and counts["watch"] == 1
    owner_less = [r for r in fake_kube.requests.of("list") if "!miniflow/owner" in str(r.query)]
    assert len(owner_less) == 1
    per_task = (counts["create"] - 1 + counts["log"] + counts["delete"]) / len(attempts)
    assert per_task <= 3
    assert {r.namespace for r in fake_kube.requests} == {NAMESPACE}


# --- 2. exit codes and reasons ----------------------------------------------------------------


async def test_exit_codes_oom_retry_timeout_and_image_pull(
    fake_kube: FakeKube, pg_url: str, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    pod_dag(
        dags,
        "reasons",
        """
            sh("exit3", "echo failing; exit 3")
            sh("oom", "test {{ try_number }} -ge 2 || sleep 30", retries=1,
               retry_delay=timedelta(seconds=0))
            sh("slow", "sleep 30", timeout=timedelta(seconds=1))
            Pod("nopull", image="registry.invalid/never:1", command=["true"])
    """,
    )
    fake_kube.faults.image_pull_backoff(match={"miniflow/task-id": "nopull"})
    audit = PodAudit(fake_kube)
    oom_running = audit.when(running("oom", 1))
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        run_id = await kube.trigger("reasons")
        done = asyncio.create_task(kube.scheduler.run_until_done("reasons", run_id, timeout=60))
        pod = await asyncio.wait_for(oom_running, 30)
        killed = await fake_kube.faults.oom_kill(pod["metadata"]["name"])
        terminated = killed["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["reason"] == "OOMKilled"
        state = await done
        await settle(kube)
        tis = await kube.tis("reasons", run_id)
        attempts = {(a.task_id, a.try_number): a for a in await kube.attempts("reasons", run_id)}

    assert state == "failed"
    assert {t: ti.state for t, ti in tis.items()} == {
        "exit3": "failed",
        "oom": "success",
        "slow": "failed",
        "nopull": "failed",
    }

    exit3 = attempts[("exit3", 1)]
    assert (exit3.state, exit3.exit_code, exit3.reason) == ("failed", 3, "Error")
    assert "failing" in (exit3.log_tail or "")
    assert tis["exit3"].exit_code == 3

    oom1, oom2 = attempts[("oom", 1)], attempts[("oom", 2)]
    assert (oom1.state, oom1.exit_code, oom1.reason) == ("up_for_retry", 137, "OOMKilled")
    assert (oom2.state, oom2.exit_code, oom2.reason) == ("success", 0, "Completed")
    assert oom1.handle != oom2.handle  # a new pod per try

    slow = attempts[("slow", 1)]
    assert slow.state == "failed" and slow.reason == "DeadlineExceeded", slow
    assert slow.exit_code is not None and slow.exit_code != 0
    manifest = audit.manifests()[slow.handle]
    assert manifest["spec"]["activeDeadlineSeconds"] == 1

    nopull = attempts[("nopull", 1)]
    assert nopull.state == "failed" and nopull.exit_code is None, nopull
    assert nopull.reason in ("ImagePullBackOff", "ErrImagePull"), nopull
    assert nopull.message and "pulling image" in nopull.message
    assert nopull.started_at is None  # it never ran
    assert fake_kube.state.get(nopull.handle) is None  # the stuck pod was deleted
    # Failed the pending timeout (2 s) after queueing, not the 300 s default.
    assert nopull.ended_at is not None
    assert (nopull.ended_at - nopull.queued_at).total_seconds() < 30


# --- 3. resilience ----------------------------------------------------------------------------

TEN = """
            first = [sh(f"a{i}", "sleep 0.5; echo a") for i in range(5)]
            second = [sh(f"b{i}", "echo b") for i in range(5)]
            for f, s in zip(first, second):
                f >> s
"""


async def test_dropped_watch_and_410_during_a_run(
    fake_kube: FakeKube, pg_url: str, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    pod_dag(dags, "ten", TEN)
    audit = PodAudit(fake_kube)
    first_running = audit.when(running("a0"))
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        run_id = await kube.trigger("ten")
        done = asyncio.create_task(kube.scheduler.run_until_done("ten", run_id, timeout=60))
        await asyncio.wait_for(first_running, 30)
        # The reconnect's watch is answered 410 Expired; the stream is dropped now.
        fake_kube.faults.expire_next_watch()
        assert fake_kube.faults.drop_watches() == 1
        state = await done
        await settle(kube)
        tis = await kube.tis("ten", run_id)
        attempts = await kube.attempts("ten", run_id)

    assert state == "success", {t: (i.state, i.error) for t, i in tis.items()}
    assert {ti.state for ti in tis.values()} == {"success"}
    assert len(attempts) == 10 and {a.try_number for a in attempts} == {1}
    # No pod created twice, one pod per (task, try), one distinct pod per attempt.
    assert set(audit.creates_per_pod().values()) == {1}
    assert set(audit.by_task().values()) == {1} and len(audit.by_task()) == 10
    assert len({a.handle for a in attempts}) == 10
    assert fake_kube.requests.counts("create") == 10 + 1  # + the start-up dry run
    # The watch really was dropped and expired: initial list + relist after the drop
    # + relist after the 410, and a watch after each.
    counts = fake_kube.requests.counts()
    assert counts["list"] >= 3 and counts["watch"] >= 3
    assert fake_kube.faults.expire_watches == 0  # the 410 was served (and survived)
    assert not fake_kube.requests.of("get", "pods")


async def test_500_and_429_bursts_are_survived(
    fake_kube: FakeKube, pg_url: str, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    pod_dag(dags, "ten", TEN)
    audit = PodAudit(fake_kube)
    first_running = audit.when(running("a0"))
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        run_id = await kube.trigger("ten")
        fake_kube.faults.fail_next(5, code=500)  # hits the first five creates
        done = asyncio.create_task(kube.scheduler.run_until_done("ten", run_id, timeout=60))
        await asyncio.wait_for(first_running, 30)
        fake_kube.faults.fail_next(5, code=429, retry_after=1)  # log reads / deletes / creates
        state = await done
        await settle(kube)
        tis = await kube.tis("ten", run_id)
        attempts = await kube.attempts("ten", run_id)

    assert state == "success", {t: (i.state, i.error) for t, i in tis.items()}
    assert len(attempts) == 10 and {a.state for a in attempts} == {"success"}
    statuses = [r.status for r in fake_kube.requests]
    assert statuses.count(500) == 5 and statuses.count(429) == 5
    assert set(audit.creates_per_pod().values()) == {1} and len(audit.added) == 10
    # Every log tail was still read (retried through the 429s).
    assert all(a.log_tail for a in attempts)


async def test_create_burst_longer_than_the_retry_budget_is_not_a_task_failure(
    fake_kube: FakeKube, pg_url: str, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    pod_dag(dags, "one", '    sh("only", "true")')
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        run_id = await kube.trigger("one")
        fake_kube.faults.fail_next(6, code=500, verb="create")
        state = await kube.scheduler.run_until_done("one", run_id, timeout=60)
    assert state == "success"


# --- 4. logs after the pod is gone ------------------------------------------------------------


async def test_logs_survive_pod_deletion(fake_kube: FakeKube, pg_url: str, tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    marker = "marker-7f3a9c"
    pod_dag(dags, "logs", f'    sh("say", "echo before; echo {marker}; echo after")')
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        run_id, state = await kube.run("logs")
        config = kube.config
        (attempt,) = await kube.attempts("logs", run_id)
    assert state == "success"
    assert config.pod_cleanup == "on_success"
    # The pod was deleted by the cleanup policy ...
    assert fake_kube.state.get(attempt.handle) is None
    assert [r.name for r in fake_kube.requests if r.verb == "delete"] == [attempt.handle]
    # ... and its log is still readable, from the tail kept on the attempt.
    lines = [line async for line in logs.read(config, "logs", run_id, "say", None, False)]
    assert marker in lines
    assert lines == ["before", marker, "after"]


# --- 5. the CLI ---------------------------------------------------------------------------------


async def test_cli_dags_test_on_the_cluster(
    fake_kube: FakeKube, pg_url: str, examples: Path, tmp_path: Path
) -> None:
    fake_kube.secrets[(NAMESPACE, SECRET)] = {"url": pg_url}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIFLOW_")}
    env.update(kube_environ(fake_kube, pg_url, examples))
    env.update(MINIFLOW_STATE_DIR=str(tmp_path / "state"), COLUMNS="200", NO_COLOR="1")
    # The fake API server lives on this event loop: the CLI must run without blocking it.
    proc = await asyncio.create_subprocess_exec(
        MINIFLOW,
        "dags",
        "test",
        "example_fanout",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "success" in text
    assert fake_kube.requests.counts("create") == 12 + 1  # start, 10 partitions, join; dry run


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        MINIFLOW, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("broken", ["namespace", "forbidden", "secret"])
async def test_cli_an_unusable_namespace_is_one_line_and_writes_nothing(
    fake_kube: FakeKube, pg_url: str, examples: Path, tmp_path: Path, broken: str
) -> None:
    if broken != "secret":
        fake_kube.secrets[(NAMESPACE, SECRET)] = {"url": pg_url}
    if broken == "namespace":
        fake_kube.faults.remove_namespace(NAMESPACE)
    elif broken == "forbidden":
        fake_kube.faults.forbid("create", NAMESPACE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIFLOW_")}
    env.update(kube_environ(fake_kube, pg_url, examples))
    env.update(MINIFLOW_STATE_DIR=str(tmp_path / "state"), COLUMNS="200", NO_COLOR="1")
    code, out, err = await run_cli(env, "dags", "test", "example_fanout")
    assert code == 2, out + err
    (line,) = err.splitlines()
    assert line.startswith(f"error: Kubernetes namespace {NAMESPACE!r} cannot be used: ")
    reason = {
        "namespace": f'it does not exist (namespaces "{NAMESPACE}" not found)',
        "forbidden": "the scheduler may not create pods there (pods is forbidden: User ",
        "secret": f"the Secret {SECRET!r} (MINIFLOW_DATABASE_SECRET) that worker pods read",
    }[broken]
    assert reason in line
    assert fake_kube.state.pods() == [] and not fake_kube.requests.of("log")
    engine = store_engine.create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            runs = (await conn.execute(sa.text("select count(*) from dag_run"))).scalar_one()
    finally:
        await engine.dispose()
    assert runs == 0


# --- 6. DAG versions ----------------------------------------------------------------------------

KEEP = """
    from datetime import datetime
    from miniflow import DAG, Bash, Pod

    with DAG("keep", start_date=datetime(2026, 1, 1)):
        gate = Pod("gate", image="busybox:1.36",
                   command=["sh", "-c", "while [ ! -e {flag} ]; do sleep 0.05; done"])
        gate >> Bash("b", "echo bash-v1")
        gate >> Pod("p", image="busybox:1.36", command=["sh", "-c", "echo pod-v1"])
"""


async def test_runs_keep_their_version_on_the_cluster(
    fake_kube: FakeKube, pg_url: str, tmp_path: Path
) -> None:
    """An edit parsed by another process (the CLI) between two runs, then the file deleted:
    each run renders its own version's Pod command, and the worker pods of its Bash task run
    its own version's command, although the DAG is gone."""
    dags, flag = tmp_path / "dags", tmp_path / "go"
    path = write_dag(dags, "keep.py", KEEP.format(flag=flag))
    audit = PodAudit(fake_kube)
    gate_running = audit.when(running("gate"))
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        first = await kube.trigger("keep")
        done = asyncio.create_task(kube.scheduler.run_until_done("keep", first, timeout=60))
        await asyncio.wait_for(gate_running, 30)
        cli = DagParser(dags)  # what `miniflow dags trigger` does first, in its own process
        path.write_text(path.read_text().replace("-v1", "-v2"))
        assert await cli.parse_once(kube.scheduler.sessions, datetime.now(UTC)) == ["keep"]
        second = await kube.trigger("keep")
        path.unlink()
        await cli.parse_once(kube.scheduler.sessions, datetime.now(UTC))  # DAG deactivated
        flag.touch()
        states = [await done]
        states.append(await kube.scheduler.run_until_done("keep", second, timeout=60))
        await settle(kube)
        tis = {r: await kube.tis("keep", r) for r in (first, second)}
        attempts = {r: await kube.attempts("keep", r) for r in (first, second)}
    assert states == ["success", "success"], {
        r: {t: (i.state, i.error) for t, i in by_task.items()} for r, by_task in tis.items()
    }
    for run_id, version in ((first, "v1"), (second, "v2")):
        tails = {a.task_id: a.log_tail or "" for a in attempts[run_id]}
        assert f"bash-{version}" in tails["b"] and f"pod-{version}" in tails["p"], tails
