"""The worker (`miniflow-worker run ...`) against real SQLite and real Postgres.

Rows are created the way the scheduler would: a DAG file in tmp_path is
imported and serialized in-process, stored with `apply_parse`, a run is
created and the task instance queued with try 1. The worker then runs as a
real subprocess (the console script, or `runner.main` via `python -c`, the
entry the local launcher forks). Nothing about the database is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from miniflow.authoring.loader import import_dag_file
from miniflow.store import dags, runs, task_instances
from miniflow.store.engine import create_engine, sessionmaker, transaction
from miniflow.store.models import TaskInstance
from miniflow.store.records import TaskInstanceRecord

WORKER = str(Path(sys.executable).parent / "miniflow-worker")
RUNNER_ENTRY = [
    sys.executable,
    "-c",
    "import sys; from miniflow_worker import runner; sys.exit(runner.main(sys.argv[1:]))",
]
# The forkserver's way (`miniflow_worker.warm.prefork`, then a fork per try): the engine
# is prepared in the parent, whose event loop is gone by the time the child uses it.
PREPARED_ENTRY = [
    sys.executable,
    "-c",
    textwrap.dedent(
        """
        import os, sys
        from miniflow_worker import runner, warm
        warm.prefork(dict(os.environ))
        [engine] = runner.PREPARED_ENGINES.values()
        pool = engine.sync_engine.pool
        print(
            f"prepared: open {pool.checkedin() + pool.checkedout()}, "
            f"compiled {len(engine.sync_engine._compiled_cache)}",
            file=sys.stderr, flush=True,
        )
        pid = os.fork()
        if pid == 0:
            os._exit(runner.main(sys.argv[1:]))
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """
    ),
]
# A real forkserver with the local launcher's hooks, its relay included (`forked_worker`).
FORKED_ENTRY = [sys.executable, "-m", "tests.integration.forked_worker"]
REPO = Path(__file__).resolve().parents[2]
TS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (.*)$")
LOGICAL = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass
class Env:
    """One test's world: database, DAGs folder, and every process it started."""

    db_url: str
    folder: Path
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    pid_files: list[Path] = field(default_factory=list)
    dag_id: str = "d"
    run_id: str = "r1"

    async def setup(
        self, source: str, *, queue: list[str], conf: dict[str, Any] | None = None
    ) -> None:
        """Write, parse and store the DAG; create run r1; queue `queue` with try 1."""
        self.folder.mkdir(exist_ok=True)
        path = self.folder / "dag_file.py"
        path.write_text(textwrap.dedent(source))
        found = import_dag_file(path)
        serialized = [d.serialize("dag_file.py") for d in found]
        data = path.read_bytes()
        now = datetime.now(UTC)
        async with self.session() as s:
            await dags.apply_parse(
                s,
                [
                    dags.ParsedFile(
                        "dag_file.py",
                        path.stat().st_mtime_ns,
                        len(data),
                        hashlib.sha256(data).hexdigest(),
                        serialized,
                        None,
                    )
                ],
                [],
                now,
            )
            await runs.create_run(
                s,
                dag=serialized[0],
                run_id=self.run_id,
                run_type="manual",
                logical_date=LOGICAL,
                interval=(LOGICAL, LOGICAL + timedelta(days=1)),
                conf=conf or {},
                now=now,
            )
        for task_id in queue:
            await self.queue(task_id)

    async def queue(self, task_id: str) -> None:
        ti = await self.ti(task_id)
        now = datetime.now(UTC)
        async with self.session() as s:
            assert await task_instances.set_states(s, [(ti.id, ti.state, "scheduled")], now) == 1
            assert await task_instances.mark_queued(s, [ti.id], now) == {ti.id: ti.try_number + 1}

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        engine = create_engine(self.db_url)
        try:
            async with transaction(sessionmaker(engine)) as s:
                yield s
        finally:
            await engine.dispose()

    async def ti(self, task_id: str) -> TaskInstanceRecord:
        key = (self.dag_id, self.run_id, task_id)
        async with self.session() as s:
            return (await task_instances.find_keys(s, [key]))[key]

    async def set_try(self, task_id: str, try_number: int) -> None:
        """What a newer scheduler decision looks like to the worker: the try moved on."""
        async with self.session() as s:
            await s.execute(
                update(TaskInstance)
                .where(TaskInstance.dag_id == self.dag_id, TaskInstance.task_id == task_id)
                .values(try_number=try_number)
            )

    async def start(
        self, task_id: str, try_number: int = 1, *, entry: str = "cli", **env: str
    ) -> asyncio.subprocess.Process:
        argv = {"cli": [WORKER], "prepared": PREPARED_ENTRY, "forked": FORKED_ENTRY}.get(
            entry, RUNNER_ENTRY
        )[:]
        argv += [
            "run",
            "--dag-id",
            self.dag_id,
            "--run-id",
            self.run_id,
            "--task-id",
            task_id,
            "--try",
            str(try_number),
        ]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MINIFLOW_")}
        full_env.update(
            MINIFLOW_DATABASE_URL=self.db_url,
            MINIFLOW_DAGS_FOLDER=str(self.folder),
            MINIFLOW_HEARTBEAT_INTERVAL="0.2",
            MINIFLOW_KILL_GRACE_PERIOD="2",
            TEST_DIR=str(self.folder.parent),
        )
        full_env.update(env)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
            start_new_session=True,
            cwd=REPO,
        )
        self.procs.append(proc)
        return proc

    async def run(
        self, task_id: str, try_number: int = 1, *, entry: str = "cli", **env: str
    ) -> tuple[int, str, str]:
        proc = await self.start(task_id, try_number, entry=entry, **env)
        return await finish(proc)

    async def cleanup(self) -> None:
        # Commands waiting for `go` (WAIT_FOR_GO) run in the worker's own process group:
        # release them, so a failed test leaves no loop behind.
        with contextlib.suppress(OSError):
            (self.folder.parent / "go").touch()
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.communicate()
        for pid_file in self.pid_files:
            with contextlib.suppress(Exception):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


async def _after(value: Any, than: datetime) -> datetime | None:
    got = await value
    return got if got is not None and got > than else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def env(db_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    world = Env(db_url, tmp_path / "dags")
    try:
        yield world
    finally:
        await world.cleanup()


BASH_DAG = """
    from miniflow.authoring.dag import DAG
    from miniflow.authoring.tasks import Bash

    with DAG("d", params={{"who": "world"}}):
        Bash("t", command={command!r}, env={{"GREETING": "hi {{{{ ds }}}}"}}, retries={retries},
             retry_delay=60)
"""


def bash_dag(command: str, retries: int = 0) -> str:
    return BASH_DAG.format(command=command, retries=retries)


# --- Bash ----------------------------------------------------------------------------------------


async def test_bash_success_streams_timestamped_output(env: Env) -> None:
    await env.setup(
        bash_dag('echo "hello {{ params.who }} $GREETING"; echo oops >&2'),
        queue=["t"],
        conf={"who": "conf"},
    )
    code, out, err = await env.run("t")
    assert code == 0, err
    lines = out.splitlines()
    assert all(TS_LINE.match(line) for line in lines), lines
    assert [TS_LINE.match(line).group(1) for line in lines] == [  # type: ignore[union-attr]
        "hello conf hi 2026-03-01",
        "oops",
    ]
    ti = await env.ti("t")
    assert (ti.state, ti.exit_code, ti.error, ti.try_number) == ("success", 0, None, 1)
    assert ti.heartbeat_at is not None and ti.started_at is not None and ti.ended_at is not None
    assert ti.ended_at >= ti.started_at


async def test_bash_command_does_not_see_the_database_url(env: Env) -> None:
    await env.setup(bash_dag('echo "db=${MINIFLOW_DATABASE_URL:-unset}"'), queue=["t"])
    code, out, err = await env.run("t")
    assert code == 0, err
    assert out.rstrip().endswith("db=unset")


async def test_bash_failure_with_retries_left_is_up_for_retry(env: Env) -> None:
    await env.setup(bash_dag("exit 3", retries=2), queue=["t"])
    code, _out, err = await env.run("t")
    assert code == 1
    assert "command exited with code 3" in err
    ti = await env.ti("t")
    assert (ti.state, ti.exit_code, ti.error) == ("up_for_retry", 3, "command exited with code 3")
    assert ti.next_retry_at is not None and ti.next_retry_at > datetime.now(UTC)


async def test_bash_failure_without_retries_is_failed(env: Env) -> None:
    await env.setup(bash_dag("echo bad; exit 7"), queue=["t"])
    code, _out, err = await env.run("t", entry="runner")
    assert code == 1, err
    ti = await env.ti("t")
    assert (ti.state, ti.exit_code, ti.error) == ("failed", 7, "command exited with code 7")
    assert ti.next_retry_at is None


async def test_bash_exit_code_in_skip_on_exit_code_is_skipped_by_the_worker(env: Env) -> None:
    """How a worker that reports its own outcome (on Kubernetes) handles the skip codes;
    the local launcher's scheduler decides the same from the exit code."""
    await env.setup(
        """
        from miniflow import DAG, Bash

        with DAG("d"):
            Bash("t", "exit 99", skip_on_exit_code=[98, 99], retries=2)
        """,
        queue=["t"],
    )
    code, _out, err = await env.run("t")
    assert code == 0, err
    ti = await env.ti("t")
    assert (ti.state, ti.exit_code, ti.try_number) == ("skipped", 99, 1)
    assert ti.error == "skipped: exit code 99 is one of the task's skip_on_exit_code"


async def test_template_error_is_a_failure_naming_the_variable(env: Env) -> None:
    await env.setup(bash_dag("touch $TEST_DIR/marker; echo {{ params.nope }}"), queue=["t"])
    code, _out, err = await env.run("t")
    assert code == 1
    ti = await env.ti("t")
    assert ti.state == "failed"
    assert ti.error is not None and "params.nope" in ti.error and "'t'" in ti.error
    assert "params.nope" in err
    assert not (env.folder.parent / "marker").exists()


async def test_bash_with_function_macros_and_filters_imports_its_dag_file(env: Env) -> None:
    """A worker running Bash (on Kubernetes) renders with the DAG's functions, which only
    its file has; a macro that raises fails the try with the template error."""
    await env.setup(
        """
        from miniflow import DAG, Bash

        def shout(text):
            return text.upper() + "!"

        def broken(text):
            raise ValueError("macro fails")

        with DAG("d", user_defined_macros={"shout": shout, "broken": broken},
                 user_defined_filters={"twice": lambda v: f"{v}{v}"}, params={"who": "x"}):
            Bash("t", "echo {{ shout(params.who) | twice }}")
            Bash("bad", "echo {{ broken('x') }}")
        """,
        queue=["t", "bad"],
        conf={"who": "conf"},
    )
    code, out, err = await env.run("t")
    assert code == 0, err
    assert out.splitlines()[-1].endswith(" CONF!CONF!")
    code, _out, err = await env.run("bad")
    assert code == 1
    ti = await env.ti("bad")
    assert ti.state == "failed"
    assert ti.error is not None and "ValueError: macro fails" in ti.error


async def test_task_timeout_stops_the_command(env: Env) -> None:
    source = bash_dag("echo $$ > $TEST_DIR/pid; exec sleep 300").replace(
        "retry_delay=60)", "retry_delay=60, timeout=0.5)"
    )
    await env.setup(source, queue=["t"])
    env.pid_files.append(env.folder.parent / "pid")
    code, _out, _err = await env.run("t")
    assert code == 1
    ti = await env.ti("t")
    assert ti.state == "failed" and ti.error == "timed out after 0.5s (the task's timeout)"
    assert not alive(int((env.folder.parent / "pid").read_text()))


async def test_pod_task_is_not_run_by_the_worker(env: Env) -> None:
    await env.setup(
        """
        from miniflow.authoring.dag import DAG
        from miniflow.authoring.tasks import Pod

        with DAG("d"):
            Pod("t", image="busybox", command=["touch", "/tmp/x"])
        """,
        queue=["t"],
    )
    code, _out, _err = await env.run("t")
    assert code == 1
    ti = await env.ti("t")
    assert (ti.state, ti.error) == ("failed", "pod tasks are run by the launcher, not the worker")


# --- Python --------------------------------------------------------------------------------------


PY_DAG = """
    import os
    from miniflow.authoring.dag import DAG
    from miniflow.authoring.taskflow import task

    @task
    def produce():
        return {"n": 21, "items": [1, 2]}

    @task
    def consume(data, factor, label="x"):
        return {"total": data["n"] * factor, "items": data["items"], "label": label}

    @task
    def not_json():
        return {1, 2}

    @task
    def too_big():
        return "x" * 100

    @task
    def boom():
        raise ValueError("boom from user code")

    @task
    async def coro(x):
        return [x, x]

    with DAG("d"):
        consume(produce(), 2, label="lbl")
        not_json()
        too_big()
        boom()
        coro(5)
"""


async def test_python_results_are_stored_and_passed_downstream(env: Env) -> None:
    await env.setup(PY_DAG, queue=["produce"])
    code, _out, err = await env.run("produce", entry="runner")
    assert code == 0, err
    ti = await env.ti("produce")
    assert (ti.state, ti.result) == ("success", {"n": 21, "items": [1, 2]})

    await env.queue("consume")
    code, _out, err = await env.run("consume")
    assert code == 0, err
    ti = await env.ti("consume")
    assert (ti.state, ti.result) == ("success", {"total": 42, "items": [1, 2], "label": "lbl"})


async def test_a_worker_forked_from_a_prepared_parent_claims_and_records(env: Env) -> None:
    # The parent runs the worker's statements to compile them (rolled back, keys no row
    # has) and leaves no connection open; the forked child claims and records on it.
    await env.setup(PY_DAG, queue=["produce"])
    code, _out, err = await env.run("produce", entry="prepared")
    assert code == 0, err
    opened, compiled = map(int, re.findall(r"prepared: open (\d+), compiled (\d+)", err)[0])
    assert opened == 0 and compiled >= 5, err
    ti = await env.ti("produce")
    assert (ti.state, ti.try_number, ti.result) == ("success", 1, {"n": 21, "items": [1, 2]})
    assert "claimed try 1 of d/r1/produce" in err


RELAYED_DAG = """
    import os
    from miniflow.authoring.dag import DAG
    from miniflow.authoring.taskflow import task

    @task
    def produce():
        with open(os.path.join(os.environ["TEST_DIR"], "ran"), "a") as f:
            f.write("ran\\n")
        return {"n": 21}

    with DAG("d"):
        produce()
"""
CONNECTED = "miniflow-test: the worker connected"


async def test_a_forked_worker_claims_and_records_through_its_relay(env: Env) -> None:
    # The forkserver's relay process writes the claim and the outcome on its own warm
    # connection: a short try never opens one.
    await env.setup(RELAYED_DAG, queue=["produce"])
    code, _out, err = await env.run("produce", entry="forked")
    assert code == 0, err
    ti = await env.ti("produce")
    assert (ti.state, ti.try_number, ti.result) == ("success", 1, {"n": 21})
    assert (env.folder.parent / "ran").read_text() == "ran\n"
    assert "claimed try 1 of d/r1/produce through the forkserver" in err, err
    assert CONNECTED not in err, err


async def test_a_relay_that_dies_before_the_claim_leaves_it_to_the_worker(env: Env) -> None:
    await env.setup(RELAYED_DAG, queue=["produce"])
    code, _out, err = await env.run("produce", entry="forked", FORKED_RELAY_DIES="claim:before")
    assert code == 0, err
    assert "the forkserver could not claim the try" in err and "claiming it directly" in err
    assert CONNECTED in err
    ti = await env.ti("produce")
    assert (ti.state, ti.try_number, ti.result) == ("success", 1, {"n": 21})
    assert (env.folder.parent / "ran").read_text() == "ran\n"


async def test_a_relay_that_dies_after_committing_the_claim_runs_nothing_twice(
    env: Env,
) -> None:
    # The claim is in the database but its answer never came: the worker's own claim
    # finds the try taken and runs nothing (the scheduler ends the try as a lost worker).
    await env.setup(RELAYED_DAG, queue=["produce"])
    code, _out, err = await env.run("produce", entry="forked", FORKED_RELAY_DIES="claim:after")
    assert code == 0, err
    assert "already claimed" in err and "nothing to run" in err, err
    assert not (env.folder.parent / "ran").exists()
    ti = await env.ti("produce")
    assert (ti.state, ti.try_number) == ("running", 1)
    assert ti.heartbeat_at is not None


async def test_a_relay_that_dies_before_recording_leaves_it_to_the_worker(env: Env) -> None:
    await env.setup(RELAYED_DAG, queue=["produce"])
    code, _out, err = await env.run("produce", entry="forked", FORKED_RELAY_DIES="record:before")
    assert code == 0, err
    assert "through the forkserver" in err  # claimed by the relay
    assert "the forkserver could not record the outcome" in err and CONNECTED in err, err
    ti = await env.ti("produce")
    assert (ti.state, ti.try_number, ti.result) == ("success", 1, {"n": 21})


RELAYED_TWO_DAG = """
    import os
    from miniflow.authoring.dag import DAG
    from miniflow.authoring.taskflow import task

    @task
    def produce():
        return {"n": 21}

    @task
    def other():
        return {"n": 22}

    with DAG("d"):
        produce()
        other()
"""


async def test_a_relay_process_that_died_is_replaced_for_later_tries(env: Env) -> None:
    """The relay dies at the first try's claim: that try claims itself; the forkserver
    starts another relay process, through which the next try claims and records."""
    await env.setup(RELAYED_TWO_DAG, queue=["produce", "other"])
    code, _out, err = await env.run(
        "produce",
        entry="forked",
        FORKED_RELAY_DIES="claim:before",
        FORKED_RELAY_DIES_ONCE=str(env.folder.parent / "relay-died"),
        FORKED_ALSO="other",
    )
    assert code == 0, err
    first, _, second = err.partition("the relay process ended; starting another")
    assert second, err
    assert "the forkserver could not claim the try" in first and CONNECTED in first, err
    assert "claimed try 1 of d/r1/other through the forkserver" in second, err
    assert CONNECTED not in second, err
    for task_id in ("produce", "other"):
        assert (await env.ti(task_id)).state == "success"


async def test_a_relay_that_dies_after_recording_leaves_the_outcome_recorded_once(
    env: Env,
) -> None:
    await env.setup(RELAYED_DAG, queue=["produce"])
    code, _out, err = await env.run("produce", entry="forked", FORKED_RELAY_DIES="record:after")
    assert "the forkserver could not record the outcome" in err, err
    assert code == 0, err
    ti = await env.ti("produce")
    assert (ti.state, ti.try_number, ti.result) == ("success", 1, {"n": 21})
    assert (env.folder.parent / "ran").read_text() == "ran\n"


IMPORT_COUNTING_DAG = """
    import os
    from miniflow.authoring.dag import DAG
    from miniflow.authoring.taskflow import task

    if "TEST_DIR" in os.environ:  # not the test's own import (`setup`)
        with open(os.path.join(os.environ["TEST_DIR"], "imports"), "a") as f:
            f.write(f"{os.getpid()}\\n")

    @task
    def a():
        return "a"

    @task
    def b():
        return "b"

    @task
    def c():
        return "c"

    with DAG("d"):
        a()
        b()
        c()
"""


async def test_forked_tries_use_the_dag_file_their_forkserver_imported(env: Env) -> None:
    # Three tries, one forkserver: the file is imported once, by the forkserver (whose
    # pid is no try's), and every try ran the function from that import.
    await env.setup(IMPORT_COUNTING_DAG, queue=["a", "b", "c"])
    imports = env.folder.parent / "imports"
    dag_file = str(env.folder / "dag_file.py")
    code, _out, err = await env.run(
        "a", entry="forked", FORKED_DAG_FILE=dag_file, FORKED_ALSO="b c"
    )
    assert code == 0, err
    assert len(imports.read_text().splitlines()) == 1, err
    for task_id in "abc":
        ti = await env.ti(task_id)
        assert (ti.state, ti.result) == ("success", task_id)


async def test_a_forked_try_imports_a_dag_file_changed_since_its_forkserver_did(
    env: Env,
) -> None:
    # The function comes from the file as it is now: a change after the forkserver's
    # import (here between two tries) makes the next try import the file itself, and
    # the forkserver imports the new version for the tries after it.
    await env.setup(IMPORT_COUNTING_DAG, queue=["a", "b"])
    imports = env.folder.parent / "imports"
    dag_file = str(env.folder / "dag_file.py")
    code, _out, err = await env.run(
        "a",
        entry="forked",
        FORKED_DAG_FILE=dag_file,
        FORKED_ALSO="b",
        FORKED_TOUCH_BETWEEN=dag_file,
    )
    assert code == 0, err
    assert len(imports.read_text().splitlines()) == 2, err  # first and changed version
    assert [(await env.ti(t)).state for t in "ab"] == ["success", "success"]


async def test_async_task_function_is_awaited(env: Env) -> None:
    await env.setup(PY_DAG, queue=["coro"])
    code, _out, err = await env.run("coro")
    assert code == 0, err
    assert (await env.ti("coro")).result == [5, 5]


GC_DAG = """
    import gc

    from miniflow.authoring.dag import DAG
    from miniflow.authoring.taskflow import task

    AT_IMPORT = gc.isenabled()

    @task
    def probe():
        return {"at_import": AT_IMPORT, "in_task": gc.isenabled()}

    with DAG("d"):
        probe()
"""


async def test_cold_worker_collects_garbage_again_before_user_code(env: Env) -> None:
    # The console entry starts with the garbage collector off (start-up speed); the
    # DAG file's import and the task must run with it on, as in any Python process.
    await env.setup(GC_DAG, queue=["probe"])
    code, _out, err = await env.run("probe")
    assert code == 0, err
    assert (await env.ti("probe")).result == {"at_import": True, "in_task": True}


async def test_non_json_and_oversized_results_fail_clearly(env: Env) -> None:
    await env.setup(PY_DAG, queue=["not_json", "too_big"])
    code, _out, _err = await env.run("not_json")
    assert code == 1
    ti = await env.ti("not_json")
    assert ti.state == "failed" and ti.result is None
    assert ti.error is not None and "type set" in ti.error and "not JSON-serializable" in ti.error

    code, _out, _err = await env.run("too_big", MINIFLOW_MAX_RESULT_BYTES="50")
    assert code == 1
    ti = await env.ti("too_big")
    assert ti.state == "failed"
    assert ti.error == (
        "task 'too_big' returned 102 bytes of JSON (str), over the limit of 50 bytes "
        "(MINIFLOW_MAX_RESULT_BYTES)"
    )


async def test_python_exception_records_the_traceback(env: Env) -> None:
    await env.setup(PY_DAG, queue=["boom"])
    code, _out, err = await env.run("boom")
    assert code == 1
    ti = await env.ti("boom")
    assert ti.state == "failed" and ti.error is not None
    assert ti.error.startswith("Traceback") and "ValueError: boom from user code" in ti.error
    assert 'raise ValueError("boom from user code")' in ti.error
    assert "ValueError: boom from user code" in err


async def test_missing_dag_file_is_a_failure(env: Env) -> None:
    await env.setup(PY_DAG, queue=["produce"])
    (env.folder / "dag_file.py").unlink()
    code, _out, _err = await env.run("produce")
    assert code == 1
    ti = await env.ti("produce")
    assert ti.state == "failed" and ti.error is not None and "does not exist" in ti.error


# --- fencing, heartbeats, signals ----------------------------------------------------------------


async def test_stale_try_runs_nothing(env: Env) -> None:
    await env.setup(bash_dag("touch $TEST_DIR/marker"), queue=["t"])
    await env.set_try("t", 2)
    code, out, err = await env.run("t", 1)
    assert code == 0
    assert "try 1 of d/r1/t is not the current try" in err and "nothing to run" in err
    assert out == ""
    assert not (env.folder.parent / "marker").exists()
    ti = await env.ti("t")
    assert (ti.state, ti.try_number, ti.heartbeat_at) == ("queued", 2, None)


WAIT_FOR_GO = "echo started >> $TEST_DIR/marker; while [ ! -f $TEST_DIR/go ]; do sleep 0.02; done"


async def test_second_worker_for_the_same_try_runs_nothing(env: Env) -> None:
    await env.setup(bash_dag(WAIT_FOR_GO), queue=["t"])
    marker = env.folder.parent / "marker"
    first = await env.start("t")
    await wait_until(marker.exists, what="the first worker's command")
    code, _out, err = await env.run("t")
    assert code == 0
    assert "already claimed" in err and "nothing to run" in err
    (env.folder.parent / "go").touch()
    code, _out, err = await finish(first)
    assert code == 0, err
    assert marker.read_text() == "started\n"
    assert (await env.ti("t")).state == "success"


async def test_heartbeat_updates_heartbeat_at(env: Env) -> None:
    await env.setup(bash_dag(WAIT_FOR_GO), queue=["t"])
    worker = await env.start("t")

    async def heartbeat_at() -> datetime | None:
        return (await env.ti("t")).heartbeat_at

    first = await wait_until(heartbeat_at, what="the claim")
    later = await wait_until(
        lambda: _after(heartbeat_at(), first), what="a heartbeat after the claim"
    )
    assert later > first
    assert worker.returncode is None
    (env.folder.parent / "go").touch()
    code, _out, err = await finish(worker)
    assert code == 0, err


async def test_fenced_out_worker_kills_its_command_and_records_nothing(env: Env) -> None:
    await env.setup(bash_dag("echo $$ > $TEST_DIR/pid; exec sleep 300"), queue=["t"])
    pid_file = env.folder.parent / "pid"
    env.pid_files.append(pid_file)
    worker = await env.start("t")
    await wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="command")
    child = int(pid_file.read_text())
    await env.set_try("t", 2)
    code, _out, err = await finish(worker, timeout=20)
    assert code == 3, err
    assert "fenced out" in err
    await wait_until(lambda: not alive(child), timeout=5, what="the command to be gone")
    ti = await env.ti("t")
    assert (ti.state, ti.try_number, ti.error, ti.ended_at) == ("running", 2, None, None)


async def test_sigterm_stops_the_command_and_records_a_failure(env: Env) -> None:
    await env.setup(bash_dag("echo $$ > $TEST_DIR/pid; trap '' TERM; exec sleep 300"), queue=["t"])
    pid_file = env.folder.parent / "pid"
    env.pid_files.append(pid_file)
    worker = await env.start("t", MINIFLOW_KILL_GRACE_PERIOD="0.5")
    await wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="command")
    child = int(pid_file.read_text())
    worker.send_signal(signal.SIGTERM)
    code, _out, err = await finish(worker, timeout=20)
    assert code == 143, err
    assert not alive(child)
    ti = await env.ti("t")
    assert (ti.state, ti.error, ti.exit_code) == ("failed", "terminated by SIGTERM", 143)


async def test_sigterm_during_a_python_task_records_a_failure(env: Env) -> None:
    await env.setup(
        """
        import os, time
        from pathlib import Path
        from miniflow.authoring.dag import DAG
        from miniflow.authoring.taskflow import task

        @task(retries=1, retry_delay=30)
        def waits():
            Path(os.environ["TEST_DIR"], "started").touch()
            while True:
                time.sleep(0.05)

        with DAG("d"):
            waits()
        """,
        queue=["waits"],
    )
    worker = await env.start("waits")
    await wait_until((env.folder.parent / "started").exists, what="the task to start")
    worker.send_signal(signal.SIGTERM)
    code, _out, err = await finish(worker, timeout=20)
    assert code == 143, err
    ti = await env.ti("waits")
    assert (ti.state, ti.error) == ("up_for_retry", "terminated by SIGTERM")
    assert ti.next_retry_at is not None and ti.next_retry_at > datetime.now(UTC)


# --- start-up errors (no database needed) --------------------------------------------------------


async def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    world = Env("postgresql+asyncpg://bob:secret@127.0.0.1:1/nope", tmp_path / "dags")
    try:
        # patience: half the zombie threshold (1 s here), then one clear line
        code, out, err = await world.run("t", MINIFLOW_ZOMBIE_THRESHOLD="2")
    finally:
        await world.cleanup()
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and "secret" not in err
    assert len(lines) >= 2 and all("trying again" in line for line in lines[:-1])
    assert "cannot connect to database" in lines[-1] and "127.0.0.1:1/nope" in lines[-1]
    assert "trying again" not in lines[-1]


async def test_config_error_is_one_clear_line(tmp_path: Path) -> None:
    world = Env(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path / "dags")
    try:
        code, _out, err = await world.run("t", MINIFLOW_HEARTBEAT_INTERVAL="soon")
    finally:
        await world.cleanup()
    assert code == 2
    assert err.count("\n") == 1 and "MINIFLOW_HEARTBEAT_INTERVAL" in err


async def test_heartbeat_survives_a_database_outage(env: Env) -> None:
    """Postgres only: the database vanishes (renamed away) for a few heartbeats, then returns."""
    if not env.db_url.startswith("postgresql"):
        pytest.skip("needs a database that can be taken away while the worker runs")
    import asyncpg

    from tests.dbs import PG_ADMIN_DSN

    name = env.db_url.rsplit("/", 1)[1]
    await env.setup(bash_dag(WAIT_FOR_GO), queue=["t"])
    worker = await env.start("t")
    await wait_until((env.folder.parent / "marker").exists, what="the command")
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    renamed = False
    try:
        for _ in range(100):  # the worker may reconnect between terminate and rename
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            try:
                await admin.execute(f'ALTER DATABASE "{name}" RENAME TO "{name}_away"')
                renamed = True
                break
            except asyncpg.ObjectInUseError:
                await asyncio.sleep(0.01)
        assert renamed, "could not take the database away"
        await asyncio.sleep(1.0)  # several heartbeat intervals (0.2 s) fail
    finally:
        if renamed:
            await admin.execute(f'ALTER DATABASE "{name}_away" RENAME TO "{name}"')
        await admin.close()
    assert worker.returncode is None
    (env.folder.parent / "go").touch()
    code, _out, err = await finish(worker)
    assert code == 0, err
    assert "heartbeat failed" in err, err
    assert (await env.ti("t")).state == "success"


async def test_worker_that_cannot_heartbeat_stops_its_task_itself(env: Env) -> None:
    """Postgres only: its heartbeats block on a locked table past the zombie threshold."""
    if not env.db_url.startswith("postgresql"):
        pytest.skip("needs a table lock held from another connection")
    import asyncpg

    await env.setup(bash_dag("echo $$ > $TEST_DIR/pid; exec sleep 300"), queue=["t"])
    pid_file = env.folder.parent / "pid"
    env.pid_files.append(pid_file)
    worker = await env.start("t", MINIFLOW_ZOMBIE_THRESHOLD="1.5")
    await wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="command")
    child = int(pid_file.read_text())
    locker = await asyncpg.connect(env.db_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE task_instance IN ACCESS EXCLUSIVE MODE")
            code, _out, err = await finish(worker, timeout=20)
    finally:
        await locker.close()
    assert code == 5, err
    assert "could not heartbeat" in err
    await wait_until(lambda: not alive(child), timeout=5, what="the command to be gone")
    assert (await env.ti("t")).state == "running"  # nothing recorded: the scheduler decides
