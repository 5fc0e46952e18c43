"""Stopping `standalone` and `dags test` on a signal: tries failed, processes killed.

The foreground commands own what they run, so a stop ends it: every try in
flight is recorded failed with no retry, its process killed, its attempt
closed with reason "Stopped", and the runs still running end failed. Order
matters: the tries are failed in the database before their processes are
signalled, so a worker that handles the signal finds its try already ended and
records nothing (no retry is spent or scheduled). Writes go through the
store's usual conditional functions (`task_instances.finish` expecting queued
or running, `attempts.close`, `runs.set_state`).
"""

from __future__ import annotations

import logging
import signal
from datetime import datetime
from typing import Any

from miniflow.errors import NotFound
from miniflow.launchers.base import AttemptExited, AttemptKey
from miniflow.scheduler.core import Scheduler
from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import states
from miniflow.store import task_instances as store_tis
from miniflow.store.records import TaskInstanceRecord

log = logging.getLogger("miniflow.cli.stopping")


async def stop_everything(
    scheduler: Scheduler, sig: signal.Signals, *, run: tuple[str, str] | None
) -> list[str]:
    """Stop the tries in flight (of `run`, else all) and their runs; the runs failed.

    Order matters: the tries are failed in the database before their processes
    are signalled, so a worker that handles the signal finds its try already
    ended and records nothing (no retry is spent or scheduled).
    """
    message = f"the run was stopped by {sig.name}"
    now = scheduler.clock.now()
    async with store_engine.transaction(scheduler.sessions) as session:
        run_pks: list[int] | None = None
        if run is not None:
            try:
                run_pks = [(await store_runs.get_run(session, *run)).id]
            except NotFound:
                run_pks = []  # stopped before the run was created
        rows = [
            r for r in await store_tis.in_flight(session) if run_pks is None or r.run_pk in run_pks
        ]
        outcomes = [
            store_tis.Outcome(
                r.id,
                r.try_number,
                states.FAILED,
                (states.QUEUED, states.RUNNING),
                error=f"stopped: {message}",
            )
            for r in rows
        ]
        await store_tis.finish(session, outcomes, now)
        failed = await _fail_runs(session, run_pks, queued_too=run is not None, now=now)
    keys = {AttemptKey(r.dag_id, r.run_id, r.task_id, r.try_number, r.map_index): r for r in rows}
    exits = await _kill_attempts(scheduler, keys, message, run)
    ends = []
    for key, row in keys.items():
        event = exits.get(key)
        ends.append(
            store_attempts.AttemptEnd(
                row.id,
                row.try_number,
                states.FAILED,
                event.exit_code if event else None,
                "Stopped",
                message,
                event.log_tail if event else None,
                event.at if event else now,
            )
        )
    async with store_engine.transaction(scheduler.sessions) as session:
        await store_attempts.close(session, ends)
    await scheduler.launcher.acknowledge([k for k in exits if k in keys])
    if rows or failed:
        log.warning("%s: %d tries stopped, runs failed: %s", message, len(rows), failed or "none")
    return failed


async def _fail_runs(
    session: Any, run_pks: list[int] | None, *, queued_too: bool, now: datetime
) -> list[str]:
    """Fail the running runs (of `run_pks`, else all); with `queued_too`, queued ones too."""
    runs = await store_runs.running_runs(session, run_pks)
    if queued_too:
        runs += [r for r in await store_runs.queued_runs(session) if r.id in (run_pks or [])]
    failed = []
    for info in runs:
        if await store_runs.set_state(
            session, info.id, expected=info.state, state=states.RUN_FAILED, now=now
        ):
            failed.append(f"{info.dag_id}/{info.run_id}")
    return failed


async def _kill_attempts(
    scheduler: Scheduler,
    keys: dict[AttemptKey, TaskInstanceRecord],
    message: str,
    run: tuple[str, str] | None,
) -> dict[AttemptKey, AttemptExited]:
    """Kill the attempts; their exits by key, once they ended (local launcher).

    Another launcher (`dags test` on Kubernetes) is only asked to kill them: the
    loop of `dags test`, still running, records their exits.
    """
    launcher = scheduler.launcher
    shutdown = getattr(launcher, "shutdown_all", None)
    if shutdown is not None:  # the local launcher: also whatever else of `run` it runs
        events: list[AttemptExited] = await shutdown(reason="Stopped", message=message, run=run)
        return {e.key: e for e in events}
    for key, row in keys.items():
        await launcher.kill(key, row.handle, reason=message)
    return {}
