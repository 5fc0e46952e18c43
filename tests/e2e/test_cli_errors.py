"""Every `miniflow` command on bad input: one `error:` line, a non-zero exit, nothing written.

Bad input is a wrong argument, an unknown DAG / run / task id, a malformed conf,
a bad setting, a malformed, wrong or unreachable database URL. Each case runs
the real command as a subprocess and compares the whole database (every row of
every table) and the state folder before and after.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.helpers import run_cli

GOOD = """
    from datetime import datetime
    from miniflow import DAG, Bash, task

    with DAG("good", start_date=datetime(2026, 1, 1), params={"who": "world"}):
        hello = Bash("hello", "echo hello {{ params.who }}")

        @task
        def count() -> dict:
            return {"n": 3}

        hello >> count()
"""

# One of each command, with arguments that would be fine on a working database.
EVERY_COMMAND = [
    ("db", "upgrade"),
    ("scheduler",),
    ("standalone", "--exit-when-done"),
    ("dags", "list"),
    ("dags", "errors"),
    ("dags", "show", "good"),
    ("dags", "pause", "good"),
    ("dags", "unpause", "good"),
    ("dags", "trigger", "good"),
    ("dags", "test", "good"),
    ("runs", "list"),
    ("tasks", "list", "good"),
    ("tasks", "logs", "good", "hello"),
    ("tasks", "result", "good", "count"),
    ("tasks", "clear", "good", "latest", "hello"),
    ("pools", "set", "p", "1"),
    ("pools", "list"),
]
# These log at INFO while starting, before the error line.
LOGGING = {("scheduler",)}


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_error_line(stderr: str, *, only: bool = True) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    if only:
        assert lines == errors, stderr
    return errors[0]


def snapshot(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of the SQLite database."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"'), key=repr) for t in tables}


def files(folder: Path) -> set[str]:
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if not p.name.startswith("miniflow.db")  # WAL/SHM files come and go with readers
    }


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, str]]:
    """A SQLite database with the DAG `good` and one finished run of it."""
    tmp = tmp_path_factory.mktemp("cli-errors")
    state = tmp / "state"
    cli = Cli(f"sqlite+aiosqlite:///{state / 'miniflow.db'}", tmp / "dags", state)
    cli.dag("good.py", GOOD)
    cli("dags", "test", "good", timeout=90)
    (run_id,) = [
        w for line in cli("runs", "list").stdout.splitlines() for w in line.split()
        if w.startswith("test__")
    ]  # fmt: skip
    yield cli, run_id


BAD_INPUT = [
    # wrong arguments
    (("dags", "show"), 2, "Missing argument 'DAG_ID'"),
    (("dags", "list", "--bogus"), 2, "No such option"),
    (("nope",), 2, "No such command"),
    (("tasks", "logs", "good"), 2, "expected DAG [RUN] TASK"),
    (("tasks", "result", "good", "a", "b", "c"), 2, "expected DAG [RUN] TASK"),
    (("tasks", "logs", "good", "hello", "--try", "x"), 2, "'x' is not a valid integer"),
    (("pools", "set", "p", "-1"), 2, "a pool has 0 to"),
    (("pools", "set", "p", "lots"), 2, "'lots' is not a valid integer"),
    (("pools", "set", "p", "99999999999"), 2, "a pool has 0 to"),
    (("runs", "list", "--limit", "0"), 2, "--limit"),
    (("dags", "trigger", "good", "--logical-date", "yesterday"), 2, "not an ISO date"),
    (("dags", "trigger", "good", "--run-id", ""), 2, "a run id has 1 to"),
    (("dags", "trigger", "good", "--run-id", "latest"), 2, "newest run"),
    (("dags", "trigger", "good", "--run-id", "x" * 251), 2, "a run id has 1 to"),
    # unknown ids
    (("dags", "show", "nope"), 1, "no DAG 'nope'"),
    (("dags", "pause", "nope"), 1, "no DAG 'nope'"),
    (("dags", "trigger", "nope"), 1, "no DAG 'nope'"),
    (("dags", "test", "nope"), 1, "no DAG 'nope'"),
    (("runs", "list", "nope"), 1, "no DAG 'nope'"),
    (("tasks", "list", "nope"), 1, "no DAG 'nope'"),
    (("tasks", "list", "good", "nope"), 1, "DAG 'good' has no run 'nope'"),
    (("tasks", "logs", "good", "nope"), 1, "has no task 'nope' (its tasks: hello, count)"),
    (("tasks", "logs", "good", "latest", "hello", "--try", "9"), 1, "has no try 9 (tries: 1)"),
    (("tasks", "result", "good", "hello"), 1, "only @task functions have results"),
    (("tasks", "result", "nope", "hello"), 1, "no DAG 'nope'"),
    (("tasks", "clear", "good", "nope", "hello"), 1, "DAG 'good' has no run 'nope'"),
    (("tasks", "clear", "good", "latest", "nope"), 1, "DAG 'good' has no task 'nope'"),
    (("dags", "trigger", "good", "--run-id", "{run}"), 1, "already has a run"),
    # malformed conf
    (("dags", "trigger", "good", "--conf", "{nope"), 1, "--conf is not valid JSON"),
    (("dags", "trigger", "good", "--conf", "[1]"), 1, "--conf must be a JSON object"),
    (("dags", "trigger", "good", "--conf", '{"who": NaN}'), 1, "NaN is not a JSON number"),
    (("dags", "trigger", "good", "--conf", '{"whom": 1}'), 1, "has no param(s) 'whom'"),
    (("dags", "test", "good", "--conf", "{nope"), 1, "--conf is not valid JSON"),
]


@pytest.mark.parametrize(("args", "code", "message"), BAD_INPUT, ids=lambda v: str(v)[:40])
def test_bad_input_is_one_line_and_writes_nothing(
    prepared: tuple[Cli, str], args: tuple[str, ...], code: int, message: str
) -> None:
    cli, run_id = prepared
    args = tuple(a.replace("{run}", run_id) for a in args)
    before, before_files = snapshot(cli.state / "miniflow.db"), files(cli.state)
    result = cli(*args, expect=code)
    assert message in one_error_line(result.stderr)
    assert result.stdout == ""
    assert snapshot(cli.state / "miniflow.db") == before
    assert files(cli.state) == before_files


@pytest.mark.parametrize("args", EVERY_COMMAND, ids=" ".join)
def test_unreachable_postgres(args: tuple[str, ...], tmp_path: Path) -> None:
    port = closed_port()
    cli = Cli(
        f"postgresql+asyncpg://postgres:pw@127.0.0.1:{port}/x",
        tmp_path / "dags",
        tmp_path / "state",
    )
    cli.dag("good.py", GOOD)
    result = cli(*args, expect=2, timeout=40)
    line = one_error_line(result.stderr, only=args not in LOGGING)
    assert f"127.0.0.1:{port}" in line and "pw" not in line
    assert not cli.state.exists()


@pytest.mark.parametrize("args", EVERY_COMMAND, ids=" ".join)
def test_malformed_database_url(args: tuple[str, ...], tmp_path: Path) -> None:
    cli = Cli("postgresql+asyncpg://u:pw@127.0.0.1:abc/x", tmp_path / "dags", tmp_path / "state")
    cli.dag("good.py", GOOD)
    result = cli(*args, expect=2)
    line = one_error_line(result.stderr)
    assert "MINIFLOW_DATABASE_URL" in line and "port must be a number" in line
    assert "pw" not in line
    assert result.stdout == "" and not cli.state.exists()


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"MINIFLOW_DATABASE_URL": "mysql://u@h/db"}, ("runs", "list"), "must start with"),
        ({"MINIFLOW_HEARTBEAT_INTERVAL": "nan"}, ("dags", "list"), "must be a finite number"),
        ({"MINIFLOW_PARSE_TIMEOUT": "1e999"}, ("dags", "list"), "must be a finite number"),
        ({"MINIFLOW_LAUNCHER": "foo"}, ("standalone",), "MINIFLOW_LAUNCHER must be one of"),
        ({"MINIFLOW_LAUNCHER": "foo"}, ("dags", "list"), "MINIFLOW_LAUNCHER must be one of"),
        ({"MINIFLOW_STATE_DIR": "/proc/no-such-dir"}, ("dags", "list"), "cannot be created"),
        ({"MINIFLOW_STATE_DIR": "/proc/no-such-dir"}, ("pools", "set", "p", "1"), "cannot be"),
        ({"MINIFLOW_CONFIG": "/"}, ("dags", "list"), "cannot read config file /"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_bad_settings(
    env: dict[str, str], args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    cli = Cli("", tmp_path / "dags", tmp_path / "state", extra_env=env)
    cli.dag("good.py", GOOD)
    environ = cli.env
    if not environ["MINIFLOW_DATABASE_URL"]:
        del environ["MINIFLOW_DATABASE_URL"]  # the embedded default in the state dir
    result = run_cli(args, environ, timeout=40)
    assert result.returncode == 2, result.stderr
    assert message in one_error_line(result.stderr)
    assert result.stdout == "" and not cli.state.exists()


@pytest.mark.parametrize(
    "args",
    [("runs", "list"), ("tasks", "list", "good"), ("tasks", "logs", "good", "hello"),
     ("tasks", "result", "good", "count"), ("pools", "list")],
    ids=" ".join,
)  # fmt: skip
def test_reading_commands_never_create_a_database(args: tuple[str, ...], tmp_path: Path) -> None:
    """A read from the wrong folder says there is no database there, instead of
    creating a new empty one and showing an empty table."""
    cli = Cli("", tmp_path / "dags", tmp_path / "state")
    environ = cli.env
    del environ["MINIFLOW_DATABASE_URL"]
    result = run_cli(args, environ)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert f"no miniflow database at {cli.state / 'miniflow.db'}" in line
    assert "MINIFLOW_HOME" in line
    assert not cli.state.exists()
