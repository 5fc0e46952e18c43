"""The CLI's output path: tables printed without a measuring pass when they surely fit,
and the console script's exit without the interpreter's teardown."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest
from rich.console import Console
from rich.table import Table

from miniflow.cli import views


def _table(*rows: tuple[str, str]) -> Table:
    table = Table(views._id("task_id"), "state")
    for row in rows:
        table.add_row(*row)
    return table


def _printed(table: Table, width: int) -> str:
    out = io.StringIO()
    views._print_table(table, Console(file=out, width=width))
    return out.getvalue()


def test_a_table_that_surely_fits_prints_as_measured() -> None:
    rows = [(f"task_{i}", "[green]success[/]") for i in range(20)]
    assert views._surely_fits(_table(*rows), 80)
    measured = io.StringIO()
    Console(file=measured, width=80).print(_table(*rows))
    assert _printed(_table(*rows), 80) == measured.getvalue()


@pytest.mark.parametrize(
    ("task_id", "width"),
    [
        ("t" * 70, 80),  # ids + padding + borders exceed the width
        ("日本語のタスク" * 5, 80),  # 35 characters, 70 cells: judged by cells
    ],
)
def test_a_table_that_may_not_fit_is_measured_and_keeps_its_ids_whole(
    task_id: str, width: int
) -> None:
    table = _table((task_id, "[green]success[/]"))
    assert not views._surely_fits(table, width)
    assert task_id in _printed(_table((task_id, "[green]success[/]")), width)


def test_a_table_of_renderables_is_measured() -> None:
    table = Table("a")
    table.add_row(Table("nested"))
    assert not views._surely_fits(table, 200)


def _exit_script(body: str) -> subprocess.CompletedProcess[bytes]:
    code = textwrap.dedent(
        """
        import logging, sys
        from miniflow.cli.common import allow_quick_exit, leave
        """
    ) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)


def test_quick_exit_writes_everything_and_keeps_the_code() -> None:
    done = _exit_script(
        """
        allow_quick_exit()
        logging.basicConfig(stream=sys.stderr)
        sys.stdout.write("x" * 200_000)  # more than any buffer: flushed before the exit
        logging.getLogger("t").warning("last words")
        import atexit
        atexit.register(lambda: print("teardown ran"))
        leave(3)
        """
    )
    assert done.returncode == 3
    assert done.stdout == b"x" * 200_000
    assert b"last words" in done.stderr
    assert b"teardown ran" not in done.stdout  # the teardown (atexit included) is skipped


def test_leave_is_sys_exit_unless_the_console_script_allowed_more() -> None:
    done = _exit_script(
        """
        import atexit
        atexit.register(lambda: print("teardown ran"))
        leave(4)
        """
    )
    assert done.returncode == 4
    assert b"teardown ran" in done.stdout
