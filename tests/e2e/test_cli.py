"""The real `miniflow` command as a subprocess: exit codes, messages and what it shows."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from miniflow.store import attempts as store_attempts
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
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

    tree = show.stdout.splitlines()
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


# --- the scheduler daemon: trigger --wait, clear, SIGTERM -----------------------------------


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
