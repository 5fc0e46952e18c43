"""One try of one task: `miniflow-worker run --dag-id D --run-id R --task-id T --try N`.

`main(argv) -> int` is the whole run in-process; the console script and the
local launcher's forked, pre-warmed children both call it. Steps:

1. **Config** (`load_config`) and a connection check: a bad setting or an
   unreachable database is one line on stderr and exit 2, nothing recorded.
2. **Claim** in one transaction: `worker_claim` marks the try running only if
   the database still expects exactly this try and no other worker claimed it
   (`heartbeat_at IS NULL`). The same transaction reads the DAG row, the run
   and the upstream results a Python task needs, so start-up costs one round
   trip of statements. Not claimed → a message, exit 0, nothing runs.
3. **Prepare.** The task definition comes from the *stored* serialized DAG
   (what the scheduler parsed and scheduled), not from re-importing the file:
   a Bash task never imports user code at all (faster, and a DAG file with
   heavy imports cannot break a shell command). Only a Python task imports
   its DAG file, for the function. Templates are rendered with the run's
   context (`params` = DAG params overlaid with the run's conf). A missing
   DAG/run/file/task, an import error or a template error is recorded as a
   failure of the try (retries apply) with a clear message.
4. **Run**, raced against: the heartbeat's fence (a newer try exists, or the
   scheduler ended this one → stop the task, record nothing, exit 3),
   SIGTERM/SIGINT (stop the task, record "terminated by SIGTERM", exit
   128+signal: 143), and the task's `timeout` (stop, record a failure).
5. **Record** the outcome with `task_instances.finish`, expecting `running`:
   success with the result, or `retries.failure_outcome` (up_for_retry with
   back-off while tries remain, else failed). If the fenced update matches
   nothing, a newer try owns the row: exit 3. A database error while
   recording is retried a few times; then exit 4 and the scheduler's zombie
   detection takes over.

Heavy modules (SQLAlchemy, the store) are imported at module level on
purpose: every real run needs them, and the local launcher's forkserver
preloads this module so its children start warm. What a run may not need is
imported lazily: jinja2 (by `miniflow.templates`, only for templated
fields), the DAG loader (Python tasks only) and the database driver (by
SQLAlchemy, only the one the URL names). This module never imports the
scheduler, the launchers, parsing or kubernetes_asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from miniflow_worker import execute
from miniflow_worker.clock import now
from miniflow_worker.heartbeat import Heartbeat
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.config import Config, load_config
from miniflow.errors import ConfigError, DatabaseUnavailable, NotFound, TemplateError
from miniflow.retries import failure_outcome
from miniflow.serialized import SerializedTask
from miniflow.store import dags, runs, states, task_instances
from miniflow.store.engine import check_connection, create_engine, sessionmaker, transaction
from miniflow.store.task_instances import Outcome
from miniflow.templates import build_context, render_task_fields

T = TypeVar("T")

EXIT_SUCCESS = 0
"""The task succeeded, or there was nothing to run (stale try, already claimed)."""
EXIT_TASK_FAILED = 1
"""The task failed (failed or up_for_retry recorded), including timeouts."""
EXIT_UNAVAILABLE = 2
"""Bad arguments or config, or the database cannot be reached: nothing recorded."""
EXIT_FENCED = 3
"""A newer try owns the task instance: the task was stopped, nothing recorded."""
EXIT_NOT_RECORDED = 4
"""The task ended but its outcome could not be written (database gone)."""

RECORD_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
EXPECT_RUNNING = (states.RUNNING,)

abandoned_threads = execute.abandoned_threads


def log(message: str) -> None:
    """A line from the worker itself (not the task) on stderr."""
    print(f"miniflow-worker: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="miniflow-worker", description="Run one try of a miniflow task (inside its pod)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one try of a task and record its outcome")
    run.add_argument("--dag-id", required=True)
    run.add_argument("--run-id", required=True)
    run.add_argument("--task-id", required=True)
    run.add_argument("--try", dest="try_number", type=int, required=True, metavar="N")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Run the try named by `argv`; returns the exit code (see the EXIT_* constants)."""
    args = parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        log(f"configuration error: {exc}")
        return EXIT_UNAVAILABLE
    try:
        return asyncio.run(Worker(args, config).main())
    except DatabaseUnavailable as exc:
        log(str(exc))
        return EXIT_UNAVAILABLE


# --- claim -------------------------------------------------------------------------------------


@dataclass
class Claim:
    """What the claim transaction learned; `problem` is a failure to record instead of running."""

    ti_id: int
    try_number: int
    max_tries: int
    task: SerializedTask | None = None
    fileloc: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


def _db_reason(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# --- the run -----------------------------------------------------------------------------------


class Worker:
    def __init__(self, args: argparse.Namespace, config: Config) -> None:
        self.dag_id: str = args.dag_id
        self.run_id: str = args.run_id
        self.task_id: str = args.task_id
        self.try_number: int = args.try_number
        self.config = config
        self.key = f"{self.dag_id}/{self.run_id}/{self.task_id}"

    async def main(self) -> int:
        self.signalled = self._install_signal_handlers()
        engine = create_engine(self.config.database_url, pool_size=2)
        try:
            await check_connection(engine)
            self.factory = sessionmaker(engine)
            try:
                claim = await self._claim()
            except SQLAlchemyError as exc:
                raise DatabaseUnavailable(
                    f"database {self.config.safe_database_url()} failed while claiming "
                    f"try {self.try_number} of {self.key}: {_db_reason(exc)}"
                ) from exc
            if isinstance(claim, str):
                log(claim)
                return EXIT_SUCCESS
            return await self._run_claimed(claim)
        finally:
            await engine.dispose()

    def _install_signal_handlers(self) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        received: asyncio.Future[int] = loop.create_future()

        def on_signal(signum: int) -> None:
            if not received.done():
                received.set_result(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
            except (ValueError, RuntimeError):  # not the main thread: keep Python's defaults
                pass
        return received

    async def _claim(self) -> Claim | str:
        async with transaction(self.factory) as session:
            ti = await task_instances.worker_claim(
                session, self.dag_id, self.run_id, self.task_id, self.try_number, now()
            )
            if ti is None:
                return await self._why_not_claimed(session)
            claim = Claim(ti.id, ti.try_number, ti.max_tries)
            try:
                dag_row = await dags.get_dag(session, self.dag_id)
                run = await runs.get_run(session, self.dag_id, self.run_id)
            except NotFound as exc:
                claim.problem = str(exc)
                return claim
            serialized = dag_row.serialized
            task = serialized.get("tasks", {}).get(self.task_id)
            if task is None:
                claim.problem = (
                    f"DAG {self.dag_id!r} no longer has a task {self.task_id!r} "
                    f"(file {dag_row.fileloc})"
                )
                return claim
            claim.task, claim.fileloc = task, dag_row.fileloc
            claim.context = build_context(
                dag_id=self.dag_id,
                run_id=self.run_id,
                task_id=self.task_id,
                try_number=self.try_number,
                logical_date=run.logical_date,
                data_interval_start=run.data_interval_start,
                data_interval_end=run.data_interval_end,
                params={**serialized.get("params", {}), **run.conf},
            )
            if task["kind"] == "python":
                claim.upstream = await task_instances.upstream_results(
                    session, self.dag_id, self.run_id, execute.upstream_refs(task)
                )
            return claim

    async def _why_not_claimed(self, session: AsyncSession) -> str:
        key = (self.dag_id, self.run_id, self.task_id)
        row = (await task_instances.find_keys(session, [key])).get(key)
        if row is None:
            return f"there is no task instance {self.key}; nothing to run"
        if row.try_number != self.try_number:
            why = f"not the current try (the current try is {row.try_number}, state {row.state})"
        elif row.state in states.ACTIVE:
            why = f"already claimed by another worker (state {row.state})"
        else:
            why = f"no longer queued or running (state {row.state})"
        return f"try {self.try_number} of {self.key} is {why}; nothing to run"

    async def _run_claimed(self, claim: Claim) -> int:
        log(f"claimed try {claim.try_number} of {self.key}")
        self.claim = claim
        self.execution: execute.Execution | None = None
        self.heartbeat = Heartbeat(
            self.factory, claim.ti_id, claim.try_number, self.config.heartbeat_interval, log
        )
        self.fenced = self.heartbeat.start()
        try:
            return await self._execute(claim)
        except Exception as exc:  # a bug here must still end the try, not leave it running
            if self.execution is not None:
                await self.execution.stop()
            text = execute.format_exception(exc)
            return await self._fail(f"internal error in miniflow-worker:\n{text}", exit_code=None)
        finally:
            await self.heartbeat.stop()

    async def _execute(self, claim: Claim) -> int:
        prepared = await self._race(asyncio.ensure_future(self._prepare(claim)), None)
        if prepared[0] != "done":
            return await self._interrupted(prepared, None)
        execution_or_error = prepared[1]
        if isinstance(execution_or_error, str):
            return await self._fail(execution_or_error, exit_code=None)
        execution: execute.Execution = execution_or_error
        self.execution = execution
        timeout = claim.task["timeout"] if claim.task else None
        ran = await self._race(asyncio.ensure_future(execution.run()), timeout)
        if ran[0] != "done":
            return await self._interrupted(ran, execution)
        ended: execute.Ended = ran[1]
        if ended.ok:
            extra = (
                {"result": (ended.value)} if isinstance(execution, execute.PythonExecution) else {}
            )
            return await self._record(
                Outcome(
                    claim.ti_id,
                    claim.try_number,
                    states.SUCCESS,
                    EXPECT_RUNNING,
                    exit_code=0,
                    extra=extra,
                ),
                EXIT_SUCCESS,
            )
        return await self._fail(ended.error or "task failed", exit_code=ended.exit_code)

    async def _prepare(self, claim: Claim) -> execute.Execution | str:
        """The execution to run, or the error text of a failure to record."""
        task = claim.task
        if claim.problem is not None or task is None:
            return claim.problem or f"no task {self.task_id!r}"
        kind = task["kind"]
        if kind == "pod":
            return "pod tasks are run by the launcher, not the worker"
        try:
            rendered = render_task_fields(task, claim.context)
        except TemplateError as exc:
            return str(exc)
        if kind == "bash":
            # The user's command gets the worker's environment minus the database URL:
            # a task has no business holding miniflow's credentials.
            env = {k: v for k, v in os.environ.items() if k != "MINIFLOW_DATABASE_URL"}
            env.update(rendered.env)
            return execute.BashExecution(
                rendered.bash_command or "", env, grace=self.config.kill_grace_period
            )
        if kind != "python":
            return f"task {self.task_id!r} has unknown kind {kind!r}"
        assert claim.fileloc is not None
        path = self.config.dags_folder / claim.fileloc
        loaded = await execute.in_daemon_thread(
            lambda: _load_function(path, self.dag_id, self.task_id), "miniflow dag import"
        )
        if isinstance(loaded, str):
            return loaded
        try:
            args, kwargs = execute.resolve_arguments(task, claim.upstream)
        except execute.TaskFailure as exc:
            return f"task {self.task_id!r}: {exc}"
        os.environ.update(rendered.env)
        return execute.PythonExecution(
            self.task_id, loaded, args, kwargs, max_result_bytes=self.config.max_result_bytes
        )

    async def _race(
        self, main: asyncio.Future[T], timeout: float | None
    ) -> tuple[Literal["done"], T] | tuple[Literal["fenced", "signal", "timeout"], int]:
        """Wait for `main`, unless fenced out, signalled or timed out first."""
        timer = asyncio.ensure_future(asyncio.sleep(timeout)) if timeout else None
        waiters: set[asyncio.Future[Any]] = {main, self.fenced, self.signalled}
        if timer is not None:
            waiters.add(timer)
        try:
            while True:
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if main in done:
                    return "done", main.result()
                if self.signalled in done:
                    return "signal", self.signalled.result()
                if timer is not None and timer in done:
                    return "timeout", 0
                if self.fenced in done:
                    if self.fenced.result():
                        return "fenced", 0
                    waiters.discard(self.fenced)  # stopped (not fenced): keep waiting
        finally:
            if timer is not None:
                timer.cancel()
            if not main.done():
                main.cancel()

    async def _interrupted(
        self,
        why: tuple[str, Any],
        execution: execute.Execution | None,
    ) -> int:
        reason, detail = why
        if execution is not None:
            await execution.stop()
        if reason == "fenced":
            log(
                f"fenced out: try {self.try_number} of {self.key} is no longer the current "
                "running try (a newer try exists or the scheduler ended it); task stopped, "
                "nothing recorded"
            )
            return EXIT_FENCED
        if reason == "signal":
            name = signal.Signals(detail).name
            log(f"received {name}: task stopped")
            await self._fail(f"terminated by {name}", exit_code=128 + detail)
            return 128 + int(detail)
        timeout = self.claim.task["timeout"] if self.claim.task else None
        return await self._fail(
            f"timed out after {timeout:g}s (the task's timeout)", exit_code=None
        )

    async def _fail(self, error: str, *, exit_code: int | None) -> int:
        print(error, file=sys.stderr, flush=True)
        claim = self.claim
        outcome = failure_outcome(
            ti_id=claim.ti_id,
            try_number=claim.try_number,
            max_tries=claim.max_tries,
            task=claim.task,
            now=now(),
            exit_code=exit_code,
            error=error,
            expected=EXPECT_RUNNING,
        )
        return await self._record(outcome, EXIT_TASK_FAILED)

    async def _record(self, outcome: Outcome, code: int) -> int:
        """Write the outcome (fenced by try and state); `code` if it was applied."""
        await self.heartbeat.stop()
        for delay in (*RECORD_RETRY_DELAYS, None):
            try:
                async with transaction(self.factory) as session:
                    changed = await task_instances.finish(session, [outcome], now())
                break
            except (SQLAlchemyError, OSError) as exc:
                if delay is None:
                    log(f"could not record the outcome ({outcome.state}): {_db_reason(exc)}")
                    return EXIT_NOT_RECORDED
                log(f"recording the outcome failed ({_db_reason(exc)}); retrying in {delay:g}s")
                await asyncio.sleep(delay)
        if outcome.ti_id not in changed:
            log(
                f"outcome {outcome.state} not recorded: try {outcome.try_number} of {self.key} "
                "is no longer the current running try"
            )
            return EXIT_FENCED
        retry_at = outcome.next_retry_at
        when = f" (next try after {retry_at.isoformat()})" if retry_at else ""
        log(f"try {outcome.try_number} of {self.key}: {outcome.state}{when}")
        return code


def _load_function(path: Path, dag_id: str, task_id: str) -> Callable[..., Any] | str:
    """The Python function of the task, from its DAG file; or the error text."""
    from miniflow.loader import import_dag_file
    from miniflow.taskflow import PythonTask

    if not path.is_file():
        return f"DAG file {path} does not exist (DAG {dag_id!r})"
    try:
        found = import_dag_file(path)
    except BaseException as exc:  # user code: report anything it raises
        return f"importing DAG file {path} failed:\n{execute.format_exception(exc, skip_frames=1)}"
    dag = next((d for d in found if d.dag_id == dag_id), None)
    if dag is None:
        return f"DAG file {path} no longer defines DAG {dag_id!r}"
    task = dag.tasks.get(task_id)
    if task is None:
        return f"DAG {dag_id!r} in {path} no longer has a task {task_id!r}"
    if not isinstance(task, PythonTask):
        return f"task {task_id!r} of DAG {dag_id!r} in {path} is no longer a Python task"
    return task.function
