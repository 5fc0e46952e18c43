"""`miniflow runs …`, `tasks …`, `schedulers …` and `pools …` commands.

Wherever a run id is expected, `latest` (the DAG's newest run, the top row of
`miniflow runs list DAG`) and any unique prefix of a run id are accepted too.
"""

from __future__ import annotations

import json
import sys

import click

from miniflow.cli.common import _config, command_runner, output_option, split_task_ref

MAX_SLOTS = 2**31 - 1  # the database column is a 32-bit integer
RUN_HELP = "RUN is a run id, `latest`, or a unique prefix of a run id (default: latest)."


@click.group()
def runs() -> None:
    """DAG runs."""


@runs.command("list")
@click.argument("dag_id", required=False)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@output_option
@click.pass_context
def runs_list(ctx: click.Context, dag_id: str | None, limit: int, output: str) -> None:
    """Recent runs, newest first."""

    @command_runner
    async def run() -> None:
        from miniflow.cli import operations, views
        from miniflow.store import browse

        found = await operations.list_runs(_config(ctx), dag_id, limit)
        if output == "json":
            views.print_json([browse.run_view(r) for r in found])
        else:
            views.print_runs(found)

    run()


@runs.command("mark-failed", epilog="RUN is a run id, `latest`, or a unique prefix of a run id.")
@click.argument("dag_id")
@click.argument("run_id")
@click.pass_context
def runs_mark_failed(ctx: click.Context, dag_id: str, run_id: str) -> None:
    """End a run as failed: its running tries are failed and stopped, its tasks not
    started skipped (the web's "mark failed")."""

    @command_runner
    async def run() -> None:
        from miniflow.cli import operations

        resolved, changed = await operations.mark_run_failed(_config(ctx), dag_id, run_id)
        if changed:
            click.echo(f"marked {dag_id}/{resolved} failed")
        else:
            click.echo(f"{dag_id}/{resolved} had already finished: left as it is")

    run()


@click.group()
def tasks() -> None:
    """Task instances of a run: list, logs, result, clear."""


@tasks.command("list", epilog=RUN_HELP)
@click.argument("dag_id")
@click.argument("run_id", required=False)
@click.option("--all-tries", is_flag=True, help="Every try of every task, with its reason.")
@output_option
@click.pass_context
def tasks_list(
    ctx: click.Context, dag_id: str, run_id: str | None, all_tries: bool, output: str
) -> None:
    """State, try, duration, exit code and reason of every task in a run."""

    @command_runner
    async def run() -> None:
        from miniflow.cli import operations, views

        config = _config(ctx)
        if all_tries:
            resolved, attempts = await operations.list_attempts(config, dag_id, run_id)
        else:
            resolved, tis = await operations.list_tasks(config, dag_id, run_id)
        if output == "json":
            from miniflow.store import browse

            views.print_json(
                [browse.attempt_view(a, a.log_tail is not None) for a in attempts]
                if all_tries
                else [browse.task_instance_view(t) for t in tis]
            )
            return
        if resolved != run_id:  # say which run `latest` or a prefix meant
            click.echo(f"{dag_id} run {resolved}")
        if all_tries:
            views.print_attempts(attempts)
        else:
            views.print_task_instances(tis)

    run()


@tasks.command("logs", epilog=RUN_HELP)
@click.argument("ids", nargs=-1, required=True, metavar="DAG [RUN] TASK")
@click.option("--try", "try_number", type=int, help="Which try (default the latest).")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the try ends.")
@click.option("--map-index", type=int, default=-1, help="Which mapped instance of a mapped task.")
@click.pass_context
def tasks_logs(
    ctx: click.Context,
    ids: tuple[str, ...],
    try_number: int | None,
    follow: bool,
    map_index: int,
) -> None:
    """A try's log: from its process/pod while that exists, else the saved tail."""
    dag_id, run_id, task_id = split_task_ref(ids)

    @command_runner
    async def run() -> None:
        from miniflow.cli import logs

        async for line in logs.read(
            _config(ctx), dag_id, run_id, task_id, try_number, follow, map_index
        ):
            sys.stdout.write(line if line.endswith("\n") else line + "\n")
            sys.stdout.flush()

    run()


@tasks.command("result", epilog=RUN_HELP)
@click.argument("ids", nargs=-1, required=True, metavar="DAG [RUN] TASK")
@click.option("--map-index", type=int, default=-1, help="One mapped instance's result.")
@click.pass_context
def tasks_result(ctx: click.Context, ids: tuple[str, ...], map_index: int) -> None:
    """The JSON result a @task returned (what its downstream tasks received); of a mapped
    task, the list of its mapped instances' results."""
    dag_id, run_id, task_id = split_task_ref(ids)

    @command_runner
    async def run() -> None:
        from miniflow.cli import operations

        result = await operations.task_result(_config(ctx), dag_id, run_id, task_id, map_index)
        click.echo(json.dumps(result, indent=2, sort_keys=True))

    run()


@tasks.command("clear", epilog=RUN_HELP)
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
        from miniflow.cli import operations

        resolved, cleared = await operations.clear(
            _config(ctx), dag_id, run_id, task_id, downstream
        )
        click.echo(f"cleared {', '.join(cleared)} in {dag_id}/{resolved}")

    run()


@click.group()
def schedulers() -> None:
    """Scheduler instances registered in the database."""


@schedulers.command("list")
@click.pass_context
def schedulers_list(ctx: click.Context) -> None:
    """Every scheduler that registered: host, pid, age of its heartbeat, tries it owns."""

    @command_runner
    async def run() -> None:
        from datetime import UTC, datetime

        from miniflow.cli import operations, views

        config = _config(ctx)
        rows, holder = await operations.list_schedulers(config)
        views.print_schedulers(
            rows, datetime.now(UTC), holder=holder, silent_after=config.scheduler_timeout
        )

    run()


@click.group()
def pools() -> None:
    """Pools: named slot limits shared across DAGs."""


# ignore_unknown_options: `-1` is a (wrong) number of slots, not an unknown option
@pools.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("slots", type=int)
@click.option("--description")
@click.pass_context
def pools_set(ctx: click.Context, name: str, slots: int, description: str | None) -> None:
    """Create or resize a pool."""
    if not 0 <= slots <= MAX_SLOTS:
        raise click.BadParameter(
            f"a pool has 0 to {MAX_SLOTS} slots, got {slots}", param_hint="SLOTS"
        )

    @command_runner
    async def run() -> None:
        from miniflow.cli import operations

        await operations.set_pool(_config(ctx), name, slots, description)
        click.echo(f"pool {name}: {slots} slots")

    run()


@pools.command("list")
@output_option
@click.pass_context
def pools_list(ctx: click.Context, output: str) -> None:
    """Pools and their slots."""

    @command_runner
    async def run() -> None:
        from miniflow.cli import operations, views

        found = await operations.list_pools(_config(ctx))
        if output == "json":
            views.print_json(
                [{"name": p.name, "slots": p.slots, "description": p.description} for p in found]
            )
            return
        for pool in found:
            click.echo(f"{pool.name}\t{pool.slots}\t{pool.description or ''}")

    run()
