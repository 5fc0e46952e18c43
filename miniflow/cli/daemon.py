"""Long-running entry points: the scheduler daemon, `standalone`, and `dags test`.

SQLite databases are migrated automatically (one user, one file: the embedded
default must need no set-up step); PostgreSQL needs `miniflow db upgrade`
first, so a shared production database is never migrated by surprise.

Stopping differs on purpose:

- `miniflow scheduler` (SIGTERM, SIGINT) stops its loop after the current
  round; a round still busy after `STOP_GRACE` seconds, or at a second signal,
  is cancelled (its transaction rolls back; the next scheduler redoes it).
  Running tasks keep running: they are not children that hold up the exit
  (see `local_fork`), and the next scheduler adopts them.
- `miniflow standalone` and `miniflow dags test` (SIGINT, SIGTERM, SIGHUP)
  stop everything they run (`miniflow.cli.stopping`): tries failed with reason
  "Stopped" and no retry, processes killed, running runs failed; no process
  and no running run are left behind. Their loops are never cancelled in the
  middle of a round (a cancelled database call can leak its connection):
  `standalone` stops its loop first, like the daemon; `dags test` stops
  claiming and fails its run while the loop runs on (it ends once the run has),
  then checks again for a try claimed in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from miniflow.cli import stopping, wiring
from miniflow.config import Config
from miniflow.errors import ConfigError, ConfValidationError, NotFound
from miniflow.scheduler.core import Scheduler, SchedulerSettings, new_scheduler_id
from miniflow.scheduler.sanity import SanitySettings
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import fencing, schema, states, wakeup
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis

log = logging.getLogger("miniflow.cli.daemon")

STOP_GRACE = 3.0
"""Seconds a stopping loop may take to finish its round before it is cancelled."""

DAEMON_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FOREGROUND_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
        max_result_bytes=config.max_result_bytes,
        max_map_length=config.max_map_length,
        sanity=sanity,
        reparse_interval=config.reparse_interval,
        instance_heartbeat=config.scheduler_heartbeat,
        instance_timeout=config.scheduler_timeout,
        stall_timeout=config.loop_stall_timeout,
        callback_timeout=config.callback_timeout,
        **kw,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def _scheduler(
    config: Config, *, serve: bool = True, **settings: Any
) -> AsyncIterator[Scheduler]:
    """A started scheduler; with `serve` and `MINIFLOW_HTTP_PORT` set, its ops server too
    (up before the start-up, so liveness holds through a long adoption while readiness
    says "not registered yet")."""
    is_sqlite = config.database_url.startswith("sqlite")
    scheduler_settings = _settings(config, **settings)
    scheduler_id = new_scheduler_id(peer=scheduler_settings.peer)
    # A transaction left idle for the instance timeout belongs to a scheduler its peers
    # take for dead: the server ends it, so its locks cannot stall them; and its
    # sessions are named for the peers to end any other kind (store.fencing).
    async with wiring.open_engine(
        config,
        check_schema=not is_sqlite,
        idle_transaction_timeout=config.scheduler_timeout,
        application_name=fencing.session_name(scheduler_id),
    ) as engine:
        if is_sqlite:
            await schema.upgrade(engine)
        scheduler = Scheduler(
            engine=engine,
            launcher=wiring.make_launcher(config),
            dags_folder=config.dags_folder,
            settings=scheduler_settings,
            parse_timeout=config.parse_timeout,
            scheduler_id=scheduler_id,
        )
        server = None
        if serve and config.http_port:
            # Imported only when asked for: aiohttp is a tenth of a second of every start.
            from miniflow.scheduler.ops_server import OpsServer

            server = OpsServer(scheduler, host=config.http_host, port=config.http_port)
            try:
                await server.start()
            except OSError as exc:
                raise ConfigError(
                    f"MINIFLOW_HTTP_PORT: cannot listen on {config.http_host}:"
                    f"{config.http_port}: {exc.strerror or exc}"
                ) from None
        try:
            await scheduler.start()
        except BaseException:
            if server is not None:
                await server.close()
            raise
        listener = wakeup.Listener(
            engine,
            woken=scheduler.woken,
            turn=(scheduler.scheduler_id, scheduler.turn_given),
            left=scheduler.peer_left,
        )
        # What start-up built (modules, the engine, the launcher) lives as long as the
        # process: keep full collections from walking it on every run (one held the
        # event loop ~80 ms in the middle of a fan-out, benchmarks/loop_lag.py).
        gc.freeze()
        try:
            async with listener:
                yield scheduler
        finally:
            if server is not None:
                await server.close()
            await scheduler.close()


class _Stop:
    """The stop signals of one command: the first one received, and what to cancel."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self.count = 0
        self.loop: asyncio.Future[Any] | None = None  # the scheduler loop to stop

    @contextlib.contextmanager
    def handling(
        self, signals: Sequence[signal.Signals], on_signal: Callable[[], None]
    ) -> Iterator[None]:
        loop = asyncio.get_running_loop()

        def received(sig: signal.Signals) -> None:
            self.count += 1
            if self.signal is None:
                self.signal = sig
            on_signal()

        for sig in signals:
            loop.add_signal_handler(sig, received, sig)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
                if self.signal is not None:
                    # Stopping already: a late repeat of the signal (a second Ctrl-C the
                    # kernel delivers during the clean-up) must not become a traceback.
                    signal.signal(sig, signal.SIG_IGN)

    def cancel_loop(self) -> None:
        if self.loop is not None:
            self.loop.cancel()

    def stop_after_round(self, scheduler: Scheduler) -> None:
        """Stop the loop after its round; cancel the round after `STOP_GRACE` seconds,
        or at once from the second signal on."""
        scheduler.stop()
        if self.count == 1:
            asyncio.get_running_loop().call_later(STOP_GRACE, self.cancel_loop)
        else:
            self.cancel_loop()


async def _await_loop(runner: asyncio.Future[Any]) -> Any:
    """Await the scheduler loop; its cancellation (how a stop hurries it) is no error."""
    try:
        return await runner
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled ourselves
        return None


@contextlib.contextmanager
def _cut_short(stop: _Stop) -> Iterator[None]:
    """A start-up cancelled by a repeated stop signal ends the command, quietly."""
    try:
        yield
    except asyncio.CancelledError:
        if stop.count < 2:
            raise


async def run_scheduler(config: Config) -> None:
    """`miniflow scheduler`: tick forever; SIGTERM/SIGINT stop after the current round.

    Running attempts are left alone: a restarted scheduler adopts them. The signals
    are handled from before start-up: the instance registers early (then starts its
    launcher, adopts...), and a stop in between must still say goodbye, or its peers
    wait out the instance timeout for its tries.
    """
    stop = _Stop()
    started: list[Scheduler] = []
    starting = asyncio.current_task()

    def on_signal() -> None:
        if stop.count == 1 and stop.signal is not None:
            log.info("%s: stopping; running tasks keep running", stop.signal.name)
        if started:
            stop.stop_after_round(started[0])
        elif stop.count > 1 and starting is not None:
            starting.cancel()  # a second signal cuts the start-up short

    with stop.handling(DAEMON_SIGNALS, on_signal), _cut_short(stop):
        async with _scheduler(config) as scheduler:
            started.append(scheduler)
            if stop.signal is not None:
                return  # stopped while starting: leaving the block says goodbye
            log.info(
                "scheduler %s started (launcher %s, DAGs %s, database %s)",
                scheduler.scheduler_id,
                config.launcher,
                config.dags_folder,
                config.safe_database_url(),
            )
            stop.loop = asyncio.ensure_future(scheduler.run_forever())
            await _await_loop(stop.loop)


async def _shutdown_local(scheduler: Scheduler, run: tuple[str, str] | None = None) -> None:
    shutdown = getattr(scheduler.launcher, "shutdown_all", None)
    if shutdown is not None:
        await shutdown(run=run)


async def run_standalone(
    config: Config, *, trigger_all: bool, exit_when_done: bool, webserver: bool = True
) -> int:
    """The embedded default with a live view (and the web UI unless `webserver` is
    False); returns the exit code."""
    from miniflow.cli import views

    console = views.make_console()
    console.print(
        f"[bold]miniflow standalone[/] — DAGs: {config.dags_folder}  state: {config.state_dir}"
    )
    async with _scheduler(config) as scheduler, _web(config, scheduler, webserver):
        return await _standalone(console, config, scheduler, trigger_all, exit_when_done)


@contextlib.asynccontextmanager
async def _web(config: Config, scheduler: Scheduler, enabled: bool) -> AsyncIterator[None]:
    """The web UI beside the scheduler, on its engine; a port in use is a warning (the
    scheduler is what standalone is for), not a failure."""
    if not enabled:
        yield
        return
    from miniflow.errors import ConfigError
    from miniflow.web import server

    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(server.beside(config, scheduler.engine))
        except ConfigError as exc:
            print(f"warning: no web UI: {exc} (--no-webserver turns it off)", file=sys.stderr)
        yield


async def _standalone(
    console: Any, config: Config, scheduler: Scheduler, trigger_all: bool, exit_when_done: bool
) -> int:
    stop = _Stop()
    with stop.handling(FOREGROUND_SIGNALS, lambda: stop.stop_after_round(scheduler)):
        await scheduler.tick()  # parse before triggering
        watched: list[tuple[str, str]] = []
        if trigger_all and stop.signal is None:
            watched = await _trigger_all(config, scheduler)
        if stop.signal is None:
            stop.loop = asyncio.ensure_future(scheduler.run_forever())
            await _live_view(console, scheduler, stop.loop, watched, exit_when_done)
        if stop.signal is not None:
            name = stop.signal.name
            failed = await stopping.stop_everything(scheduler, stop.signal, run=None)
            console.print(f"[yellow]stopped by {name}[/]: running tasks killed")
            if failed:
                console.print(f"[red]runs failed by the stop:[/] {', '.join(failed)}")
            return 1
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


async def _live_view(
    console: Any,
    scheduler: Scheduler,
    runner: asyncio.Future[Any],
    watched: list[tuple[str, str]],
    exit_when_done: bool,
) -> None:
    """Show the runs until the loop ends (a stop, or every watched run finished)."""
    from rich.live import Live

    from miniflow.cli import views

    try:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while not runner.done():
                live.update(await views.runs_panel(scheduler.engine, watched))
                if exit_when_done and watched and await _all_finished(scheduler, watched):
                    scheduler.stop()
                await asyncio.wait({runner}, timeout=0.25)
            live.update(await views.runs_panel(scheduler.engine, watched))
    finally:
        scheduler.stop()
        await _await_loop(runner)


async def _trigger_all(config: Config, scheduler: Scheduler) -> list[tuple[str, str]]:
    from miniflow.scheduler import manual_runs

    now = datetime.now(UTC)
    watched = []
    async with store_engine.transaction(scheduler.sessions) as session:
        for row in await store_dags.list_dags(session):
            if row.has_import_error:
                continue
            try:
                run_id = await manual_runs.trigger(session, row.dag_id, conf_json=None, now=now)
            except ConfValidationError as exc:  # a typed param without a default
                log.warning("--trigger-all: DAG %s not triggered: %s", row.dag_id, exc)
                continue
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
    from miniflow.cli import views
    from miniflow.scheduler import manual_runs

    console = views.make_console()
    logical_date = logical_date or datetime.now(UTC)
    run = (dag_id, manual_runs.dags_test_run_id(logical_date))
    async with _scheduler(
        config, serve=False, schedule_runs=False, reap_orphans=False, peer=False
    ) as scheduler:
        stop = _Stop()
        first_pass: list[asyncio.Future[list[str]]] = []

        def on_signal() -> None:
            if stop.count > 1 or stop.loop is None or stop.signal is None:
                return  # before the loop: handled once the run exists
            # No new claims; fail the run (the loop then ends by itself) and kill its tries.
            scheduler.settings = dataclasses.replace(scheduler.settings, parallelism=0)
            first_pass.append(
                asyncio.ensure_future(stopping.stop_everything(scheduler, stop.signal, run=run))
            )

        with stop.handling(FOREGROUND_SIGNALS, on_signal):
            state = await _test_run(config, scheduler, run, logical_date, conf_json, stop, console)
            if stop.signal is not None:
                for pending in first_pass:
                    await pending
                # Again: a try claimed while the first pass ran, or a signal before the loop.
                await stopping.stop_everything(scheduler, stop.signal, run=run)
                state = states.RUN_FAILED
            else:
                await _shutdown_local(scheduler, run=run)
        try:
            async with store_engine.transaction(scheduler.sessions) as session:
                tis = await store_tis.list_for_run(session, *run)
        except NotFound:
            tis = []
        views.print_task_instances(tis, console=console)
        stopped = f" (stopped by {stop.signal.name})" if stop.signal is not None else ""
        console.print(f"run {run[1]}: [bold]{state}[/]{stopped}")
        return state


async def _test_run(
    config: Config,
    scheduler: Scheduler,
    run: tuple[str, str],
    logical_date: datetime,
    conf_json: str | None,
    stop: _Stop,
    console: Any,
) -> str:
    """Parse, trigger and run the test run, streaming its task states and logs; returns
    its state (unless stopped before)."""
    from miniflow.cli.stream import RunStream
    from miniflow.scheduler import manual_runs

    await scheduler.tick()
    if stop.signal is not None:
        return states.RUN_FAILED
    dag_id, run_id = run
    async with store_engine.transaction(scheduler.sessions) as session:
        replaced = await manual_runs.trigger_test(
            session,
            dag_id,
            conf_json=conf_json,
            now=datetime.now(UTC),
            logical_date=logical_date,
            live_threshold=scheduler.settings.instance_timeout,
        )
    if stop.signal is not None:
        return states.RUN_FAILED
    scheduler.settings = _settings(
        config, schedule_runs=False, reap_orphans=False, peer=False, only_run=run
    )
    again = " (replacing the earlier test run of that date)" if replaced else ""
    console.print(f"testing {dag_id} run {run_id}{again}", markup=False, highlight=False)
    stream = RunStream(
        scheduler.sessions,
        scheduler.launcher,
        run,
        lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
    )
    ended = asyncio.Event()
    streaming = asyncio.ensure_future(stream.run(ended))
    try:
        stop.loop = asyncio.ensure_future(scheduler.run_until_done(dag_id, run_id))
        state: str = await stop.loop
    finally:
        ended.set()
        await _await_loop(streaming)
    return state
