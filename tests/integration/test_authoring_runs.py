"""Issue #12's authoring features through the real scheduler and the LocalLauncher (one
worker process per try), on SQLite and PostgreSQL: the final state of every task."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from miniflow.cli import operations
from miniflow.config import load_config
from miniflow.errors import NotFound
from miniflow.scheduler import manual_runs
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from tests.e2e.helpers import write_dag
from tests.e2e.test_local_scheduler import Local
from tests.e2e.test_local_scheduler import local_scheduler as _local_scheduler


class Authoring(Local):
    """The local scheduler handle, plus triggers with a conf."""

    async def trigger_with(self, conf_json: str | None, dag_id: str = "typed") -> str:
        async with store_engine.transaction(self.scheduler.sessions) as session:
            return await manual_runs.trigger(
                session, dag_id, conf_json=conf_json, now=datetime.now(UTC)
            )

    async def runs_of(self, dag_id: str) -> list[Any]:
        async with store_engine.transaction(self.scheduler.sessions) as session:
            return await store_runs.list_runs(session, dag_id, limit=10)


@contextlib.asynccontextmanager
async def local_scheduler(db_url: str, tmp_path: Path) -> AsyncIterator[Authoring]:
    async with _local_scheduler(db_url, tmp_path) as local:
        yield Authoring(local.scheduler, local.db_url)


async def test_empty_tasks_complete_without_a_process(db_url: str, tmp_path: Path) -> None:
    write_dag(
        tmp_path / "dags",
        "empties.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash, Empty

        with DAG("empties", start_date=datetime(2026, 1, 1)):
            start, join = Empty("start"), Empty("join")
            start >> [Bash("a", "true"), Bash("b", "true")] >> join
            start >> Bash("bad", "exit 1") >> Empty("after_bad")
            Empty("cleanup", trigger_rule="all_done") << join
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("empties")
        tis = await local.tis("empties", run_id)
        attempts = {a.task_id for a in await local.attempts("empties", run_id)}
    assert {t: ti.state for t, ti in tis.items()} == {
        "start": "success",
        "a": "success",
        "b": "success",
        "bad": "failed",
        "after_bad": "upstream_failed",
        "join": "success",
        "cleanup": "success",
    }
    assert state == "failed"  # the leaf after_bad
    assert attempts == {"a", "b", "bad"}  # no try, no process for an Empty task
    assert all(tis[t].try_number == 0 for t in ("start", "join", "cleanup"))
    config = load_config(
        environ={}, database_url=db_url, dags_folder=tmp_path / "dags", state_dir=tmp_path / "s"
    )
    with pytest.raises(NotFound, match=r"'join' of empties/.* is an Empty task: it runs no"):
        await operations.task_attempts(config, "empties", run_id, "join")  # what `tasks logs` says


BRANCHING = """
from datetime import datetime
from miniflow import DAG, Bash, Empty, task

with DAG("branching", start_date=datetime(2026, 1, 1)):

    @task.branch
    def pick(n: int) -> str:
        return "small" if n < 10 else "big"

    @task.short_circuit
    def enabled() -> bool:
        return False

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def soft_gate() -> int:
        return 0

    @task.branch
    def confused() -> str:
        return "elsewhere"

    small, big = Bash("small", "true"), Bash("big", "true")
    pick(3) >> [small, big]
    small >> Bash("small_2", "true") >> Empty("join", trigger_rule="none_failed_min_one_success")
    big >> Bash("big_2", "true") >> Empty("join_all", trigger_rule="all_done")
    Empty("after_big", trigger_rule="all_success") << big
    [Bash("big_2_again", "true") << big] >> Bash("join_plain", "true")
    [Bash("small_2_again", "true") << small] >> Empty("tail")
    enabled() >> Bash("gated", "true") >> Bash("gated_all_done", "true", trigger_rule="all_done")
    g = soft_gate()
    g >> Bash("soft_direct", "true") >> Bash("soft_all_done", "true", trigger_rule="all_done")
    confused() >> Bash("never", "true")
"""


async def test_branch_and_short_circuit_skip_and_propagate(db_url: str, tmp_path: Path) -> None:
    write_dag(tmp_path / "dags", "branching.py", BRANCHING)
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("branching")
        tis = await local.tis("branching", run_id)
        attempts = {a.task_id for a in await local.attempts("branching", run_id)}
    assert {t: ti.state for t, ti in tis.items()} == {
        "pick": "success",
        "small": "success",
        "small_2": "success",
        "join": "success",  # none_failed_min_one_success joins the followed branch
        "small_2_again": "success",
        "tail": "success",
        "big": "skipped",  # not followed
        "big_2": "skipped",  # all_success below a skip
        "after_big": "skipped",
        "big_2_again": "skipped",
        "join_plain": "skipped",
        "join_all": "success",  # all_done: a skip is done
        "enabled": "success",
        "gated": "skipped",
        "gated_all_done": "skipped",  # ignore_downstream_trigger_rules=True: all of them
        "soft_gate": "success",
        "soft_direct": "skipped",
        "soft_all_done": "success",  # False: trigger rules decide below the direct ones
        "confused": "failed",
        "never": "upstream_failed",
    }
    assert tis["pick"].result == "small"
    assert tis["confused"].error is not None
    assert (
        "branch task 'confused' returned 'elsewhere', which is not directly downstream of it; "
        "valid task ids: never" in tis["confused"].error
    )
    assert state == "failed"  # `never` is a leaf that did not succeed
    assert not attempts & {"big", "big_2", "gated", "soft_direct", "never", "join_plain"}


GROUPS = """
from datetime import datetime
from miniflow import DAG, Bash, Empty, TaskGroup, task, task_group

with DAG("groups", start_date=datetime(2026, 1, 1)):

    @task
    def emit(v: int) -> int:
        return v

    @task
    def add(a: int, b: int) -> int:
        return a + b

    @task.branch
    def route() -> str:
        return "fast"

    @task_group
    def compute():
        return add(emit(1), emit(2))

    with TaskGroup("fast") as fast:
        Bash("one", "true") >> Bash("two", "true")
    with TaskGroup("slow") as slow:
        Bash("one", "true")
    total = compute()
    end = Empty("end", trigger_rule="none_failed_min_one_success")
    total >> route() >> [fast, slow] >> end
"""


async def test_task_groups_run_with_prefixed_ids_and_branch_by_group(
    db_url: str, tmp_path: Path
) -> None:
    write_dag(tmp_path / "dags", "groups.py", GROUPS)
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("groups")
        tis = await local.tis("groups", run_id)
    assert {t: ti.state for t, ti in tis.items()} == {
        "compute.emit": "success",
        "compute.emit__1": "success",
        "compute.add": "success",
        "route": "success",
        "fast.one": "success",
        "fast.two": "success",
        "slow.one": "skipped",
        "end": "success",
    }
    assert tis["compute.add"].result == 3
    assert state == "success"  # every task succeeded or was skipped


CONTEXT = """
from datetime import datetime
from miniflow import DAG, get_current_context, task

with DAG("ctx", start_date=datetime(2026, 1, 1), params={"limit": 7}):

    @task
    def sync_fn() -> dict:
        c = get_current_context()
        return {"run_id": c["run_id"], "ds": c["ds"], "limit": c["params"]["limit"],
                "ti": [c["ti"].dag_id, c["ti"].task_id, c["ti"].try_number]}

    @task
    async def async_fn() -> str:
        return get_current_context()["task_id"]

    sync_fn() >> async_fn()
"""


async def test_get_current_context_inside_tasks(db_url: str, tmp_path: Path) -> None:
    write_dag(tmp_path / "dags", "ctx.py", CONTEXT)
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("ctx")
        tis = await local.tis("ctx", run_id)
    assert state == "success"
    logical_date = tis["sync_fn"].result["run_id"].removeprefix("manual__")
    assert tis["sync_fn"].result == {
        "run_id": run_id,
        "ds": logical_date[:10],
        "limit": 7,
        "ti": ["ctx", "sync_fn", 1],
    }
    assert tis["async_fn"].result == "async_fn"


PARAMS = """
from datetime import datetime
from miniflow import DAG, Bash, Param, get_current_context, task

with DAG("typed", start_date=datetime(2026, 1, 1),
         params={"limit": Param(5, type="integer", minimum=1, description="rows per batch"),
                 "table": Param(type="string", minLength=1)}):

    @task
    def seen() -> dict:
        return get_current_context()["params"]

    seen() >> Bash("echo", "test {{ params.limit }} -eq 9")
"""


async def test_typed_params_validate_the_conf_at_trigger_time(db_url: str, tmp_path: Path) -> None:
    from miniflow.errors import ConfValidationError

    write_dag(tmp_path / "dags", "typed.py", PARAMS)
    async with local_scheduler(db_url, tmp_path) as local:
        for conf, message in [
            (None, "param 'table' is required: give it in --conf"),
            ('{"table": "t", "limit": 0}', "param 'limit' (rows per batch): 0 is less than"),
        ]:
            with pytest.raises(ConfValidationError, match=re.escape(message)):
                await local.trigger_with(conf)
        assert await local.runs_of("typed") == []  # nothing created by a refused trigger
        run_id = await local.trigger_with('{"table": "t", "limit": 9}')
        state = await local.scheduler.run_until_done("typed", run_id, timeout=60)
        tis = await local.tis("typed", run_id)
    assert state == "success"
    assert tis["seen"].result == {"limit": 9, "table": "t"}
    assert tis["echo"].state == "success"  # the template saw the conf's value too


SELF_SKIP = """
from datetime import datetime
from miniflow import DAG, Bash, SkipTask, task

with DAG("selfskip", start_date=datetime(2026, 1, 1)):

    @task(retries=2)
    def nothing_new() -> int:
        raise SkipTask("no new files")

    @task
    async def also_skips() -> None:
        raise SkipTask

    n = nothing_new()
    n >> Bash("process", "true")
    n >> Bash("notify", "true", trigger_rule="all_done")
    also_skips()
"""


async def test_a_task_can_skip_itself(db_url: str, tmp_path: Path) -> None:
    write_dag(tmp_path / "dags", "selfskip.py", SELF_SKIP)
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("selfskip")
        tis = await local.tis("selfskip", run_id)
        attempts = {a.task_id: a for a in await local.attempts("selfskip", run_id)}
    assert {t: ti.state for t, ti in tis.items()} == {
        "nothing_new": "skipped",
        "also_skips": "skipped",
        "process": "skipped",
        "notify": "success",
    }
    assert state == "success"
    assert tis["nothing_new"].try_number == 1  # a skip is not a failure: no retry
    assert tis["nothing_new"].error == "skipped: no new files"
    assert tis["also_skips"].error == "skipped by the task"
    assert attempts["nothing_new"].state == "skipped"
    assert attempts["nothing_new"].exit_code == 0


SELF_FAIL = """
from datetime import datetime
from miniflow import DAG, Bash, FailTask, task

with DAG("selffail", start_date=datetime(2026, 1, 1)):

    @task(retries=3, retry_delay=0)
    def bad_input() -> None:
        raise FailTask("the input file is corrupt")

    @task(retries=3, retry_delay=0)
    async def also_final() -> None:
        raise FailTask("no permission")

    bad_input() >> Bash("after", "true")
    also_final()
"""


async def test_a_task_can_fail_without_retries(db_url: str, tmp_path: Path) -> None:
    write_dag(tmp_path / "dags", "selffail.py", SELF_FAIL)
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("selffail")
        tis = await local.tis("selffail", run_id)
    assert {t: ti.state for t, ti in tis.items()} == {
        "bad_input": "failed",
        "also_final": "failed",
        "after": "upstream_failed",
    }
    assert state == "failed"
    assert tis["bad_input"].try_number == 1  # retries=3, but FailTask is final
    assert tis["also_final"].try_number == 1
    assert "the input file is corrupt" in (tis["bad_input"].error or "")


SKIP_CODES = """
from datetime import datetime
from miniflow import DAG, Bash

with DAG("skipcodes", start_date=datetime(2026, 1, 1)):
    check = Bash("check", "echo nothing to do; exit 99", skip_on_exit_code=99, retries=2)
    check >> Bash("work", "true")
    Bash("broken", "exit 98", skip_on_exit_code=[99])
"""


async def test_bash_exit_code_can_skip_the_task(db_url: str, tmp_path: Path) -> None:
    write_dag(tmp_path / "dags", "skipcodes.py", SKIP_CODES)
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("skipcodes")
        tis = await local.tis("skipcodes", run_id)
        attempts = {a.task_id: a for a in await local.attempts("skipcodes", run_id)}
    assert {t: ti.state for t, ti in tis.items()} == {
        "check": "skipped",
        "work": "skipped",
        "broken": "failed",
    }
    assert (tis["check"].try_number, tis["check"].exit_code) == (1, 99)  # no retry
    assert tis["check"].error == "skipped: exit code 99 is one of the task's skip_on_exit_code"
    assert attempts["check"].state == "skipped"
    assert state == "failed"  # broken's 98 is not a skip code


def test_standalone_trigger_all_passes_over_a_dag_with_a_required_param(tmp_path: Path) -> None:
    """One DAG whose typed param has no default must not stop the others from running."""
    from tests.e2e.helpers import cli_env, run_cli

    dags = tmp_path / "dags"
    write_dag(dags, "typed.py", PARAMS)
    write_dag(dags, "e.py", 'from miniflow import DAG, Empty\nwith DAG("e"):\n    Empty("x")\n')
    env = cli_env(f"sqlite+aiosqlite:///{tmp_path / 'state' / 'm.db'}", dags, tmp_path / "state")
    result = run_cli(["standalone", "--trigger-all", "--exit-when-done"], env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "DAG typed not triggered: param 'table' is required" in output
    assert "all 1 triggered runs succeeded" in output
