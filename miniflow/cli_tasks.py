"""`miniflow runs …`, `miniflow tasks …` and `miniflow pools …` commands."""

from __future__ import annotations

import sys

import click

from miniflow import cli_views as views
from miniflow.cli_common import _config, command_runner


@click.group()
def runs() -> None:
    """DAG runs."""


@runs.command("list")
@click.argument("dag_id", required=False)
@click.option("--limit", default=50, show_default=True)
@click.pass_context
def runs_list(ctx: click.Context, dag_id: str | None, limit: int) -> None:
    """Recent runs, newest first."""

    @command_runner
    async def run() -> None:
        from miniflow import admin

        views.print_runs(await admin.list_runs(_config(ctx), dag_id, limit))

    run()


@click.group()
def tasks() -> None:
    """Task instances of a run: list, logs, clear."""


@tasks.command("list")
@click.argument("dag_id")
@click.argument("run_id")
@click.pass_context
def tasks_list(ctx: click.Context, dag_id: str, run_id: str) -> None:
    """State, try, duration, exit code and reason of every task in a run."""

    @command_runner
    async def run() -> None:
        from miniflow import admin

        views.print_task_instances(await admin.list_tasks(_config(ctx), dag_id, run_id))

    run()


@tasks.command("logs")
@click.argument("dag_id")
@click.argument("run_id")
@click.argument("task_id")
@click.option("--try", "try_number", type=int, help="Which try (default the latest).")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming while the task runs.")
@click.pass_context
def tasks_logs(
    ctx: click.Context, dag_id: str, run_id: str, task_id: str, try_number: int | None, follow: bool
) -> None:
    """A try's log: streamed from the process/pod while it exists, else the saved tail."""

    @command_runner
    async def run() -> None:
        from miniflow import logs

        async for line in logs.read(_config(ctx), dag_id, run_id, task_id, try_number, follow):
            sys.stdout.write(line if line.endswith("\n") else line + "\n")
            sys.stdout.flush()

    run()


@tasks.command("clear")
@click.argument("dag_id")
@click.argument("run_id")
@click.argument("task_id")
@click.option("--downstream", is_flag=True, help="Also clear every task downstream of it.")
@click.pass_context
def tasks_clear(
    ctx: click.Context, dag_id: str, run_id: str, task_id: str, downstream: bool
) -> None:
    """Run a finished task again (a new try), like Airflow's clear."""

    @command_runner
    async def run() -> None:
        from miniflow import admin

        cleared = await admin.clear(_config(ctx), dag_id, run_id, task_id, downstream)
        click.echo(f"cleared {', '.join(cleared)} in {dag_id}/{run_id}")

    run()


@click.group()
def pools() -> None:
    """Pools: named slot limits shared across DAGs."""


@pools.command("set")
@click.argument("name")
@click.argument("slots", type=click.IntRange(min=0))
@click.option("--description")
@click.pass_context
def pools_set(ctx: click.Context, name: str, slots: int, description: str | None) -> None:
    """Create or resize a pool."""

    @command_runner
    async def run() -> None:
        from miniflow import admin

        await admin.set_pool(_config(ctx), name, slots, description)
        click.echo(f"pool {name}: {slots} slots")

    run()


@pools.command("list")
@click.pass_context
def pools_list(ctx: click.Context) -> None:
    """Pools and their slots."""

    @command_runner
    async def run() -> None:
        from miniflow import admin

        for pool in await admin.list_pools(_config(ctx)):
            click.echo(f"{pool.name}\t{pool.slots}\t{pool.description or ''}")

    run()
