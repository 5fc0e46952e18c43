"""The real `miniflow` command as a subprocess: exit codes, messages and what it shows."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from miniflow.store import attempts as store_attempts
from miniflow.store import dags as store_dags
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from miniflow.store.models import DagVersion
from tests.dbs import PostgresDatabases
from tests.e2e.conftest import Cli, lines_with
from tests.e2e.helpers import (
    cli_env,
    kill_group,
    query,
    query_sync,
    run_cli,
    spawn_cli,
    stop,
    until,
    wait_for,
    write_dag,
)

GOOD = """
    from datetime import datetime, timedelta
    from miniflow import DAG, Bash

    with DAG("good", schedule="@daily", start_date=datetime(2026, 1, 1), params={"who": "world"}):
        hello = Bash("hello", "echo hello {{ params.who }} try {{ try_number }}")
        flaky = Bash("flaky", 'echo "flaky try {{ try_number }}"; test {{ try_number }} -ge 2',
                     retries=1, retry_delay=timedelta(seconds=0.2))
        hello >> flaky >> Bash("bye", "echo bye")
"""

FAILING = """
    from datetime import datetime
    from miniflow import DAG, Bash

    with DAG("failing", start_date=datetime(2026, 1, 1)):
        Bash("boom", "echo about to fail; exit 3")
"""

BROKEN = """
    from miniflow import DAG
    import no_such_module_anywhere
"""


def _one_error_line(stderr: str, *, only: bool = True) -> str:
    """The single `error: ...` line (with `only`, the whole of stderr)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    if only:
        assert lines == errors, stderr
    return errors[0]


# --- database and configuration -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_db_upgrade_twice(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'state' / 'fresh.db'}"
    else:
        dbs: PostgresDatabases = request.getfixturevalue("postgres_dbs")
        url = await dbs.clone(migrated=False)
    cli = Cli(url, tmp_path / "dags", tmp_path / "state")
    first = cli("db", "upgrade")
    assert "upgraded empty ->" in first.stdout
    second = cli("db", "upgrade")
    assert "already at" in second.stdout
    assert "postgres@" not in second.stdout or ":***@" not in second.stdout  # no password to hide


async def test_unmigrated_postgres_refuses_to_start(
    postgres_dbs: PostgresDatabases, tmp_path: Path
) -> None:
    cli = Cli(await postgres_dbs.clone(migrated=False), tmp_path / "dags", tmp_path / "state")
    for args in (["scheduler"], ["dags", "list"]):
        result = cli(*args, expect=2, timeout=30)
        # the daemon logs at INFO; other commands print only the error
        line = _one_error_line(result.stderr, only=args != ["scheduler"])
        assert "miniflow db upgrade" in line


def test_unreachable_database(tmp_path: Path) -> None:
    cli = Cli("postgresql+asyncpg://postgres@127.0.0.1:1/x", tmp_path / "dags", tmp_path / "state")
    for args in (["scheduler"], ["dags", "list"]):
        result = cli(*args, expect=2, timeout=30)
        line = _one_error_line(result.stderr, only=args != ["scheduler"])
        assert "127.0.0.1:1" in line


def test_bad_launcher_setting(sqlite_cli: Cli) -> None:
    sqlite_cli.extra_env["MINIFLOW_LAUNCHER"] = "foo"
    result = sqlite_cli("scheduler", expect=2, timeout=30)
    line = _one_error_line(result.stderr, only=False)
    assert "MINIFLOW_LAUNCHER" in line and "'foo'" in line


@pytest.mark.parametrize("command", [["scheduler"], ["standalone"]])
def test_unusable_state_dir_is_one_clear_error(
    db_url: str, tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "file").write_text("in the way")
    state = tmp_path / "file" / "state"
    cli = Cli(db_url, tmp_path / "dags", state)
    (tmp_path / "dags").mkdir()
    if command == ["standalone"]:
        cli.db_url = f"sqlite+aiosqlite:///{state / 'miniflow.db'}"  # the embedded default
    result = cli(*command, expect=2, timeout=60)
    line = _one_error_line(result.stderr, only=False)
    assert str(state) in line and "state directory" in line, result.stderr


# --- DAGs -----------------------------------------------------------------------------------


def test_dags_list_errors_show_pause(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli.dag("good.py", GOOD)
    cli.dag("broken.py", BROKEN)
    assert not cli.state.exists()  # the embedded default needs no `db upgrade` first
    listed = cli("dags", "list")
    (row,) = lines_with(listed.stdout, "good")
    assert "@daily" in row and "good.py" in row and " no " in row
    assert "broken.py" in listed.stderr and "miniflow dags errors" in listed.stderr

    errors, show = cli.many(("dags", "errors"), ("dags", "show", "good"))
    assert "broken.py" in errors.stdout
    assert "Traceback" in errors.stdout
    assert "ModuleNotFoundError: No module named 'no_such_module_anywhere'" in errors.stdout

    tree_text, params = show.stdout.split("params (", 1)  # the tree, then the DAG's params
    assert '\n  who = "world"\n' in params
    tree = tree_text.splitlines()
    names = [next(n for n in ("good", "hello", "flaky", "bye") if n in line) for line in tree]
    assert names == ["good", "hello", "flaky", "bye"]
    indents = [len(line) - len(line.lstrip(" │└├─")) for line in tree]
    assert indents == sorted(indents) and len(set(indents)) == 4  # a chain: each one deeper

    assert "paused" in cli("dags", "pause", "good").stdout
    (row,) = lines_with(cli("dags", "list").stdout, "good")
    assert " yes " in row
    assert "unpaused" in cli("dags", "unpause", "good").stdout
    (row,) = lines_with(cli("dags", "list").stdout, "good")
    assert " yes " not in row

    missing = cli("dags", "pause", "nope", expect=1)
    assert "nope" in _one_error_line(missing.stderr)

    # a manual run's conf is checked against the DAG's params
    unknown = cli("dags", "trigger", "good", "--conf", '{"whom": "x"}', expect=1)
    line = _one_error_line(unknown.stderr)
    assert "'whom'" in line and "who" in line
    bad_json = cli("dags", "trigger", "good", "--conf", "{nope", expect=1)
    assert "not valid JSON" in _one_error_line(bad_json.stderr)
    assert query_sync(cli.db_url, store_runs.list_runs) == []  # nothing was created


def test_broken_file_keeps_last_good_version(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    path = cli.dag("good.py", GOOD)
    (row,) = lines_with(cli("dags", "list").stdout, "good")
    assert not row.rstrip(" │").endswith("yes")
    path.write_text(path.read_text() + "\nraise RuntimeError('typo in production')\n")
    listed = cli("dags", "list")
    (row,) = lines_with(listed.stdout, "good")
    assert row.rstrip(" │").endswith("yes")  # still listed, flagged
    assert "good.py" in listed.stderr
    assert "typo in production" in cli("dags", "errors").stdout
    assert "flaky" in cli("dags", "show", "good").stdout  # the last good definition


def test_a_file_that_hangs_at_import_is_named_while_commands_wait(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli.extra_env["MINIFLOW_PARSE_TIMEOUT"] = "3"
    cli.dag("good.py", GOOD)
    cli.dag("loops.py", "import miniflow  # a dag\nwhile True:\n    pass\n")
    listed = cli("dags", "list")
    assert lines_with(listed.stdout, "good")
    (waiting,) = lines_with(listed.stderr, "still importing")
    assert "loops.py after 2s (it is given 3s before it is killed)" in waiting, listed.stderr


# --- runs: dags test, inspection, logs ------------------------------------------------------


def _run_ids(stdout: str, prefix: str) -> list[str]:
    return [w for line in stdout.splitlines() for w in line.split() if w.startswith(prefix)]


def test_dags_test_then_inspect_the_run(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli.dag("good.py", GOOD)
    cli.dag("failing.py", FAILING)
    ok = cli("dags", "test", "good", "--conf", '{"who": "cli"}')
    assert "success" in ok.stdout
    failed = cli("dags", "test", "failing", expect=1)
    assert "failed" in failed.stdout

    runs = cli("runs", "list").stdout
    (good_run,) = _run_ids(lines_with(runs, "good")[0], "test__")
    (fail_run,) = _run_ids(lines_with(runs, "failing")[0], "test__")
    assert "success" in lines_with(runs, "good")[0] and "failed" in lines_with(runs, "failing")[0]

    tasks, failing_tasks = cli.many(
        ("tasks", "list", "good", good_run), ("tasks", "list", "failing", fail_run)
    )
    (flaky,) = lines_with(tasks.stdout, "flaky")
    assert [c.strip() for c in flaky.split("│")[2:4]] == ["success", "2"]
    (boom,) = lines_with(failing_tasks.stdout, "boom")
    cells = [c.strip() for c in boom.split("│")]
    assert cells[2:4] == ["failed", "1"] and cells[5] == "3"
    assert "exit code 3" in cells[6]

    hello, flaky_log, first, boom_log = cli.many(
        ("tasks", "logs", "good", good_run, "hello"),
        ("tasks", "logs", "good", good_run, "flaky"),
        ("tasks", "logs", "good", good_run, "flaky", "--try", "1"),
        ("tasks", "logs", "failing", fail_run, "boom"),
    )
    assert "hello cli try 1" in hello.stdout
    assert "flaky try 2" in flaky_log.stdout and "flaky try 1" not in flaky_log.stdout
    assert "flaky try 1" in first.stdout and "flaky try 2" not in first.stdout
    assert "about to fail" in boom_log.stdout
    nine = cli("tasks", "logs", "good", good_run, "flaky", "--try", "9", expect=1)
    assert "tries: 1, 2" in _one_error_line(nine.stderr)


def test_dags_test_streams_states_and_logs_and_replaces_its_earlier_run(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    cli = sqlite_cli
    go = tmp_path / "go"
    cli.dag(
        "streamed.py",
        f"""
        from datetime import datetime
        from miniflow import DAG, Bash

        with DAG("streamed", start_date=datetime(2026, 1, 1)):
            Bash("first", "echo one") >> Bash(
                "slow", "echo before; while [ ! -e {go} ]; do sleep 0.05; done; echo after"
            )
        """,
    )
    log = tmp_path / "test.log"
    date = ("--logical-date", "2026-03-01")
    tested = spawn_cli(["dags", "test", "streamed", *date], cli.env, log)
    try:
        # Streamed while the run goes: the slow task's first line, before it is let go.
        wait_for(lambda: "slow | before" in log.read_text(), 60, "the streamed log line")
        assert tested.poll() is None and "slow | after" not in log.read_text()
        go.touch()
        assert tested.wait(60) == 0
    finally:
        stop(tested)
    lines = log.read_text().splitlines()

    def at(text: str) -> int:
        (index,) = [i for i, line in enumerate(lines) if line.endswith(text)]
        return index

    assert at("first: success (try 1)") < at("slow: running (try 1)") < at("slow | before")
    assert at("slow | before") < at("slow | after") < at("slow: success (try 1)")
    assert "first | one" in lines
    assert lines[-1] == "run test__2026-03-01T00:00:00+00:00: success"

    again = cli("dags", "test", "streamed", *date)  # the same date: replaced, not refused
    assert "(replacing the earlier test run of that date)" in again.stdout
    assert "slow | after" in again.stdout and "slow: success (try 2)" in again.stdout
    (row,) = lines_with(cli("runs", "list", "streamed").stdout, "test__")
    assert [c.strip() for c in row.split("│")[4:6]] == ["test", "success"]


# --- the scheduler daemon: trigger --wait, clear, SIGTERM -----------------------------------


def test_trigger_wait_without_a_scheduler_says_so_and_keeps_waiting(
    cli: Cli, tmp_path: Path
) -> None:
    cli.dag("good.py", GOOD)
    log = tmp_path / "wait.log"
    waiting = spawn_cli(["dags", "trigger", "good", "--wait"], cli.env, log)
    try:
        wait_for(lambda: "no scheduler" in log.read_text(), 30, "the no-scheduler line")
        (line,) = lines_with(log.read_text(), "no scheduler")
        assert line == (
            "no scheduler is running against this database (none heartbeat in the last 30 s); "
            "start one with `miniflow scheduler`"
        )
        assert waiting.poll() is None  # still waiting for the run
        assert stop(waiting, signal.SIGINT) == 130  # Ctrl-C ends the wait (no SIGKILL)
    finally:
        stop(waiting, signal.SIGINT)


async def test_scheduler_trigger_wait_and_clear(cli: Cli, tmp_path: Path) -> None:
    cli.dag("good.py", GOOD)
    cli.dag("failing.py", FAILING)
    cli("dags", "pause", "good")  # only manual runs in this test
    scheduler = spawn_cli(["scheduler"], cli.env, tmp_path / "scheduler.log")
    try:
        failed = cli("dags", "trigger", "failing", "--wait", expect=1, timeout=90)
        assert "failed" in failed.stdout
        triggered = cli("dags", "trigger", "good", "--wait", timeout=90)
        (run_id,) = re.findall(r"created run (\S+) of good", triggered.stdout)
        assert "success" in triggered.stdout
        assert "no scheduler" not in triggered.stderr  # this one heartbeats
        # piped: the progress line, then the table on a line of its own
        (top,) = [line for line in triggered.stdout.splitlines() if "┏" in line]
        assert top.startswith("┏"), triggered.stdout

        async def tis() -> dict[str, object]:
            rows = await query(cli.db_url, store_tis.list_for_run, "good", run_id)
            return {r.task_id: (r.state, r.try_number) for r in rows}

        assert await tis() == {
            "hello": ("success", 1),
            "flaky": ("success", 2),
            "bye": ("success", 1),
        }
        cleared = cli("tasks", "clear", "good", run_id, "flaky", "--downstream").stdout
        assert "flaky" in cleared and "bye" in cleared and "hello" not in cleared

        async def rerun_done() -> bool:
            run = await query(cli.db_url, store_runs.get_run, "good", run_id)
            return run.state in ("success", "failed") and (await tis())["bye"][1] == 2

        await until(rerun_done, 60, "the cleared tasks to run again")
        assert await tis() == {
            "hello": ("success", 1),
            "flaky": ("success", 3),
            "bye": ("success", 2),
        }
        assert (await query(cli.db_url, store_runs.get_run, "good", run_id)).state == "success"
        assert "bye" in cli("tasks", "logs", "good", run_id, "bye", "--try", "2").stdout
        code = stop(scheduler, signal.SIGTERM)
    finally:
        kill_group(scheduler)
        scheduler.wait(5)
    log = (tmp_path / "scheduler.log").read_text()
    assert code == 0, log
    assert "Traceback" not in log


def test_standalone_with_a_missing_dags_folder_is_one_clear_error(tmp_path: Path) -> None:
    env = cli_env("", tmp_path / "no-such-folder", tmp_path / "state")
    del env["MINIFLOW_DATABASE_URL"]
    result = run_cli(["standalone", "--exit-when-done"], env)
    assert result.returncode == 2
    assert "no-such-folder does not exist" in result.stderr
    assert "Traceback" not in result.stderr


# --- DAG versions -----------------------------------------------------------------------------

VERSIONED = """
    from datetime import datetime
    from miniflow import DAG, Bash, Pod

    with DAG("ver", start_date=datetime(2026, 1, 1)):
        gate = Bash("gate", "while [ ! -e {flag} ]; do sleep 0.05; done")
        gate >> Bash("q", "echo bash-v1")
        gate >> Pod("p", image="busybox:1.36", command=["sh", "-c", "echo pod-v1"])
"""


async def test_runs_keep_their_version_when_the_cli_parses_an_edit_first(
    cli: Cli, tmp_path: Path
) -> None:
    """A run created before an edit runs its own tasks and commands; a run created after runs
    the new ones, although only the CLI parsed the edit (the scheduler never re-parses here)."""
    flag = tmp_path / "go"
    path = cli.dag("ver.py", VERSIONED.format(flag=flag))
    cli("dags", "list")
    env = {**cli.env, "MINIFLOW_PARSE_INTERVAL": "3600"}
    scheduler = spawn_cli(["scheduler"], env, tmp_path / "scheduler.log")
    try:
        (first,) = re.findall(r"created run (\S+) ", cli("dags", "trigger", "ver").stdout)

        async def gate_running() -> bool:
            rows = await query(cli.db_url, store_tis.list_for_run, "ver", first)
            return any(r.task_id == "gate" and r.state == "running" for r in rows)

        await until(gate_running, 60, "run 1's gate task to start")
        source = path.read_text().replace('"q"', '"r"').replace("-v1", "-v2")
        path.write_text(source)
        (second,) = re.findall(r"created run (\S+) ", cli("dags", "trigger", "ver").stdout)
        flag.touch()

        async def both_done() -> bool:
            runs = [await query(cli.db_url, store_runs.get_run, "ver", r) for r in (first, second)]
            return all(r.state in ("success", "failed") for r in runs)

        await until(both_done, 90, "both runs to finish")
        states = {
            run_id: {
                r.task_id: r.state
                for r in await query(cli.db_url, store_tis.list_for_run, "ver", run_id)
            }
            for run_id in (first, second)
        }
        assert states == {
            first: {"gate": "success", "q": "success", "p": "success"},
            second: {"gate": "success", "r": "success", "p": "success"},
        }
        for run_id, task_id, text in (
            (first, "q", "bash-v1"),
            (first, "p", "pod-v1"),
            (second, "r", "bash-v2"),
            (second, "p", "pod-v2"),
        ):
            assert text in cli("tasks", "logs", "ver", run_id, task_id).stdout, (run_id, task_id)
        for run_id in (first, second):
            assert (await query(cli.db_url, store_runs.get_run, "ver", run_id)).state == "success"
        code = stop(scheduler, signal.SIGTERM)
    finally:
        kill_group(scheduler)
        scheduler.wait(5)
    log = (tmp_path / "scheduler.log").read_text()
    assert code == 0, log
    assert "Traceback" not in log


HELPED = """
    from datetime import datetime
    from miniflow import DAG, Bash
    from cli_helper import COMMAND

    with DAG("helped", start_date=datetime(2026, 1, 1)):
        Bash("t", COMMAND)
"""


async def test_dags_reparse_picks_up_an_edited_helper_module(cli: Cli) -> None:
    async def command() -> str:
        row = await query(cli.db_url, store_dags.get_dag, "helped")
        return str(row.serialized["tasks"]["t"]["command"])

    helper = cli.dag("cli_helper.py", 'COMMAND = "echo one"\n')
    cli.dag("helped.py", HELPED)
    cli.dag("broken.py", BROKEN)
    cli("dags", "list", expect=0)
    helper.write_text('COMMAND = "echo two, longer"\n')
    cli("dags", "list")  # a CLI parse only parses changed DAG files: still the old version
    assert await command() == "echo one"

    one = cli("dags", "reparse", "helped.py")
    assert one.stdout == "helped.py: 1 DAG(s): helped\n"
    assert await command() == "echo two, longer"

    every = cli("dags", "reparse")  # same content again: reported, no new version
    assert every.stdout.splitlines() == [
        "broken.py: import error: ModuleNotFoundError: No module named 'no_such_module_anywhere'",
        "helped.py: 1 DAG(s): helped",
    ]
    assert len(await query(cli.db_url, _versions_of, "helped")) == 2

    missing = cli("dags", "reparse", "nope.py", expect=1)
    assert "nope.py" in _one_error_line(missing.stderr)
    not_a_dag = cli("dags", "reparse", "cli_helper.py", expect=1)
    assert "not a DAG file" in _one_error_line(not_a_dag.stderr)


async def _versions_of(session: Any, dag_id: str) -> list[Any]:
    query = select(DagVersion).where(DagVersion.dag_id == dag_id)
    return list((await session.execute(query)).scalars())


# --- rough edges ----------------------------------------------------------------------------

RESULTS = """
    from datetime import datetime, timedelta
    from miniflow import DAG, Bash, task

    with DAG("results", start_date=datetime(2026, 1, 1)):
        flaky = Bash("flaky", "echo try {{ try_number }}; test {{ try_number }} -ge 2",
                     retries=1, retry_delay=timedelta(seconds=0.2))

        @task
        def count() -> dict:
            return {"n": 3, "names": ["a", "b"]}

        flaky >> count()
"""


def test_version() -> None:
    from importlib.metadata import version

    result = run_cli(["--version"], cli_env("", Path("/nonexistent"), Path("/nonexistent")))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"miniflow, version {version('miniflow')}"


def test_global_options_after_the_subcommand(sqlite_cli: Cli, tmp_path: Path) -> None:
    cli = sqlite_cli
    cli.dag("good.py", GOOD)
    env = cli.env
    dags, url = env.pop("MINIFLOW_DAGS_FOLDER"), env.pop("MINIFLOW_DATABASE_URL")
    for args in (
        ["dags", "list", "--dags-folder", dags, "--database-url", url],
        ["--dags-folder", dags, "dags", "list", "--database-url", url],
        ["--dags-folder", dags, "--database-url", url, "dags", "list"],
    ):
        result = run_cli(args, env)
        assert result.returncode == 0, (args, result.stderr)
        (row,) = lines_with(result.stdout, "good")
        assert "@daily" in row
    missing = run_cli(["standalone", "--dags-folder", str(tmp_path / "none")], env)
    assert missing.returncode == 2
    assert f"DAGs folder {tmp_path / 'none'} does not exist" in _one_error_line(missing.stderr)


def test_latest_and_run_id_prefixes(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli.dag("good.py", GOOD)
    for date in ("2026-01-01", "2026-02-01"):
        cli("dags", "test", "good", "--logical-date", date)
    january, february = "test__2026-01-01T00:00:00+00:00", "test__2026-02-01T00:00:00+00:00"

    default, latest, prefix = cli.many(
        ("tasks", "list", "good"), ("tasks", "list", "good", "latest"),
        ("tasks", "list", "good", "test__2026-01"),
    )  # fmt: skip
    assert default.stdout.splitlines()[0] == f"good run {february}"
    assert latest.stdout == default.stdout
    assert prefix.stdout.splitlines()[0] == f"good run {january}"
    assert lines_with(prefix.stdout, "flaky")

    logs = cli("tasks", "logs", "good", "hello")
    assert "hello world try 1" in logs.stdout
    ambiguous = cli("tasks", "logs", "good", "test__", "hello", expect=1)
    line = _one_error_line(ambiguous.stderr)
    assert "ambiguous" in line and january in line and february in line
    cleared = cli("tasks", "clear", "good", "test__2026-01", "bye")
    assert f"cleared bye in good/{january}" in cleared.stdout


def test_tasks_result_and_all_tries(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli.dag("results.py", RESULTS)
    cli("dags", "test", "results")
    result = cli("tasks", "result", "results", "count")
    assert json.loads(result.stdout) == {"n": 3, "names": ["a", "b"]}

    tries = cli("tasks", "list", "results", "--all-tries").stdout
    first, second = lines_with(tries, "flaky")
    cells = [c.strip() for c in first.split("│")]
    assert cells[2:4] == ["1", "up_for_retry"] and cells[6:8] == ["1", "Error"]
    assert [c.strip() for c in second.split("│")[2:4]] == ["2", "success"]
    (count,) = lines_with(tries, "count")
    assert "Completed" in count


def test_ids_are_never_folded_in_tables(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli.dag("good.py", GOOD)
    run_id = "manual__" + "x" * 180  # wider than a piped table (200 columns) leaves room for
    cli("dags", "trigger", "good", "--run-id", run_id)
    (row,) = lines_with(cli("runs", "list").stdout, "good")
    assert run_id in row


LAYERED = """
    from miniflow import DAG, Bash

    with DAG("layered"):
        start = Bash("start", "true")
        previous = [start]
        for layer in range(8):
            current = [Bash(f"t{layer}_{i}", "true") for i in range(4)]
            for task in current:
                previous >> task
            previous = current
"""


def test_dags_show_prints_each_task_once(sqlite_cli: Cli) -> None:
    """8 layers of 4 tasks, each task after all of the layer above: 33 tasks, 2**16
    paths; the old tree printed every path (87,382 lines)."""
    cli = sqlite_cli
    cli.dag("layered.py", LAYERED)
    shown = cli("dags", "show", "layered", timeout=30).stdout.splitlines()
    assert len(shown) == 1 + 33
    for task_id in ["start"] + [f"t{layer}_{i}" for layer in range(8) for i in range(4)]:
        assert len([line for line in shown if re.search(rf"[─ ]{task_id} \(bash\)", line)]) == 1
    (t7,) = [line for line in shown if " t7_3 (bash)" in line]
    assert "also after t6_1, t6_2, t6_3" in t7 or "also after t6_0, t6_1, t6_2" in t7


def test_home_holds_the_database_wherever_commands_run(tmp_path: Path) -> None:
    """With only MINIFLOW_HOME set, commands run from any folder share one database."""
    home = tmp_path / "home"
    write_dag(home / "dags", "good.py", GOOD)
    env = cli_env("", home / "dags", home)
    for name in ("MINIFLOW_DATABASE_URL", "MINIFLOW_DAGS_FOLDER", "MINIFLOW_STATE_DIR"):
        del env[name]
    env["MINIFLOW_HOME"] = str(home)
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    tested = run_cli(["dags", "test", "good"], env, cwd=here)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    listed = run_cli(["runs", "list"], env, cwd=there)
    assert listed.returncode == 0, listed.stderr
    assert lines_with(listed.stdout, "good")
    assert (home / "miniflow.db").exists()
    assert list(here.iterdir()) == [] and list(there.iterdir()) == []  # no ./.miniflow

    standalone = run_cli(["standalone", "--trigger-all", "--exit-when-done"], env, cwd=there)
    assert standalone.returncode == 0, standalone.stdout + standalone.stderr
    assert f"miniflow home: {home}" in standalone.stdout
    assert f"DAGs: {home / 'dags'}" in standalone.stdout
# --- stopping: the daemon leaves tasks running, foreground commands stop them ---------------

LONG_TASK = """
    from datetime import datetime
    import os, time
    from pathlib import Path
    from miniflow import DAG, task

    with DAG("long", start_date=datetime(2026, 1, 1)):
        @task
        def slow() -> str:
            Path({started!r}).write_text(str(os.getpid()))
            while not Path({go!r}).exists():
                time.sleep(0.05)
            return "done"

        slow()
"""


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (orphans may wait for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def _kill_groups(pgids: list[int]) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _text_of(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


async def _file_text(path: Path) -> str | None:
    """A file's content once it has some (for `until`)."""
    return _text_of(path)


def _children(pid: int) -> list[int]:
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            found += map(int, Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return found


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]])
async def test_scheduler_stops_at_once_and_leaves_its_task_running(
    cli: Cli, tmp_path: Path, signals: list[signal.Signals]
) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    cli.dag("long.py", LONG_TASK.format(started=str(started), go=str(go)))
    (run_id,) = re.findall(r"created run (\S+) of long", cli("dags", "trigger", "long").stdout)
    groups: list[int] = []
    first = spawn_cli(["scheduler"], cli.env, tmp_path / "scheduler1.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        task_pid = int(await until(lambda: _file_text(started), 60, "the task to start"))
        groups.append(os.getpgid(task_pid))
        helpers = _children(first.pid)  # forkservers, resource tracker: must not linger
        began = time.monotonic()
        for sig in signals:  # a second Ctrl-C hurries the stop, it orphans nothing
            first.send_signal(sig)
        assert first.wait(10) == 0
        assert time.monotonic() - began < 5
        assert _alive(task_pid)  # not killed, not waited for
        wait_for(lambda: not any(map(_alive, helpers)), 10, "the scheduler's helpers to exit")

        second = spawn_cli(["scheduler"], cli.env, tmp_path / "scheduler2.log")
        log2 = tmp_path / "scheduler2.log"

        async def adopted() -> bool:
            return "adopting 1 tries" in (_text_of(log2) or "")

        await until(adopted, 60, "the second scheduler to adopt the running try")
        assert _alive(task_pid)

        async def run_state() -> str | None:
            run = await query(cli.db_url, store_runs.get_run, "long", run_id)
            return run.state if run.state in ("success", "failed") else None

        go.touch()
        assert await until(run_state, 60, "the run to finish") == "success"

        async def exit_recorded() -> bool:  # the worker records success before it exits
            (attempt,) = await query(cli.db_url, store_attempts.for_run, "long", run_id)
            return attempt.ended_at is not None

        await until(exit_recorded, 30, "the adopted try's exit to be recorded")
        assert stop(second, signal.SIGTERM) == 0
    finally:
        for proc in (first, second):
            if proc is not None:
                kill_group(proc)
                proc.wait(5)
        _kill_groups(groups)
    (ti,) = await query(cli.db_url, store_tis.list_for_run, "long", run_id)
    assert (ti.state, ti.try_number, ti.result) == ("success", 1, "done")
    (attempt,) = await query(cli.db_url, store_attempts.for_run, "long", run_id)
    assert (attempt.state, attempt.exit_code) == ("success", 0)


STOPPABLE = """
    from datetime import datetime, timedelta
    import os, time
    from pathlib import Path
    from miniflow import DAG, Bash, task

    with DAG("stoppable", start_date=datetime(2026, 1, 1)):
        Bash("sleeper", "echo $$ > {bash_pid}; exec sleep 600",
             retries=2, retry_delay=timedelta(seconds=0))

        @task(retries=2, retry_delay=timedelta(seconds=0))
        def spinner() -> None:
            Path({py_pid!r}).write_text(str(os.getpid()))
            time.sleep(600)

        spinner()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("command", ["standalone", "dags test"])
async def test_foreground_commands_stop_their_tasks(
    sqlite_cli: Cli, tmp_path: Path, command: str, sig: signal.Signals
) -> None:
    cli = sqlite_cli
    bash_pid, py_pid = tmp_path / "bash.pid", tmp_path / "py.pid"
    cli.dag("stoppable.py", STOPPABLE.format(bash_pid=str(bash_pid), py_pid=str(py_pid)))
    args = (
        ["standalone", "--trigger-all"]
        if command == "standalone"
        else ["dags", "test", "stoppable"]
    )
    proc = spawn_cli(args, cli.env, tmp_path / "out.log")
    groups: list[int] = []
    try:
        pids = [
            int(await until(lambda p=p: _file_text(p), 60, f"{p.name} to be written"))
            for p in (bash_pid, py_pid)
        ]
        groups = [os.getpgid(pid) for pid in pids]
        proc.send_signal(sig)
        code = proc.wait(30)
    finally:
        kill_group(proc)
        proc.wait(5)
        leftovers = {g: _group_members(g) for g in groups}
        _kill_groups(groups)
    output = (tmp_path / "out.log").read_text()
    assert code == 1, output
    assert leftovers == {g: [] for g in groups}, output  # no process left behind
    (run,) = await query(cli.db_url, store_runs.list_runs, "stoppable", 10)
    assert run.state == "failed"
    tis = {
        t.task_id: t
        for t in await query(cli.db_url, store_tis.list_for_run, "stoppable", run.run_id)
    }
    for ti in tis.values():
        assert (ti.state, ti.try_number) == ("failed", 1)  # no retry spent or scheduled
        assert ti.error == f"stopped: the run was stopped by {sig.name}"
    attempts = await query(cli.db_url, store_attempts.for_run, "stoppable", run.run_id)
    assert sorted((a.task_id, a.state, a.reason) for a in attempts) == [
        ("sleeper", "failed", "Stopped"),
        ("spinner", "failed", "Stopped"),
    ]
    assert all(a.ended_at is not None for a in attempts)
    assert "Traceback" not in output


def test_bash_tasks_do_not_see_the_database_url(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli.dag(
        "env.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash

        with DAG("env", start_date=datetime(2026, 1, 1)):
            Bash("show", "env")
        """,
    )
    cli.extra_env["MINIFLOW_SECRET_TOKEN"] = "t0ps3cret"
    cli.extra_env["VISIBLE_SETTING"] = "yes"
    assert "success" in cli("dags", "test", "env").stdout
    (run_id,) = _run_ids(cli("runs", "list").stdout, "test__")
    shown = cli("tasks", "logs", "env", run_id, "show").stdout
    assert "VISIBLE_SETTING=yes" in shown
    assert "MINIFLOW_" not in shown and "t0ps3cret" not in shown
    assert cli.db_url.partition(":///")[2] not in shown  # the database URL, in any variable
