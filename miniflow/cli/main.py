"""The `miniflow` command: scheduler daemon, embedded standalone mode, and admin commands.

Every command turns a `MiniflowError` into one line on stderr and a non-zero
exit (2 for configuration and database problems, 1 for the rest), never a
traceback. Environment variables are read here, once, into a `Config`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from miniflow import log_format
from miniflow.cli.common import (
    EXAMPLES,
    MiniflowGroup,
    _config,
    add_global_options,
    allow_quick_exit,
    command_runner,
    output_option,
)
from miniflow.config import Config


@click.group(cls=MiniflowGroup)
@click.version_option(package_name="miniflow", prog_name="miniflow")
@click.option(
    "--dags-folder", type=click.Path(path_type=Path), help="Overrides MINIFLOW_DAGS_FOLDER."
)
@click.option("--database-url", help="Overrides MINIFLOW_DATABASE_URL.")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.pass_context
def main(
    ctx: click.Context, dags_folder: Path | None, database_url: str | None, verbose: bool
) -> None:
    """miniflow: DAGs in Python files, one pod (or local process) per task.

    The options above are accepted after the subcommand too (`miniflow dags list
    --dags-folder X`). Settings, the SQLite database and logs live in MINIFLOW_HOME
    (default ~/miniflow).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=log_format.TEXT_FORMAT,
    )
    ctx.obj = {"dags_folder": dags_folder, "database_url": database_url}


# --- db ------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create the schema or bring it up to date."""

    @command_runner
    async def run() -> None:
        from miniflow.cli import wiring
        from miniflow.store import schema

        config = _config(ctx)
        async with wiring.open_engine(config, check_schema=False) as engine:
            before, after = await schema.upgrade(engine)
        where = config.safe_database_url()
        if before == after:
            click.echo(f"{where}: schema already at {after}")
        else:
            click.echo(f"{where}: schema upgraded {before or 'empty'} -> {after}")

    run()


# --- scheduler / standalone ---------------------------------------------------------------------


@main.command()
@click.pass_context
def scheduler(ctx: click.Context) -> None:
    """Run the scheduler daemon (configured by MINIFLOW_* variables)."""
    from miniflow.cli import daemon

    config = _config(ctx)
    logging.getLogger().setLevel(logging.INFO)
    log_format.configure(config.log_format)
    _fork_ahead(config)
    command_runner(daemon.run_scheduler)(config)


def _fork_ahead(config: Config) -> None:
    """Fork the local launcher's forkserver now, while this process has imported what
    it shares with the workers and has started no thread (`local_fork.fork_ahead`)."""
    if config.launcher == "local":
        from miniflow.launchers import local_fork
        from miniflow.store import engine as store_engine

        store_engine.load_driver(config.database_url)  # the forkserver's workers use it too
        local_fork.fork_ahead()


@main.command()
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the SQLite database and logs live (default MINIFLOW_HOME, ~/miniflow).",
)
@click.option("--trigger-all", is_flag=True, help="Trigger one run of every DAG at start.")
@click.option(
    "--exit-when-done",
    is_flag=True,
    help="Exit once the runs triggered at start have finished (exit 1 if any failed).",
)
@click.option(
    "--no-webserver",
    is_flag=True,
    help="Do not serve the web UI (MINIFLOW_WEB_HOST:MINIFLOW_WEB_PORT, default 127.0.0.1:8080).",
)
@click.pass_context
def standalone(
    ctx: click.Context,
    state_dir: Path | None,
    trigger_all: bool,
    exit_when_done: bool,
    no_webserver: bool,
) -> None:
    """The embedded default: SQLite + local processes + your DAGs (or the examples), and
    the web UI (its URL is printed)."""
    from miniflow.cli import daemon

    overrides: dict[str, Any] = {"state_dir": state_dir}
    config = _config(ctx, **overrides)  # every setting checked as given, MINIFLOW_LAUNCHER too
    if config.launcher != "local":
        click.echo(
            f"note: standalone runs tasks as local processes (MINIFLOW_LAUNCHER={config.launcher} "
            "is for `miniflow scheduler`)",
            err=True,
        )
    overrides["launcher"] = "local"
    default_dags = config.dags_folder == config.home / "dags"
    if default_dags and not config.dags_folder.is_dir() and EXAMPLES.is_dir():
        overrides["dags_folder"] = EXAMPLES  # a fresh clone: no DAGs of yours yet
    config = _config(ctx, **overrides)
    log_format.configure(config.log_format)
    if not config.dags_folder.is_dir():
        # e.g. an installed wheel, which does not ship the repository's examples
        click.echo(
            f"error: DAGs folder {config.dags_folder} does not exist: "
            "create it, pass --dags-folder or set MINIFLOW_DAGS_FOLDER",
            err=True,
        )
        sys.exit(2)
    click.echo(f"miniflow home: {config.home}  database: {config.safe_database_url()}")
    _fork_ahead(config)
    code = command_runner(daemon.run_standalone)(
        config, trigger_all=trigger_all, exit_when_done=exit_when_done, webserver=not no_webserver
    )
    sys.exit(code)


@main.command()
@click.option("--host", help="Overrides MINIFLOW_WEB_HOST (default 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Overrides MINIFLOW_WEB_PORT (default 8080); 0 picks a free port.",
)
@click.pass_context
def webserver(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the web UI at / and the REST API at /api/v1 (reads the scheduler's database)."""
    from miniflow.web import server

    config = _config(ctx, web_host=host, web_port=port)
    log_format.configure(config.log_format)
    sys.exit(command_runner(server.serve)(config))


# --- dags ----------------------------------------------------------------------------------------


@main.group()
def dags() -> None:
    """List, inspect, pause, trigger and test DAGs."""


@dags.command("list")
@click.option("--no-parse", is_flag=True, help="Show what the database knows without parsing.")
@output_option
@click.pass_context
def dags_list(ctx: click.Context, no_parse: bool, output: str) -> None:
    """DAGs with schedule, next run, paused flag, file and import-error flag."""

    @command_runner
    async def run() -> None:
        from miniflow.cli import operations, views

        config = _config(ctx)
        rows = await operations.list_dags(config, parse=not no_parse)
        if output == "json":
            views.print_json(rows)
        else:
            views.print_dags(rows)
        errors = await operations.import_errors(config, parse=False)
        if errors:
            files = ", ".join(e.fileloc for e in errors)
            click.echo(
                f"import errors in {len(errors)} file(s): {files} (see `miniflow dags errors`)",
                err=True,
            )

    run()


@dags.command("errors")
@output_option
@click.pass_context
def dags_errors(ctx: click.Context, output: str) -> None:
    """Import errors of DAG files, with their tracebacks."""

    @command_runner
    async def run() -> None:
        from miniflow.cli import operations, views

        errors = await operations.import_errors(_config(ctx))
        if output == "json":
            views.print_json([{"fileloc": e.fileloc, "error": e.error, "at": e.at} for e in errors])
        else:
            views.print_import_errors(errors)

    run()


@dags.command("reparse")
@click.argument("file", required=False)
@click.pass_context
def dags_reparse(ctx: click.Context, file: str | None) -> None:
    """Parse FILE (relative to the DAGs folder), or every DAG file, now, even if unchanged.

    Picks up an edited helper module or a newly installed package at once instead of
    after MINIFLOW_REPARSE_INTERVAL. Prints one line per file: its DAGs or its import error.
    """

    @command_runner
    async def run() -> None:
        from miniflow.cli import operations, views

        for item in await operations.reparse(_config(ctx), file):
            click.echo(views.parse_line(item.fileloc, [d["dag_id"] for d in item.dags], item.error))

    run()


@dags.command("show")
@click.argument("dag_id")
@click.pass_context
def dags_show(ctx: click.Context, dag_id: str) -> None:
    """Tasks and dependencies as a tree."""

    @command_runner
    async def run() -> None:
        from miniflow.cli import operations, views

        dag = await operations.get_serialized(_config(ctx), dag_id)
        views.print_dag_tree(dag)

    run()


def _pause_command(paused: bool) -> Callable[..., None]:
    @click.argument("dag_id")
    @click.pass_context
    def command(ctx: click.Context, dag_id: str) -> None:
        @command_runner
        async def run() -> None:
            from miniflow.cli import operations

            await operations.set_paused(_config(ctx), dag_id, paused)
            click.echo(f"DAG {dag_id} {'paused' if paused else 'unpaused'}")

        run()

    return command


dags.command("pause", help="Stop creating scheduled runs of a DAG.")(_pause_command(True))
dags.command("unpause", help="Resume creating scheduled runs of a DAG.")(_pause_command(False))


def _check_run_id(run_id: str | None) -> None:
    from miniflow.cli.operations import LATEST, MAX_NAME

    if run_id is None:
        return
    if not run_id.strip() or len(run_id) > MAX_NAME or not run_id.isprintable():
        raise click.BadParameter(
            f"a run id has 1 to {MAX_NAME} printable characters, got {run_id!r}",
            param_hint="--run-id",
        )
    if run_id == LATEST:
        raise click.BadParameter(f"{LATEST!r} means a DAG's newest run", param_hint="--run-id")


def _parse_date(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO date/time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dags.command("trigger")
@click.argument("dag_id")
@click.option("--conf", "conf_json", help="JSON object merged over the DAG's params.")
@click.option("--run-id", help="Run id (default manual__<logical date>).")
@click.option("--logical-date", help="ISO date/time (default now).")
@click.option("--wait", is_flag=True, help="Show progress; exit 0 only if the run succeeds.")
@click.pass_context
def dags_trigger(
    ctx: click.Context,
    dag_id: str,
    conf_json: str | None,
    run_id: str | None,
    logical_date: str | None,
    wait: bool,
) -> int:
    """Create a manual run (the scheduler runs it)."""
    when = _parse_date(logical_date)
    _check_run_id(run_id)

    @command_runner
    async def run() -> int:
        from miniflow.cli import operations, views, wiring

        config = _config(ctx)
        # `--wait`: one engine for the trigger and the follower (a second one connected,
        # checked the schema and initialised its dialect again).
        async with wiring.open_engine(config) if wait else nullcontext() as engine:
            created = await operations.trigger(
                config, dag_id, conf_json=conf_json, run_id=run_id, logical_date=when, engine=engine
            )
            click.echo(f"created run {created} of {dag_id}")
            if not wait:
                return 0
            state = await views.follow_run(config, dag_id, created, engine)
        return 0 if state == "success" else 1

    return run()


@dags.command("test")
@click.argument("dag_id")
@click.option("--logical-date", help="ISO date/time (default now).")
@click.option("--conf", "conf_json", help="JSON object merged over the DAG's params.")
@click.pass_context
def dags_test(
    ctx: click.Context, dag_id: str, logical_date: str | None, conf_json: str | None
) -> None:
    """Run one DAG run to completion in the foreground, without a daemon."""
    from miniflow.cli import daemon, operations

    config = _config(ctx)
    # the DAG and its conf first: a typo must not start a scheduler (nor register one)
    command_runner(operations.check_trigger)(config, dag_id, conf_json)
    state = command_runner(daemon.test_dag)(
        config, dag_id, logical_date=_parse_date(logical_date), conf_json=conf_json
    )
    sys.exit(0 if state == "success" else 1)


# --- runs / tasks / pools -----------------------------------------------------------------------

from miniflow.cli.airflow_commands import airflow  # noqa: E402
from miniflow.cli.state_commands import pools, runs, schedulers, tasks  # noqa: E402  (registered on `main` below)
from miniflow.cli.values_commands import connections, variables  # noqa: E402

main.add_command(runs)
main.add_command(airflow)
main.add_command(variables)
main.add_command(connections)
main.add_command(tasks)
main.add_command(pools)
main.add_command(schedulers)
add_global_options(main)


def console_script() -> None:
    """The `miniflow` command (`[project.scripts]`): `main`, whose commands may end
    without the interpreter's teardown (`leave`)."""
    allow_quick_exit()
    main()
