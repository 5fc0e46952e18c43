"""A forked worker's claim and outcome, written by its forkserver's relay process.

Under the local launcher's fork mode a worker's own database connection cost more
CPU than anything else it did (connecting, then each ORM statement touching pages
shared with the forkserver and copying them). So the forkserver's relay process
(forked once by the forkserver, see `miniflow.launchers.local_fork`) keeps one
connection per database open and, when asked by a child over the socket it was
given (`RELAY_FD_ENV`), runs the child's claim transaction
(`claim.claim_in`) or records its outcome (`task_instances.finish` + the branch's
skips) there, with the same statements and the same fencing as the child would.
A task that runs long enough to heartbeat, pushes XComs or reads Variables still
connects itself (lazily, on the engine prepared before the fork); the Kubernetes
worker never relays.

Any failure of the relay (no socket, the server gone, a database error or a
timeout on its side) is `RelayUnavailable`: the worker then does the same step
itself, as if there were no relay. A claim the server committed but could not
answer makes the child's own claim fail ("already claimed"), so nothing runs
twice; the try is then ended by the scheduler as if the worker had died.

Messages are pickles between processes of one install (forked from one forkserver):
(op, database URL, arguments, the child's deadline) one way, ("ok", value) or
("error", text) the other. The relay answers one message at a time; it does not
start a step that could still be running when its child stops waiting (a database
that hangs makes the queue of waiting children long), so a child never does a step
itself while the relay may be doing it. The claim's answer is pickled inside its
transaction, so a claim that cannot be sent is rolled back.
"""

from __future__ import annotations

import asyncio
import copyreg
import io
import os
import pickle
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any

from miniflow_worker.clock import now as clock_now
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.authoring.serialized import SerializedDag
from miniflow.authoring.templates import MACROS
from miniflow.store import task_instances
from miniflow.store.engine import sessionmaker, transaction
from miniflow.store.task_instances import Outcome

from .claim import Claim, TryRef, claim_in  # relative, so mypy sees its types (see `runner`)

RELAY_FD_ENV = "MINIFLOW_WORKER_RELAY_FD"
"""The fd of the socket to the relay process (same name as `local_fork.RELAY_FD_ENV`)."""

SERVER_TIMEOUT = 5.0
"""Seconds the relay process gives one step: it answers no other child meanwhile."""
CHILD_TIMEOUT = SERVER_TIMEOUT + 5.0
"""Seconds a child waits for its answer before doing the step itself."""

_HEADER = struct.Struct("!I")
_DISPATCH = copyreg.dispatch_table.copy()


def _macros() -> SimpleNamespace:
    return MACROS


def _reduce_namespace(value: SimpleNamespace) -> Any:
    """The template context's `macros` (functions and modules: not picklable) travel as a
    reference to the receiver's own; other namespaces as usual."""
    return (_macros, ()) if value is MACROS else value.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


_DISPATCH[SimpleNamespace] = _reduce_namespace


class RelayUnavailable(Exception):
    """The relay could not do the step: the worker does it itself."""


def dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(value)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    return pickle.loads(data)


# -- the child's side -------------------------------------------------------------------------


class Relay:
    """The child's end of its relay socket."""

    def __init__(self, sock: socket.socket, url: str) -> None:
        self.sock = sock
        self.url = url

    @classmethod
    def from_environ(cls, url: str) -> Relay | None:
        """The relay this process was forked with, if any (the variable is removed: a
        process the task starts must not think it has one)."""
        value = os.environ.pop(RELAY_FD_ENV, None)
        if not value:
            return None
        try:
            sock = socket.socket(fileno=int(value))
        except (ValueError, OSError):
            return None
        return cls(sock, url)

    async def claim(self, ref: TryRef) -> Claim | str:
        result = await self._call("claim", ref)
        if not isinstance(result, Claim | str):
            raise RelayUnavailable(f"unexpected answer {type(result).__name__}")
        return result

    async def record(self, outcome: Outcome, skip: Sequence[str]) -> set[int]:
        return set(await self._call("record", (outcome, list(skip))))

    async def _call(self, op: str, args: Any) -> Any:
        # Blocking, with the child's deadline: nothing else of the try runs while it waits
        # for its claim or its outcome (the heartbeat can wait that long), and waiting in
        # the event loop cost a forked try a third of a millisecond more per message
        # (registering the socket, its loop iterations, the pages they touch).
        try:
            # CLOCK_MONOTONIC is one clock for every process of the host.
            deadline = time.monotonic() + CHILD_TIMEOUT
            message = dumps((op, self.url, args, deadline))
            self._wait_until(deadline)
            self.sock.sendall(_HEADER.pack(len(message)) + message)
            (size,) = _HEADER.unpack(self._read(_HEADER.size, deadline))
            status, value = loads(self._read(size, deadline))
        except (OSError, EOFError, pickle.PickleError, ValueError) as exc:
            self.close_quietly()
            raise RelayUnavailable(f"no answer from the relay process ({exc!r})") from exc
        if status != "ok":
            raise RelayUnavailable(str(value))
        return value

    def _read(self, size: int, deadline: float) -> bytes:
        chunks, left = [], size
        while left:
            self._wait_until(deadline)
            chunk = self.sock.recv(left)
            if not chunk:
                raise EOFError("the relay process closed the socket")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _wait_until(self, deadline: float) -> None:
        """The socket's next operation times out at `deadline` (one already past: at once)."""
        self.sock.settimeout(max(deadline - time.monotonic(), 1e-6))

    def close_quietly(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# -- the relay process' side -------------------------------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None
_engines: dict[str, AsyncEngine] = {}
"""The relay process' engines, by URL: one connection each, kept open between steps."""

KEPT_VERSIONS = 8
"""DAG versions the relay process keeps (by hash; see `runs.get_run_with_dag`)."""

_versions: dict[str, SerializedDag] = {}
"""The DAG versions the relay process has read, by hash, in the order read."""


def answer(message: bytes, new_engine: Callable[[str], AsyncEngine]) -> bytes:
    """Do one relayed step (in the relay process); never raises."""
    global _loop
    url = "?"
    try:
        op, url, args, deadline = loads(message)
        left = deadline - time.monotonic() - 1.0
        if left < SERVER_TIMEOUT:
            # The child gives up on its answer before a step could time out here: it may
            # do the step itself by then (a relayed claim must not race its own).
            return dumps(("error", "asked too late"))
        step = _STEPS[op]
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = new_engine(url)
            if engine.dialect.name == "sqlite":
                event.listen(engine.sync_engine, "connect", _short_busy_timeout)
        if _loop is None:
            _loop = asyncio.new_event_loop()
        return _loop.run_until_complete(_timed(step(engine, args)))
    except Exception as exc:
        _forget(url)  # the connection's state is unknown: the next step opens a new one
        return dumps(("error", f"{type(exc).__name__}: {exc}"))


def _short_busy_timeout(dbapi_conn: Any, _record: Any) -> None:
    """A step waits for SQLite's write lock less than its own time limit: a thread blocked
    in SQLite cannot be cancelled, and the next children would queue behind it."""
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int((SERVER_TIMEOUT - 1) * 1000)}")
    cursor.close()


async def _timed(step: Awaitable[bytes]) -> bytes:
    async with asyncio.timeout(SERVER_TIMEOUT):
        return await step


def _forget(url: str) -> None:
    engine = _engines.pop(url, None)
    if engine is not None and _loop is not None:
        try:
            _loop.run_until_complete(asyncio.wait_for(engine.dispose(), SERVER_TIMEOUT))
        except Exception:  # a dead connection: dropping it is all that is left
            pass


async def _claim(engine: AsyncEngine, ref: TryRef) -> bytes:
    while len(_versions) >= KEPT_VERSIONS:  # the oldest read first
        del _versions[next(iter(_versions))]
    async with transaction(sessionmaker(engine)) as session:
        claimed = await claim_in(session, ref, _versions)
        return dumps(("ok", claimed))  # inside the transaction: unsendable means not claimed


async def _record(engine: AsyncEngine, args: tuple[Outcome, list[str]]) -> bytes:
    outcome, skip = args
    now = clock_now()
    async with transaction(sessionmaker(engine)) as session:
        changed = await task_instances.finish(session, [outcome], now)
        if skip and outcome.ti_id in changed:
            await task_instances.skip_waiting(session, outcome.ti_id, skip, now)
    return dumps(("ok", changed))


_STEPS: dict[str, Callable[[AsyncEngine, Any], Awaitable[bytes]]] = {
    "claim": _claim,
    "record": _record,
}
