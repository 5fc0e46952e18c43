"""Long-running entry points: the scheduler daemon, `standalone`, and `dags test`.

SQLite databases are migrated automatically (one user, one file: the embedded
default must need no set-up step); PostgreSQL needs `miniflow db upgrade`
first, so a shared production database is never migrated by surprise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from rich.live import Live

from miniflow import admin, cli_views, runtime
from miniflow.config import Config
from miniflow.scheduler.core import Scheduler, SchedulerSettings
from miniflow.scheduler.sanity import SanitySettings
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import schema, states
from miniflow.store import task_instances as store_tis

log = logging.getLogger("miniflow.daemon")


def _settings(config: Config, *, reap_orphans: bool = True, **kw: object) -> SchedulerSettings:
    sanity = SanitySettings(
        interval=config.sanity_interval,
        zombie_threshold=config.zombie_threshold,
        queued_timeout=config.queued_timeout,
        kill_grace_period=config.kill_grace_period,
        reap_orphans=reap_orphans,
    )
    return SchedulerSettings(
        parallelism=config.parallelism,
        parse_interval=config.parse_interval,
        max_launch_attempts=config.max_launch_attempts,
        sanity=sanity,
        reparse_interval=config.reparse_interval,
        **kw,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def _scheduler(config: Config, **settings: Any) -> AsyncIterator[Scheduler]:
    is_sqlite = config.database_url.startswith("sqlite")
    async with runtime.open_engine(config, check_schema=not is_sqlite) as engine:
        if is_sqlite:
            await schema.upgrade(engine)
        scheduler = Scheduler(
            engine=engine,
            launcher=runtime.make_launcher(config),
            dags_folder=config.dags_folder,
            settings=_settings(config, **settings),
            parse_timeout=config.parse_timeout,
        )
        await scheduler.start()
        try:
            yield scheduler
        finally:
            await scheduler.close()


def _on_signals(scheduler: Scheduler) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, scheduler.stop)


async def run_scheduler(config: Config) -> None:
    """`miniflow scheduler`: tick forever; SIGTERM/SIGINT stop after the current round.

    Running attempts are left alone: a restarted scheduler adopts them.
    """
    async with _scheduler(config) as scheduler:
        _on_signals(scheduler)
        log.info(
            "scheduler %s started (launcher %s, DAGs %s, database %s)",
            scheduler.scheduler_id,
            config.launcher,
            config.dags_folder,
            config.safe_database_url(),
        )
        await scheduler.run_forever()


async def _shutdown_local(scheduler: Scheduler) -> None:
    shutdown = getattr(scheduler.launcher, "shutdown_all", None)
    if shutdown is not None:
        await shutdown()


async def run_standalone(config: Config, *, trigger_all: bool, exit_when_done: bool) -> int:
    """The embedded default with a live view; returns the exit code."""
    console = cli_views.make_console()
    console.print(
        f"[bold]miniflow standalone[/] — DAGs: {config.dags_folder}  state: {config.state_dir}"
    )
    async with _scheduler(config) as scheduler:
        _on_signals(scheduler)
        await scheduler.tick()  # parse before triggering
        watched: list[tuple[str, str]] = []
        if trigger_all:
            watched = await _trigger_all(config, scheduler)
        runner = asyncio.create_task(scheduler.run_forever())
        try:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while not runner.done():
                    live.update(await cli_views.runs_panel(scheduler.engine, watched))
                    if exit_when_done and watched and await _all_finished(scheduler, watched):
                        scheduler.stop()
                    await asyncio.wait({runner}, timeout=0.25)
                live.update(await cli_views.runs_panel(scheduler.engine, watched))
        finally:
            scheduler.stop()
            await runner
            await _shutdown_local(scheduler)
        console.print()
        if not watched:
            return 0
        finals = await _final_states(scheduler, watched)
        failed = [f"{d}/{r}" for (d, r), s in finals.items() if s == states.RUN_FAILED]
        unfinished = [f"{d}/{r}" for (d, r), s in finals.items() if s not in states.RUN_FINISHED]
        if unfinished:
            console.print(f"[yellow]stopped before these runs finished:[/] {', '.join(unfinished)}")
        if failed:
            console.print(f"[red]failed runs:[/] {', '.join(failed)}")
        if failed or unfinished:
            return 1
        console.print(f"[green]all {len(finals)} triggered runs succeeded[/]")
        return 0


async def _trigger_all(config: Config, scheduler: Scheduler) -> list[tuple[str, str]]:
    from miniflow.scheduler import trigger as trigger_mod

    now = datetime.now(UTC)
    watched = []
    async with store_engine.transaction(scheduler.sessions) as session:
        for row in await store_dags.list_dags(session):
            if row.has_import_error:
                continue
            run_id = await trigger_mod.trigger(session, row.dag_id, conf_json=None, now=now)
            watched.append((row.dag_id, run_id))
    return watched


async def _final_states(
    scheduler: Scheduler, watched: list[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    async with store_engine.transaction(scheduler.sessions) as session:
        return {(d, r): (await store_runs.get_run(session, d, r)).state for d, r in watched}


async def _all_finished(scheduler: Scheduler, watched: list[tuple[str, str]]) -> bool:
    finals = await _final_states(scheduler, watched)
    return all(s in states.RUN_FINISHED for s in finals.values())


async def test_dag(
    config: Config, dag_id: str, *, logical_date: datetime | None, conf_json: str | None
) -> str:
    """`miniflow dags test`: one run in the foreground, nothing else scheduled."""
    console = cli_views.make_console()
    async with _scheduler(
        config, schedule_runs=False, reap_orphans=False, register=False
    ) as scheduler:
        await scheduler.tick()
        run_id = await admin.trigger(
            config,
            dag_id,
            conf_json=conf_json,
            logical_date=logical_date,
            run_id=f"test__{(logical_date or datetime.now(UTC)).isoformat()}",
            parse=False,
        )
        scheduler.settings = _settings(
            config,
            schedule_runs=False,
            reap_orphans=False,
            register=False,
            only_run=(dag_id, run_id),
        )
        console.print(f"testing {dag_id} run {run_id}")
        try:
            state = await scheduler.run_until_done(dag_id, run_id)
        finally:
            await _shutdown_local(scheduler)
        async with store_engine.transaction(scheduler.sessions) as session:
            tis = await store_tis.list_for_run(session, dag_id, run_id)
        cli_views.print_task_instances(tis, console=console)
        console.print(f"run {run_id}: [bold]{state}[/]")
        return state
