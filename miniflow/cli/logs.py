"""Reading a try's log for `miniflow tasks logs`: read-only, from any process.

The CLI never builds a launcher to read a log: starting one watches
namespaces, adopts pods and deletes finished ones, which a read must never
do. Instead:

- **local launcher**: the try's log file under the state dir (the whole log).
  `--follow` polls the file until the try ends; the end is learned from the
  try's exit file, its launch marker's process, or the database (this process
  is usually not the one that launched the try).
- **Kubernetes**: exactly one log request for the try's pod (one stream with
  `--follow`), through `KubeClient`; if the pod is gone, the tail saved on the
  attempt.
- a try that never started (a template error, a refused launch, an image that
  never pulled) has no log: its recorded reason is shown instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from miniflow.cli import operations, wiring
from miniflow.config import Config
from miniflow.errors import MiniflowError, NotFound
from miniflow.launchers.base import AttemptKey
from miniflow.launchers.local_logs import LocalTryLog
from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import states
from miniflow.store import task_instances as store_tis
from miniflow.store.records import AttemptRecord

FOLLOW_POLL = 0.5
"""Seconds between checks of the database (has the followed try ended?)."""


@dataclass(frozen=True, slots=True)
class _Try:
    key: AttemptKey
    attempt: AttemptRecord

    @property
    def never_started(self) -> bool:
        return self.attempt.ended_at is not None and self.attempt.started_at is None

    def reason_lines(self) -> list[str]:
        a = self.attempt
        why = ": ".join(part for part in (a.reason, a.message) if part) or "no reason recorded"
        return [f"try {a.try_number} never started, so it has no log: {why}"]

    def tail_lines(self) -> list[str] | None:
        tail = self.attempt.log_tail
        return None if tail is None else tail.splitlines()


async def read(
    config: Config,
    dag_id: str,
    run_ref: str | None,
    task_id: str,
    try_number: int | None,
    follow: bool,
    map_index: int = -1,
) -> AsyncIterator[str]:
    """Lines of one try's log (the latest try of the run's task unless `try_number`).

    `run_ref` is a run id, `latest`/None or a unique prefix (see `operations.resolve_run`).
    """
    ti, attempts = await operations.task_attempts(config, dag_id, run_ref, task_id, map_index)
    if try_number is None:
        attempt = attempts[-1]
    else:
        matching = [a for a in attempts if a.try_number == try_number]
        if not matching:
            tries = ", ".join(str(a.try_number) for a in attempts)
            raise NotFound(
                f"{dag_id}/{ti.run_id}/{task_id} has no try {try_number} (tries: {tries})"
            )
        attempt = matching[0]
    found = _Try(AttemptKey(dag_id, ti.run_id, task_id, attempt.try_number, map_index), attempt)
    lines = (
        _local(config, found, follow) if config.launcher == "local" else _pod(config, found, follow)
    )
    async for line in lines:
        yield line


# --- local processes -------------------------------------------------------------------------


async def _local(config: Config, found: _Try, follow: bool) -> AsyncIterator[str]:
    log = LocalTryLog(config.state_dir, found.key)
    ended = found.attempt.ended_at is not None
    if not log.exists():
        if ended or not follow:
            for line in _saved(found, f"its log file {log.path} does not exist"):
                yield line
            return
    if not follow or ended:
        async for line in log.lines():
            yield line
        return
    done = asyncio.Event()
    watcher = asyncio.create_task(_watch_local_end(config, log, done))
    watcher.add_done_callback(lambda _: done.set())  # a failed watcher ends the wait too
    try:
        async for line in log.lines(done):
            yield line
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher  # re-raises what made the watcher fail (the database went away)


async def _watch_local_end(config: Config, log: LocalTryLog, done: asyncio.Event) -> None:
    """Set `done` once the try has ended, as seen from any process."""
    async with wiring.open_engine(config) as engine:
        sessions = store_engine.sessionmaker(engine)
        while True:  # another process's try: nothing to await but the file and the database
            if log.exited() or await _recorded_end(sessions, log):
                done.set()
                return
            await asyncio.sleep(FOLLOW_POLL)


async def _recorded_end(sessions: async_sessionmaker[AsyncSession], log: LocalTryLog) -> bool:
    """The database says the try is over (and its process, if we can see it, is gone)."""
    key = log.key
    async with store_engine.transaction(sessions) as session:
        attempts = await store_attempts.for_task(
            session, key.dag_id, key.run_id, key.task_id, key.map_index
        )
        if any(a.try_number == key.try_number and a.ended_at is not None for a in attempts):
            return True
        tis = await store_tis.list_for_run(session, key.dag_id, key.run_id)
    ti = next((t for t in tis if t.task_id == key.task_id and t.map_index == key.map_index), None)
    if ti is not None and ti.try_number == key.try_number and ti.state in states.ACTIVE:
        return False
    # The try is over for the database (a worker recorded its own result): wait for the
    # process itself so its last lines are read too, unless it is gone or not ours to see.
    return log.process_gone()


def _saved(found: _Try, why_no_live_log: str) -> list[str]:
    """The tail kept on the attempt, the reason a try never started, or NotFound."""
    if found.never_started and not found.attempt.log_tail:
        return found.reason_lines()
    tail = found.tail_lines()
    if tail is not None:
        return tail
    if found.attempt.ended_at is None:
        raise NotFound(f"try {found.key.try_number} has no log yet ({why_no_live_log})")
    raise NotFound(f"try {found.key.try_number} has no log: {why_no_live_log}, none was saved")


# --- Kubernetes pods -------------------------------------------------------------------------


async def _pod(config: Config, found: _Try, follow: bool) -> AsyncIterator[str]:
    from miniflow.launchers import pods
    from miniflow.launchers.kube_client import KubeClient

    if follow and found.attempt.ended_at is None and found.attempt.started_at is None:
        found = await _wait_started(config, found)  # a pending pod has no log to stream yet
    if found.never_started:
        for line in _saved(found, "its pod never ran"):
            yield line
        return
    namespace, name = _locate(config, found)
    try:
        client = await KubeClient.connect(kubeconfig=config.kubeconfig, context=config.kube_context)
    except MiniflowError as exc:
        for line in _saved(found, str(exc)):
            yield line
        return
    streamed = 0
    try:
        if follow and found.attempt.ended_at is None:
            async for line in client.stream_log(
                name, namespace, follow=True, container=pods.MAIN_CONTAINER
            ):
                streamed += 1
                yield line
            return
        text = await client.read_log(
            name, namespace, tail_lines=None, container=pods.MAIN_CONTAINER
        )
        lines = text.splitlines()
    except MiniflowError as exc:
        if streamed:
            raise
        lines = _saved(found, f"pod {namespace}/{name}: {exc}")
    finally:
        await client.close()
    for line in lines:
        yield line


def _locate(config: Config, found: _Try) -> tuple[str, str]:
    """(namespace, pod name) of a try: its handle is `name` or `namespace/name`."""
    from miniflow.launchers import pods

    handle = found.attempt.handle
    if not handle:
        return config.namespace, pods.pod_name(found.key)
    namespace, _, name = handle.rpartition("/")
    return namespace or config.namespace, name


async def _wait_started(config: Config, found: _Try) -> _Try:
    """Poll the database until the try's container started (or the try ended)."""
    key = found.key
    async with wiring.open_engine(config) as engine:
        sessions = store_engine.sessionmaker(engine)
        while True:
            async with store_engine.transaction(sessions) as session:
                attempts = await store_attempts.for_task(
                    session, key.dag_id, key.run_id, key.task_id, key.map_index
                )
            attempt = next(a for a in attempts if a.try_number == key.try_number)
            if attempt.started_at is not None or attempt.ended_at is not None:
                return _Try(key, attempt)
            await asyncio.sleep(FOLLOW_POLL)
