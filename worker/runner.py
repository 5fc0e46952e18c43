"""One try of one task: `miniflow-worker run --dag-id D --run-id R --task-id T --try N`.

`main(argv) -> int` is the whole run in-process; the console script and the
local launcher's forked, pre-warmed children both call it. Steps:

1. **Config** (`load_config`) and a connection check: a bad setting or an
   unreachable database is one line on stderr and exit 2, nothing recorded.
2. **Claim** in one transaction (`miniflow_worker.claim`): `worker_claim`
   marks the try running only if the database still expects exactly this try
   and no other worker claimed it (`heartbeat_at IS NULL`). The same
   transaction reads the DAG row, the run and the upstream results a Python
   task needs, so start-up costs one round trip of statements. Not claimed →
   a message, exit 0, nothing runs.
3. **Prepare.** The task definition comes from the *stored* serialized DAG
   version the run was created with (what the scheduler parsed and scheduled
   for this run), not from re-importing the file:
   a Bash task never imports user code at all (faster, and a DAG file with
   heavy imports cannot break a shell command). Only a Python task imports
   its DAG file, as it is now, for the function (gone from it: a clear
   failure). Templates are rendered with the run's context (`params` = DAG
   params overlaid with the run's conf). A missing DAG/run/file/task, an
   import error or a template error is recorded as a failure of the try
   (retries apply) with a clear message.
4. **Run**, raced against: the heartbeat's fence (a newer try exists, or the
   scheduler ended this one → stop the task, record nothing, exit 3),
   SIGTERM/SIGINT (stop the task, record "terminated by SIGTERM", exit
   128+signal: 143), and the task's `timeout` (stop, record a failure).
5. **Record** the outcome (`miniflow_worker.outcome`) with
   `task_instances.finish`, expecting `running`: success with the result, or
   `retries.failure_outcome` (up_for_retry with back-off while tries remain,
   else failed). If the fenced update matches
   nothing, a newer try owns the row: exit 3. A database error while
   recording is retried a few times; then exit 4 and the scheduler's zombie
   detection takes over.

Heavy modules (SQLAlchemy, the store) are imported at module level on
purpose: every real run needs them, and the local launcher's forkserver
preloads this module so its children start warm. What a run may not need is
imported lazily: jinja2 (by `miniflow.authoring.templates`, only for templated
fields), the DAG loader (Python tasks only), the sensor loop (sensors only)
and the database driver and its SQLAlchemy dialect (only the one the URL
names; the store imports a dialect's INSERT ... ON CONFLICT the same way). The
console entry (`miniflow_worker.main`) runs start-up, up to the claim, with the
garbage collector off (`resume_gc`). This module never imports the
scheduler, the launchers, parsing or kubernetes_asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Literal, TypeVar

from miniflow_worker import execute
from miniflow_worker.heartbeat import Heartbeat
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.authoring import lookups
from miniflow.authoring.dag import DAG
from miniflow.authoring.taskflow import PythonTask
from miniflow.authoring.templates import render_task_fields, render_with_dag
from miniflow.authoring.xcom import XComError, check_value, pushed_line
from miniflow.config import Config, config_inputs, load_config
from miniflow.errors import ConfigError, DatabaseUnavailable, TemplateError
from miniflow.store.config_values import DatabaseBackend
from miniflow.store.engine import check_connection, create_engine, sessionmaker

# Relative: mypy checks this package as `worker` (pyproject `files`), so to it the
# `miniflow_worker.*` imports are untyped; these keep the split-off parts of the run checked.
from . import branching, callbacks, preimport
from .claim import Claim, TryRef, claim_try
from .outcome import EXIT_FENCED as EXIT_FENCED
from .outcome import EXIT_NOT_RECORDED as EXIT_NOT_RECORDED
from .outcome import EXIT_SUCCESS as EXIT_SUCCESS
from .outcome import EXIT_TASK_FAILED as EXIT_TASK_FAILED
from .outcome import EXIT_UNAVAILABLE as EXIT_UNAVAILABLE
from .outcome import EXPECT_RUNNING as EXPECT_RUNNING
from .outcome import RECORD_RETRY_DELAYS as RECORD_RETRY_DELAYS
from .outcome import Recorder, db_reason
from .relay import Relay, RelayUnavailable
from .xcom import WorkerXCom

T = TypeVar("T")

CLAIM_PATIENCE = 15.0
"""Seconds the worker keeps trying to reach the database and claim its try."""

abandoned_threads = execute.abandoned_threads

PREPARED_ENGINES: dict[str, AsyncEngine] = {}
"""Engines a forking parent made ready for its children, by database URL
(`miniflow_worker.warm.prefork`): dialect initialised and the worker's statements compiled
into the engine's cache (which is per engine), no connection open. Empty in a cold worker."""


PREPARED_CONFIG: tuple[dict[str, str], Config] | None = None
"""What a forking parent read its next child's configuration from (`config.config_inputs`)
and that configuration (`miniflow_worker.warm.prefork`); None in a cold worker."""


def try_config() -> Config:
    """The configuration of this try: the forking parent's, read just before the fork from
    this very environment, else read now (raises `ConfigError`)."""
    if PREPARED_CONFIG is not None and config_inputs(os.environ) == PREPARED_CONFIG[0]:
        return PREPARED_CONFIG[1]
    return load_config()


def new_engine(url: str) -> AsyncEngine:
    """The engine of one worker: a claim, the heartbeat beside it, the outcome."""
    return create_engine(url, pool_size=2)


def worker_engine(url: str) -> AsyncEngine:
    """The engine prepared before the fork for `url`, or a new one."""
    return PREPARED_ENGINES.get(url) or new_engine(url)


def log(message: str) -> None:
    """A line from the worker itself (not the task) on stderr."""
    print(f"miniflow-worker: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    return _parser().parse_args(argv)


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """Built once (a few milliseconds): a forking parent's children inherit it."""
    parser = argparse.ArgumentParser(
        prog="miniflow-worker", description="Run one try of a miniflow task (inside its pod)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one try of a task and record its outcome")
    run.add_argument("--dag-id", required=True)
    run.add_argument("--run-id", required=True)
    run.add_argument("--task-id", required=True)
    run.add_argument("--try", dest="try_number", type=int, required=True, metavar="N")
    run.add_argument("--map-index", dest="map_index", type=int, default=-1, metavar="I")
    return parser


def main(argv: list[str], *, resume_gc: bool = False) -> int:
    """Run the try named by `argv`; returns the exit code (see the EXIT_* constants).

    `resume_gc`: the caller turned the garbage collector off for start-up (the console
    entry does); it is frozen and turned back on once the try is claimed, before any
    user code (the DAG file's import included) runs."""
    args = parse_args(argv)
    try:
        config = try_config()
    except ConfigError as exc:
        log(f"configuration error: {exc}")
        return EXIT_UNAVAILABLE
    # `Variable.get`, `BaseHook.get_connection`, `{{ var.value.x }}` in this try.
    lookups.register_backend(DatabaseBackend(config.database_url))
    try:
        return asyncio.run(Worker(args, config, resume_gc=resume_gc).main())
    except DatabaseUnavailable as exc:
        log(str(exc))
        return EXIT_UNAVAILABLE


# --- the run -----------------------------------------------------------------------------------


class Worker:
    def __init__(
        self, args: argparse.Namespace, config: Config, *, resume_gc: bool = False
    ) -> None:
        self.resume_gc = resume_gc
        self.dag_id: str = args.dag_id
        self.run_id: str = args.run_id
        self.task_id: str = args.task_id
        self.try_number: int = args.try_number
        self.map_index: int = args.map_index
        self.config = config
        self.ref = TryRef(
            dag_id=self.dag_id,
            run_id=self.run_id,
            task_id=self.task_id,
            try_number=self.try_number,
            map_index=self.map_index,
        )
        mapped = f"[{self.map_index}]" if self.map_index >= 0 else ""
        self.key = f"{self.dag_id}/{self.run_id}/{self.task_id}{mapped}"

    async def main(self) -> int:
        self.signalled = self._install_signal_handlers()
        engine = worker_engine(self.config.database_url)
        self.relay = Relay.from_environ(self.config.database_url)
        try:
            self.factory = sessionmaker(engine)
            claim = await self._claim_relayed()
            if claim is None:
                claim = await self._claim_patiently(engine)
            if isinstance(claim, str):
                log(claim)
                return EXIT_SUCCESS
            return await self._run_claimed(claim)
        finally:
            if self.relay is not None:
                self.relay.close_quietly()
            if _ever_connected(engine):  # a relayed short try never opened a connection
                await engine.dispose()

    async def _claim_relayed(self) -> Claim | str | None:
        """The claim, made by the forkserver's relay process (see `relay`); None: claim it
        yourself."""
        if self.relay is None:
            return None
        try:
            return await self.relay.claim(self.ref)
        except RelayUnavailable as exc:
            log(f"the forkserver could not claim the try ({exc}); claiming it directly")
            self.relay = None
            return None

    async def _claim_patiently(self, engine: Any) -> Claim | str:
        """Connect and claim, riding out a database blip of up to `CLAIM_PATIENCE` seconds
        (half the zombie threshold if that is shorter).

        Nothing has run yet, so trying again is harmless; giving up at the first dropped
        connection would make a short outage cost the try a launch.
        """
        patience = min(CLAIM_PATIENCE, self.config.zombie_threshold / 2)
        deadline = time.monotonic() + patience
        delay = 0.2
        while True:
            try:
                await check_connection(engine)
                try:
                    return await claim_try(self.factory, self.ref)
                except SQLAlchemyError as exc:
                    raise DatabaseUnavailable(
                        f"database {self.config.safe_database_url()} failed while claiming "
                        f"try {self.try_number} of {self.key}: {db_reason(exc)}"
                    ) from exc
            except DatabaseUnavailable as exc:
                if time.monotonic() + delay > deadline or self.signalled.done():
                    raise
                log(f"{exc}; trying again in {delay:g}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

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

    async def _run_claimed(self, claim: Claim) -> int:
        via = " through the forkserver" if self.relay is not None else ""
        log(f"claimed try {claim.try_number} of {self.key}{via}")
        if self.resume_gc:  # start-up's objects (engine, compiled statements) stay for the run
            gc.freeze()
            gc.enable()
        self.claim = claim
        self.execution: execute.Execution | None = None
        self.heartbeat = Heartbeat(
            self.factory,
            claim.ti_id,
            claim.try_number,
            self.config.heartbeat_interval,
            log,
            lost_after=self.config.zombie_threshold,
        )
        self.fenced = self.heartbeat.start()
        self.recorder = Recorder(
            self.factory, claim, self.heartbeat, key=self.key, log=log, relay=self.relay
        )
        self.loaded: PythonTask | None = None
        try:
            code = await self._execute(claim)
        except Exception as exc:  # a bug here must still end the try, not leave it running
            if self.execution is not None:
                await self.execution.stop()
            text = execute.format_exception(exc)
            code = await self.recorder.fail(
                f"internal error in miniflow-worker:\n{text}", exit_code=None
            )
        finally:
            await self.heartbeat.stop()
        await self._run_callbacks(claim)
        return code

    async def _run_callbacks(self, claim: Claim) -> None:
        """The task's callback for the outcome this worker recorded (see `callbacks`)."""
        recorded, task = self.recorder.recorded, self.loaded
        if recorded is None or task is None:
            return
        name = callbacks.BY_STATE.get(recorded.state)
        found = task.effective_settings().get(name, ()) if name else ()
        if not name or not found:
            return
        await callbacks.run_callbacks(
            found,
            callbacks.callback_context(claim.context, recorded.state, recorded.error),
            timeout=self.config.callback_timeout,
            name=name,
            log=log,
        )

    async def _execute(self, claim: Claim) -> int:
        prepared = await self._race(asyncio.ensure_future(self._prepare(claim)), None)
        if prepared[0] != "done":
            return await self.recorder.interrupted(prepared, None)
        execution_or_error = prepared[1]
        if isinstance(execution_or_error, str):
            return await self.recorder.fail(execution_or_error, exit_code=None)
        execution: execute.Execution = execution_or_error
        self.execution = execution
        timeout = claim.task["timeout"] if claim.task else None
        if isinstance(execution, execute.PythonExecution) and execution.poke:
            return await self._sense(claim, execution, timeout)
        ran = await self._race(asyncio.ensure_future(execution.run()), timeout)
        if ran[0] != "done":
            return await self.recorder.interrupted(ran, execution)
        ended: execute.Ended = ran[1]
        if ended.skipped:
            return await self.recorder.skip(ended.error or "skipped by the task")
        skip_codes = claim.task.get("skip_on_exit_code", []) if claim.task else []
        if not ended.ok and ended.exit_code in skip_codes:
            # Bash under a launcher whose worker reports (Kubernetes): the worker decides;
            # the local launcher's scheduler decides the same from the exit code.
            return await self.recorder.skip(
                f"skipped: exit code {ended.exit_code} is one of the task's skip_on_exit_code",
                exit_code=ended.exit_code,
            )
        if ended.ok:
            extra = (
                {"result": (ended.value)} if isinstance(execution, execute.PythonExecution) else {}
            )
            if isinstance(execution, execute.BashExecution) and claim.task is not None:
                if claim.task.get("push_result"):
                    try:
                        extra = {
                            "result": check_value(
                                pushed_line(execution.last_line),
                                self.config.max_result_bytes,
                                f"task {self.task_id!r}: result",
                            )
                        }
                    except XComError as exc:
                        return await self.recorder.fail(str(exc), exit_code=None)
            skip: list[str] = []
            if claim.task is not None and claim.task.get("python_mode"):
                try:
                    skip = branching.to_skip(
                        claim.task, self.task_id, ended.value, claim.downstream
                    )
                except branching.BranchError as exc:
                    return await self.recorder.fail(str(exc), exit_code=None)
                if skip:
                    log(f"{self.task_id} skips {', '.join(skip)}")
            return await self.recorder.success(extra, skip=skip)
        if ended.final:  # `FailTask`: no retry, whatever retries remain
            return await self.recorder.fail_final(ended.error or "task failed")
        return await self.recorder.fail(ended.error or "task failed", exit_code=ended.exit_code)

    async def _sense(
        self, claim: Claim, execution: execute.PythonExecution, timeout: float | None
    ) -> int:
        assert claim.task is not None and "sensor" in claim.task
        first_poke = await self.recorder.start_poking()
        if first_poke is None:
            return EXIT_NOT_RECORDED
        from . import sensing  # sensors only

        return await sensing.sense(
            execution,
            claim.task["sensor"],
            first_poke,
            recorder=self.recorder,
            race=self._race,
            try_timeout=timeout,
            log=log,
        )

    async def _prepare(self, claim: Claim) -> execute.Execution | str:
        """The execution to run, or the error text of a failure to record."""
        task = claim.task
        if claim.problem is not None or task is None:
            return claim.problem or f"no task {self.task_id!r}"
        kind = task["kind"]
        if kind == "pod":
            return "pod tasks are run by the launcher, not the worker"
        assert claim.fileloc is not None
        path = self.config.dags_folder / claim.fileloc
        dag: DAG | None = None
        if claim.needs_dag_file:  # function macros / filters: they live in the DAG file
            found = await execute.in_daemon_thread(
                lambda: _load_dag_or_task(path, self.dag_id, self.task_id, kind),
                "miniflow dag import",
            )
            if isinstance(found, str):
                return found
            if isinstance(found, PythonTask):
                self.loaded = found
            dag = found.dag if isinstance(found, PythonTask) else found
        try:
            if dag is None:
                rendered = render_task_fields(task, claim.context)
            else:
                rendered = render_with_dag(dag, task, claim.context)
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
        quick: PythonTask | str | None = None
        found = preimport.cached(path) if self.loaded is None else None
        if found is not None:
            # Imported by the forkserver: nothing slow left to keep off the loop.
            quick = _load_task(path, self.dag_id, self.task_id, found)
        loaded = (
            self.loaded
            or quick
            or await execute.in_daemon_thread(
                lambda: _load_task(path, self.dag_id, self.task_id), "miniflow dag import"
            )
        )
        if isinstance(loaded, str):
            return loaded
        self.loaded = loaded
        try:
            args, kwargs = execute.resolve_arguments(task, claim.upstream)
        except execute.TaskFailure as exc:
            return f"task {self.task_id!r}: {exc}"
        kwargs.update(claim.map_args or {})  # a mapped instance's own arguments
        os.environ.update(rendered.env)
        return execute.PythonExecution(
            self.task_id,
            loaded.function,
            args,
            kwargs,
            max_result_bytes=self.config.max_result_bytes,
            context=claim.context,
            poke=task.get("python_mode") == "sensor" and "sensor" in task,
            xcom=WorkerXCom(
                self.factory,
                self.config.database_url,
                ti_id=claim.ti_id,
                dag_id=self.dag_id,
                run_id=self.run_id,
                task_id=self.task_id,
                max_bytes=self.config.max_result_bytes,
            ),
        )

    async def _race(
        self, main: asyncio.Future[T], timeout: float | None
    ) -> tuple[Literal["done"], T] | tuple[Literal["fenced", "lost", "signal", "timeout"], int]:
        """Wait for `main`, unless fenced out, cut off, signalled or timed out first."""
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
                    ending = self.fenced.result()
                    if ending is not None:
                        return ending, 0
                    waiters.discard(self.fenced)  # stopped (not fenced): keep waiting
        finally:
            if timer is not None:
                timer.cancel()
            if not main.done():
                main.cancel()


def _ever_connected(engine: AsyncEngine) -> bool:
    """Whether the engine's pool holds (or lent) a connection: disposing of an engine
    that never connected only rebuilds its pool."""
    pool: Any = engine.sync_engine.pool
    try:
        return bool(pool.checkedin() or pool.checkedout())
    except AttributeError:  # a pool that does not count: dispose to be safe
        return True


def _load_dag_or_task(path: Path, dag_id: str, task_id: str, kind: str) -> DAG | PythonTask | str:
    """For rendering with the DAG's macros / filters: the Python task (whose DAG has them,
    imported once for both) or, for a Bash task, the DAG; or the error text."""
    return _load_task(path, dag_id, task_id) if kind == "python" else _load_dag(path, dag_id)


def _load_dag(path: Path, dag_id: str, found: list[DAG] | None = None) -> DAG | str:
    """The DAG, from its file as it is now (`found`: the forkserver's import of that
    version, already looked up); or the error text."""
    from miniflow import airflow_compat
    from miniflow.authoring.loader import import_dag_file

    if not path.is_file():
        return f"DAG file {path} does not exist (DAG {dag_id!r})"
    if found is None:
        found = preimport.cached(path)  # imported by the forkserver, this very version
    if found is None and airflow_compat.mentions_airflow(path):
        airflow_compat.activate()  # the worker's process only: `import airflow` gets the layer
    try:
        found = found if found is not None else import_dag_file(path)
    except BaseException as exc:  # user code: report anything it raises
        return f"importing DAG file {path} failed:\n{execute.format_exception(exc, skip_frames=1)}"
    dag = next((d for d in found if d.dag_id == dag_id), None)
    if dag is None:
        return f"DAG file {path} no longer defines DAG {dag_id!r}"
    return dag


def _load_task(
    path: Path, dag_id: str, task_id: str, found: list[DAG] | None = None
) -> PythonTask | str:
    """The Python task (its function, its callbacks), from its DAG file; or the error text."""
    dag = _load_dag(path, dag_id, found)
    if isinstance(dag, str):
        return dag
    task = dag.tasks.get(task_id)
    if task is None:
        # The run keeps the version it was created with; the function can only come
        # from the file as it is now.
        return (
            f"DAG {dag_id!r} in {path} no longer has a task {task_id!r}: this run was "
            "created from an earlier version of the DAG, but a Python task's function is "
            "imported from the DAG file as it is now"
        )
    if not isinstance(task, PythonTask):
        return f"task {task_id!r} of DAG {dag_id!r} in {path} is no longer a Python task"
    return task
