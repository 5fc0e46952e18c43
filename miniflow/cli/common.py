"""Helpers shared by the CLI modules: the command group, global options, async commands.

Every failure a user can cause (a wrong argument, an unknown id, a bad
setting, an unreachable database) ends as one `error: ...` line on stderr and
a non-zero exit: click's usage errors are reformatted by `MiniflowGroup`,
`MiniflowError`s by `command_runner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from miniflow.config import Config, load_config
from miniflow.errors import ConfigError, MiniflowError, SchemaError, ServiceUnavailable

P = ParamSpec("P")
T = TypeVar("T")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "dags"  # the repository's

output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json: the REST API's field names, for scripts.",
)
"""`--output json` of the list commands."""


class MiniflowGroup(click.Group):
    """The root group: click's usage errors become one `error:` line (exit 2)."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # `miniflow dags` alone: the group's help, as click does
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "miniflow"
            message = " ".join(exc.format_message().split())
            click.echo(f"error: {message} (see `{where} --help`)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        # The command returned: its work is done (a scheduler stopped in order has said
        # goodbye, reaped its children and closed its engine). No command that returns
        # runs user code in this process; the ones that do end with their own `sys.exit`.
        leave(rv if isinstance(rv, int) else 0)


# --- options accepted before or after the subcommand ---------------------------------------


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Store a global option given after the subcommand where the group put its own."""
    if value is None or value is False:
        return
    obj = ctx.find_root().ensure_object(dict)
    assert param.name is not None
    obj[param.name] = value
    if param.name == "verbose":
        logging.getLogger().setLevel(logging.INFO)


def global_options() -> list[click.Option]:
    """`--dags-folder`, `--database-url`, `-v`: fresh objects for one command."""
    return [
        click.Option(
            ["--dags-folder"],
            type=click.Path(path_type=Path),
            help="Overrides MINIFLOW_DAGS_FOLDER.",
            expose_value=False,
            callback=_remember,
        ),
        click.Option(
            ["--database-url"],
            help="Overrides MINIFLOW_DATABASE_URL.",
            expose_value=False,
            callback=_remember,
        ),
        click.Option(
            ["-v", "--verbose"],
            is_flag=True,
            default=None,
            help="Log at INFO level.",
            expose_value=False,
            callback=_remember,
        ),
    ]


def add_global_options(group: click.Group) -> None:
    """Give every leaf command the group's options, so `dags list --dags-folder X` works."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            add_global_options(command)
        else:
            command.params.extend(global_options())


# --- running commands ----------------------------------------------------------------------


def _exit_code(exc: MiniflowError) -> int:
    return 2 if isinstance(exc, ConfigError | ServiceUnavailable | SchemaError) else 1


def command_runner(func: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Run an async command; print MiniflowErrors as one line."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return asyncio.run(func(*args, **kwargs))  # type: ignore[arg-type]
        except MiniflowError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(_exit_code(exc))
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


_quick_exit = False
"""Set by the console script (`allow_quick_exit`): `leave` may skip the teardown."""


def allow_quick_exit() -> None:
    global _quick_exit
    _quick_exit = True


def leave(code: int) -> NoReturn:
    """`sys.exit(code)` for a command whose work is done and whose output is written.

    Under the console script it ends the process without the interpreter's teardown
    (`atexit` handlers, then every object of every module freed one by one: ~0.07 s
    once SQLAlchemy and rich are loaded, a sixth of a short command, and CPU a replaced
    scheduler's peers could use); stdout, stderr and logging are flushed first. Only
    for commands that run no user code in this process (the teardown is where a file
    left open gets flushed); in tests (click's runner) it is `sys.exit`.
    """
    if not _quick_exit:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def _config(ctx: click.Context, **overrides: Any) -> Config:
    base: dict[str, Any] = dict(ctx.find_root().obj or {})
    base.pop("verbose", None)
    try:
        return load_config(**{**base, **overrides})
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def split_task_ref(ids: tuple[str, ...]) -> tuple[str, str | None, str]:
    """`DAG [RUN] TASK` → (dag, run or None for the latest run, task)."""
    if len(ids) == 2:
        return ids[0], None, ids[1]
    if len(ids) == 3:
        return ids[0], ids[1], ids[2]
    raise click.UsageError(
        f"expected DAG [RUN] TASK, got {len(ids)} argument(s)", ctx=click.get_current_context()
    )


def _now() -> datetime:
    return datetime.now(UTC)
