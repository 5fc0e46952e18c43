"""The fault suite's harness: a real `miniflow scheduler` process on a per-test Postgres
database, a DAG that proves each execution, fault injection, and a clean slate after.

What the harness owns, per test: a cloned database, a tmp folder (DAGs, state dir,
proof files), every scheduler process it started and every process those started.
The last is the hard part: task processes lead their own sessions and outlive the
scheduler on purpose (a restarted scheduler adopts them), and forked `@task` workers
are children of the scheduler's forkserver, not of anything the test holds. So each
harness puts a unique token in the scheduler's environment; every descendant
inherits it (Bash tasks get the scheduler's environment, forked workers the
forkserver's), and `processes()` finds them all in /proc whoever their parent is
now. `cleanup()` SIGKILLs them until none is left, even when the test failed.

Database reads go through the store's own query functions on one engine whose
connections say `application_name = miniflow-faults-harness`, so a fault that
terminates "every backend of the test database" can spare the observer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from miniflow.launchers import local_procs
from miniflow.store import attempts as store_attempts
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import states
from miniflow.store import task_instances as store_tis
from miniflow.store.models import TaskAttempt
from miniflow.store.records import AttemptRecord, TaskInstanceRecord
from tests.e2e.helpers import cli_env, kill_group, run_cli, spawn_cli, until
from tests.faults.dags.layered import LayeredDag, read_lines

HARNESS_APP = "miniflow-faults-harness"
"""application_name of the harness's own database connections."""
TOKEN_VAR = "MF_FAULTS_TOKEN"
"""Environment variable marking every process a harness started, directly or not."""

RUN_TIMEOUT = 45.0


def harness_engine(url: str) -> AsyncEngine:
    """The observer's engine: small, and recognisable in pg_stat_activity."""
    return create_async_engine(
        url,
        pool_size=2,
        max_overflow=2,
        connect_args={"server_settings": {"application_name": HARNESS_APP}},
    )


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    state: str  # /proc/<pid>/stat state letter ("Z": zombie, "T": stopped)
    cmdline: str


def find_processes(token: str, also_mentioning: str | None = None) -> list[Proc]:
    """Processes whose environment carries the token (or whose command line mentions a
    path): the harness's scheduler, forkserver, workers, shells and their children."""
    needle = f"{TOKEN_VAR}={token}".encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if needle not in environ and not (also_mentioning and also_mentioning in cmdline):
            continue
        stat = local_procs.proc_stat(pid)
        if stat is not None:
            found.append(Proc(pid, stat[0], cmdline))
    return found


@dataclass(frozen=True, slots=True)
class Fault:
    what: str
    at: datetime
    signature: tuple[int, int] | None
    """The scheduler's attempt counts when the fault ended (see `Harness.progress`)."""


class Harness:
    """One scenario's world; see the module docstring."""

    def __init__(self, name: str, db_url: str, tmp: Path, engine: AsyncEngine) -> None:
        self.name = name
        self.db_url = db_url
        self.tmp = tmp
        self.dags = tmp / "dags"
        self.state = tmp / "state"
        self.proof = tmp / "proof.txt"
        self.began = tmp / "began.txt"
        self.marks = tmp / "marks"
        self.marks.mkdir(parents=True, exist_ok=True)
        self.token = uuid.uuid4().hex
        self.settings: dict[str, str] = {"MINIFLOW_PARALLELISM": "8"}
        """Extra `MINIFLOW_*` settings of the scheduler (scenarios add theirs)."""
        self.engine = engine
        self.sessions = store_engine.sessionmaker(engine)
        self.schedulers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.dag: LayeredDag | None = None
        self.run_id = ""
        self.faults: list[Fault] = []
        self.progress: list[tuple[datetime, tuple[int, int]]] = []
        """When the harness saw the scheduler record something (an attempt opened or
        closed), and the counts it saw: the end of a "time to recovery"."""
        self._watcher: asyncio.Task[None] | None = None
        self.started = time.monotonic()

    # --- the DAG and the run ---------------------------------------------------------------

    def layered(self, dag_id: str = "faults", **kw: Any) -> LayeredDag:
        return LayeredDag(dag_id=dag_id, proof=self.proof, began=self.began, **kw)

    def write(self, dag: LayeredDag) -> Path:
        """Write (or rewrite) the DAG's file; the first one written is the one checked."""
        if self.dag is None:
            self.dag = dag
        return self.write_file(f"{dag.dag_id}.py", dag.source())

    def write_file(self, name: str, text: str) -> Path:
        """Replace a file of the DAGs folder atomically (as git-sync's link swap does): a
        worker importing it meanwhile sees the old or the new text, never half of it."""
        self.dags.mkdir(parents=True, exist_ok=True)
        path = self.dags / name
        tmp = self.dags / f".{name}.tmp"  # hidden: never a DAG file candidate
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    @property
    def dag_id(self) -> str:
        assert self.dag is not None, "write a DAG first"
        return self.dag.dag_id

    def env(self) -> dict[str, str]:
        return cli_env(
            self.db_url,
            self.dags,
            self.state,
            MINIFLOW_LAUNCHER="local",
            **self.settings,
            **{TOKEN_VAR: self.token},
        )

    async def trigger(self) -> str:
        """`miniflow dags trigger` (it parses the DAGs folder itself)."""
        result = await asyncio.to_thread(run_cli, ["dags", "trigger", self.dag_id], self.env())
        assert result.returncode == 0, result.stderr
        # "created run <run_id> of <dag_id>"
        self.run_id = result.stdout.split("created run ", 1)[1].rsplit(" of ", 1)[0]
        self._watcher = asyncio.ensure_future(self._watch_progress())
        return self.run_id

    async def _signature(self) -> tuple[int, int]:
        """(attempts opened, attempts closed): only the scheduler writes `task_attempt`."""
        query = select(func.count(TaskAttempt.id), func.count(TaskAttempt.ended_at))
        async with store_engine.transaction(self.sessions) as session:
            opened, closed = (await session.execute(query)).one()
        return int(opened), int(closed)

    async def _watch_progress(self) -> None:
        """Note each moment the scheduler's record of attempts changes."""
        last = None
        while True:
            try:
                seen: tuple[int, int] | None = await self._signature()
            except Exception:  # the database is the thing under attack: keep watching
                seen = last
            if seen is not None and seen != last:
                self.progress.append((now(), seen))
                last = seen
            await asyncio.sleep(0.1)

    async def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    # --- the scheduler process -------------------------------------------------------------

    def start_scheduler(self) -> subprocess.Popen[bytes]:
        log = self.tmp / f"scheduler{len(self.schedulers) + 1}.log"
        proc = spawn_cli(["scheduler"], self.env(), log)
        self.schedulers.append(proc)
        self.logs.append(log)
        return proc

    @property
    def scheduler(self) -> subprocess.Popen[bytes]:
        return self.schedulers[-1]

    def stop_scheduler(
        self,
        sig: int = signal.SIGTERM,
        timeout: float = 15.0,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> float:
        """Signal the scheduler and wait for it; seconds it took to exit.

        SIGKILL goes to its whole process group (the scheduler "pod" dies with its
        forkserver and parsers; task processes, in their own sessions, live on). Other
        signals go to the scheduler alone, as `kill <pid>` would. A scheduler that does
        not exit in `timeout` is SIGKILLed and the AssertionError says so.
        """
        proc = proc or self.scheduler  # `proc`: which one (default the last started)
        began = time.monotonic()
        if proc.poll() is None:
            if sig == signal.SIGKILL:
                kill_group(proc)
            else:
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                proc.wait(5)
                raise AssertionError(
                    f"the scheduler did not exit within {timeout:g}s of signal {sig}"
                ) from None
        return time.monotonic() - began

    async def fault(self, what: str) -> datetime:
        """Record that a fault ended now (the start of "time to recovery")."""
        at = now()
        try:
            signature: tuple[int, int] | None = await self._signature()
        except Exception:  # unreadable now: any later change counts as progress
            signature = None
        self.faults.append(Fault(what, at, signature))
        return at

    def recovered_at(self) -> datetime | None:
        """When the scheduler first recorded progress after the last fault."""
        if not self.faults:
            return None
        fault = self.faults[-1]
        return next(
            (t for t, seen in self.progress if t > fault.at and seen != fault.signature), None
        )

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            out.append(f"--- {log.name} ---")
            out.extend(text[-lines:])
        return "\n".join(out)

    # --- database reads --------------------------------------------------------------------

    async def read(self, func: Callable[..., Any], *args: Any) -> Any:
        async with store_engine.transaction(self.sessions) as session:
            return await func(session, *args)

    async def run_state(self) -> str:
        run = await self.read(store_runs.get_run, self.dag_id, self.run_id)
        return str(run.state)

    async def tis(self) -> dict[str, TaskInstanceRecord]:
        rows = await self.read(store_tis.list_for_run, self.dag_id, self.run_id)
        return {ti.task_id: ti for ti in rows}

    async def ti(self, task_id: str) -> TaskInstanceRecord:
        return (await self.tis())[task_id]

    async def attempts(self, task_id: str | None = None) -> list[AttemptRecord]:
        rows: list[AttemptRecord] = await self.read(
            store_attempts.for_run, self.dag_id, self.run_id
        )
        return [a for a in rows if task_id is None or a.task_id == task_id]

    async def successes(self) -> int:
        return sum(ti.state == states.SUCCESS for ti in (await self.tis()).values())

    async def dag_hash(self) -> str:
        return str((await self.read(store_dags.get_dag, self.dag_id)).dag_hash)

    async def until(
        self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
    ) -> Any:
        """`until`, and on a timeout the schedulers' logs: what kept them from it."""
        try:
            return await until(predicate, timeout, what, interval)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    async def wait_successes(self, count: int, timeout: float = RUN_TIMEOUT) -> None:
        async def enough() -> bool:
            return await self.successes() >= count

        await self.until(enough, timeout, f"{count} tasks to succeed")

    async def wait_began(self, task_id: str, try_number: int = 1, timeout: float = 30) -> int:
        """Wait until the try's body has started; its pid (from the began file)."""

        def began() -> int | None:
            return next(
                (p for t, n, p in read_lines(self.began) if (t, n) == (task_id, try_number)),
                None,
            )

        async def check() -> int | None:
            return began()

        pid: int = await self.until(check, timeout, f"{task_id} try {try_number} to begin")
        return pid

    async def handle_pid(self, task_id: str, try_number: int = 1, timeout: float = 30) -> int:
        """The attempt process's pid, from task_instance.handle ("pid:N") of that try."""

        async def handle() -> int | None:
            ti = await self.ti(task_id)
            if ti.try_number == try_number and ti.handle and ti.handle.startswith("pid:"):
                return int(ti.handle.removeprefix("pid:"))
            return None

        pid: int = await self.until(handle, timeout, f"the handle of {task_id} try {try_number}")
        return pid

    async def wait_finished(self, timeout: float = RUN_TIMEOUT) -> str:
        async def finished() -> str | None:
            state = await self.run_state()
            return state if state in states.RUN_FINISHED else None

        result: str = await self.until(finished, timeout, "the run to finish", interval=0.1)
        return result

    # --- processes -------------------------------------------------------------------------

    def processes(self, *, alive_only: bool = True) -> list[Proc]:
        found = find_processes(self.token, also_mentioning=f"{self.tmp}/")
        return [p for p in found if not alive_only or p.state not in ("Z", "X")]

    async def wait_no_processes(self, timeout: float) -> list[Proc]:
        """Wait for every process of the test to end by itself; those still alive."""
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.schedulers:
                proc.poll()  # reap our own children
            alive = self.processes()
            if not alive or time.monotonic() > deadline:
                return alive
            await asyncio.sleep(0.1)

    def cleanup(self) -> None:
        """SIGKILL and reap every process the harness started, directly or not."""
        for proc in self.schedulers:
            kill_group(proc)
        deadline = time.monotonic() + 15
        while True:
            alive = self.processes()
            for p in alive:
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGKILL)
            for proc in self.schedulers:
                proc.poll()
            if not alive:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"processes survived SIGKILL: {alive}")
            time.sleep(0.05)
        for proc in self.schedulers:
            proc.wait(5)


def describe(procs: Sequence[Proc]) -> list[str]:
    return [f"{p.pid} ({p.state}) {p.cmdline[:120]}" for p in procs]
