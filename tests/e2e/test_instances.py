"""Scheduler instances: registration, and SQLite's one-scheduler rule, through the real CLI."""

from __future__ import annotations

from pathlib import Path

from miniflow.store import instances as store_instances
from tests.e2e.conftest import Cli
from tests.e2e.helpers import query_sync, spawn_cli, stop, wait_for


def _live(cli: Cli) -> list[store_instances.Instance]:
    return [i for i in query_sync(cli.db_url, store_instances.list_all) if i.ended_at is None]


def test_a_second_scheduler_on_one_sqlite_file_refuses_to_start(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    sqlite_cli.dags.mkdir(parents=True)
    sqlite_cli("db", "upgrade")
    first = spawn_cli(["scheduler"], sqlite_cli.env, tmp_path / "first.log")
    try:
        (instance,) = wait_for(lambda: _live(sqlite_cli), 30, "the first scheduler's row")
        assert instance.pid == first.pid
        second = sqlite_cli("scheduler", expect=None, timeout=60)
        assert second.returncode != 0
        output = (second.stderr + second.stdout).splitlines()
        message = [line for line in output if "INFO" not in line and line.strip()]
        assert len(message) == 1, output
        assert "another scheduler is running on this SQLite database" in message[0]
        assert f"pid {first.pid}" in message[0]
        assert first.poll() is None  # the first one is untouched
        assert stop(first) == 0
        # it said goodbye: its row is ended, and a new scheduler may start at once
        assert _live(sqlite_cli) == []
        third = spawn_cli(["scheduler"], sqlite_cli.env, tmp_path / "third.log")
        try:
            wait_for(lambda: [i for i in _live(sqlite_cli) if i.pid == third.pid], 30, "third")
        finally:
            stop(third)
    finally:
        stop(first)


def test_a_killed_schedulers_row_does_not_block_a_restart(sqlite_cli: Cli, tmp_path: Path) -> None:
    import signal

    sqlite_cli.dags.mkdir(parents=True)
    sqlite_cli("db", "upgrade")
    first = spawn_cli(["scheduler"], sqlite_cli.env, tmp_path / "first.log")
    try:
        wait_for(lambda: _live(sqlite_cli), 30, "the first scheduler's row")
    finally:
        stop(first, signal.SIGKILL)
    second = spawn_cli(["scheduler"], sqlite_cli.env, tmp_path / "second.log")
    try:
        wait_for(lambda: [i for i in _live(sqlite_cli) if i.pid == second.pid], 30, "restart")
    finally:
        stop(second)


def test_schedulers_list_shows_each_instance_and_what_it_owns(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    sqlite_cli.dags.mkdir(parents=True)
    sqlite_cli("db", "upgrade")
    first = spawn_cli(["scheduler"], sqlite_cli.env, tmp_path / "first.log")
    try:
        (instance,) = wait_for(lambda: _live(sqlite_cli), 30, "the scheduler's row")
        listed = sqlite_cli("schedulers", "list").stdout
        (line,) = [line for line in listed.splitlines() if instance.id in line]
        assert str(first.pid) in line and "alive" in line
    finally:
        stop(first)
    listed = sqlite_cli("schedulers", "list").stdout
    (line,) = [line for line in listed.splitlines() if instance.id in line]
    assert "stopped" in line


def test_a_scheduler_stopped_while_starting_says_goodbye(sqlite_cli: Cli, tmp_path: Path) -> None:
    """SIGTERM as soon as the instance is registered: it is still starting its launcher."""
    sqlite_cli.dags.mkdir(parents=True)
    sqlite_cli("db", "upgrade")
    proc = spawn_cli(["scheduler"], sqlite_cli.env, tmp_path / "scheduler.log")
    try:
        wait_for(lambda: _live(sqlite_cli), 30, "the scheduler's row", interval=0.01)
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "scheduler.log").read_text()
    assert _live(sqlite_cli) == []  # its row is ended: it said goodbye
