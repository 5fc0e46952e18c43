"""Running one task: a Bash command or a Python callable, stoppable from outside.

Both kinds share one shape: `await execution.run()` returns an `Ended` (it
never raises for a task failure) and `await execution.stop()` ends it early.
The runner races `run()` against the heartbeat's fence, signals and the
task's timeout, and decides what gets recorded.

- **Bash**: `bash -c` in its own session/process group (like a pod: stopping
  it reaches everything it started). stdout and stderr are merged (their
  relative order is kept) and streamed line by line to the worker's stdout,
  each line prefixed with an ISO timestamp. Reading is chunked, not
  `readline()`, so a huge line without a newline cannot raise. After the
  command exits, stragglers left in its group are SIGKILLed (pod semantics)
  so they cannot hold the pipe open.
- **Python**: a coroutine function is awaited on the loop; any other function
  runs in a *daemon* thread so heartbeats keep going. A thread cannot be
  killed: `stop()` abandons it and the caller exits the process (see
  `miniflow_worker.main`). Not the default executor: `asyncio.run()` would
  wait for its threads at shutdown.
- **Results** must be JSON (no NaN) and at most `max_result_bytes` encoded;
  they are stored normalised (tuples become lists), as a reader will see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from miniflow_worker.clock import stamp

from miniflow.authoring import context as task_context
from miniflow.authoring.sensor import poke_outcome
from miniflow.authoring.serialized import ArgRef, SerializedTask, arg_refs
from miniflow.errors import FailTask, SkipTask

T = TypeVar("T")

READ_CHUNK = 1 << 16
MAX_LINE = 1 << 16  # a longer line without a newline is emitted in pieces
DRAIN_TIMEOUT = 2.0  # seconds to finish reading output after the command ended

_abandoned: list[threading.Thread] = []


def abandoned_threads() -> list[threading.Thread]:
    """Daemon threads still running user code the worker gave up on."""
    return [t for t in _abandoned if t.is_alive()]


class TaskFailure(Exception):
    """A failure of the task itself, with the text recorded as its error."""


@dataclass(frozen=True, slots=True)
class Ended:
    ok: bool
    exit_code: int | None
    error: str | None = None
    value: Any = None
    skipped: bool = False  # the task skipped itself (`SkipTask`); `error` holds why
    not_yet: bool = False  # a sensor's poke found nothing yet (a falsy return)
    final: bool = False  # a failure retries cannot fix (`FailTask`): no retry


def _failed_final(exc: FailTask) -> Ended:
    return Ended(False, 1, format_exception(exc, skip_frames=1), final=True)


def _skipped(exc: SkipTask) -> Ended:
    return Ended(True, 0, f"skipped: {exc}" if str(exc) else "skipped by the task", skipped=True)


def format_exception(exc: BaseException, *, skip_frames: int = 0) -> str:
    """Traceback text of `exc`, without the first `skip_frames` (worker) frames."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


async def in_daemon_thread(fn: Callable[[], T], name: str) -> T:
    """Run `fn()` in a new daemon thread and await its result.

    If the awaiting task is cancelled, the thread keeps running and is listed
    by `abandoned_threads()`.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def deliver(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def target() -> None:
        try:
            result = ctx.run(fn)
        except BaseException as exc:  # SystemExit in user code is a task failure too
            outcome: tuple[Callable[[Any], None], Any] = (future.set_exception, exc)
        else:
            outcome = (future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(deliver, *outcome)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        return await future
    except asyncio.CancelledError:
        if thread.is_alive():
            _abandoned.append(thread)
        raise


# --- Bash --------------------------------------------------------------------------------------


class BashExecution:
    def __init__(self, command: str, env: Mapping[str, str], *, grace: float) -> None:
        self.command = command
        self.env = dict(env)
        self.grace = grace
        self.proc: asyncio.subprocess.Process | None = None
        self._started = asyncio.Event()
        self.last_line: str | None = None  # the last non-empty line printed (push_result)

    async def run(self) -> Ended:
        self.proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        self._started.set()
        reader = asyncio.create_task(self._stream())
        code = await self.proc.wait()
        self._signal_group(signal.SIGKILL)  # leftovers of the group, as when a pod ends
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await asyncio.shield(reader)
        except TimeoutError:
            reader.cancel()
        if code == 0:
            return Ended(True, 0)
        if code < 0:
            name = signal.Signals(-code).name
            return Ended(False, 128 - code, f"command was killed by {name}")
        return Ended(False, code, f"command exited with code {code}")

    async def _stream(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        pending = b""
        out = sys.stdout
        while True:
            chunk = await self.proc.stdout.read(READ_CHUNK)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) >= MAX_LINE:
                lines.append(pending)
                pending = b""
            if any(ln.strip() for ln in lines):
                self.last_line = next(ln for ln in reversed(lines) if ln.strip()).decode(
                    errors="replace"
                )
            if lines:
                prefix = stamp()
                out.write("".join(f"{prefix} {ln.decode(errors='replace')}\n" for ln in lines))
                out.flush()
        if pending:
            if pending.strip():
                self.last_line = pending.decode(errors="replace")
            out.write(f"{stamp()} {pending.decode(errors='replace')}\n")
            out.flush()

    def _signal_group(self, sig: int) -> bool:
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, sig)  # the session leader's pid is the group id
        except (ProcessLookupError, PermissionError):
            return False
        return True

    async def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period; wait for the exit."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                async with asyncio.timeout(self.grace):
                    await self.proc.wait()
            except TimeoutError:
                pass
        self._signal_group(signal.SIGKILL)
        await self.proc.wait()


# --- Python ------------------------------------------------------------------------------------


def resolve_arguments(
    task: SerializedTask, upstream: Mapping[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """op_args / op_kwargs with `{"ref": id}` replaced by that upstream's stored result,
    inside lists and dicts too."""

    def one(arg: ArgRef, what: str) -> Any:
        if "ref" in arg:
            ref = arg["ref"]
            if ref not in upstream:
                raise TaskFailure(
                    f"{what} is the result of task {ref!r}, which does not exist in this run"
                )
            return upstream[ref]
        if "items" in arg:
            return [one(a, f"{what}[{i}]") for i, a in enumerate(arg["items"])]
        if "fields" in arg:
            return {k: one(a, f"{what}[{k!r}]") for k, a in arg["fields"].items()}
        return arg.get("value")

    args = [one(a, f"argument {i}") for i, a in enumerate(task.get("op_args", []))]
    kwargs = {k: one(a, f"argument {k!r}") for k, a in task.get("op_kwargs", {}).items()}
    return args, kwargs


def upstream_refs(task: SerializedTask) -> list[str]:
    return arg_refs([*task.get("op_args", []), *task.get("op_kwargs", {}).values()])


def check_result(task_id: str, value: Any, max_bytes: int) -> Any:
    """The result as JSON will store it; `TaskFailure` if not JSON or too large."""
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TaskFailure(
            f"task {task_id!r} returned a value of type {type(value).__name__} that is not "
            f"JSON-serializable: {exc}"
        ) from None
    size = len(encoded.encode())
    if size > max_bytes:
        raise TaskFailure(
            f"task {task_id!r} returned {size:,} bytes of JSON ({type(value).__name__}), over "
            f"the limit of {max_bytes:,} bytes (MINIFLOW_MAX_RESULT_BYTES)"
        )
    return json.loads(encoded)


class PythonExecution:
    def __init__(
        self,
        task_id: str,
        function: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        max_result_bytes: int,
        context: dict[str, Any] | None = None,
        poke: bool = False,
        xcom: task_context.XComAccess | None = None,
    ) -> None:
        self.task_id = task_id
        # A sensor's poke: the return says done or not yet (`SensorResult`, truthiness)
        # before it is a result; `run()` may be called once per poke.
        self.poke = poke
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.max_result_bytes = max_result_bytes
        self.context = context
        self.xcom = xcom
        self._task: asyncio.Future[Ended] | None = None

    async def run(self) -> Ended:
        if self.context is None:
            return await self._run()
        # The thread or task that runs the function copies this context (see
        # `in_daemon_thread`), so `get_current_context()` works in both.
        with task_context.bound(self.context, self.xcom):
            return await self._run()

    async def _run(self) -> Ended:
        fn, args, kwargs = self.function, self.args, self.kwargs
        # Failures are formatted where they are caught, so the traceback starts at the
        # user's function (skip_frames=1 drops the wrapper's own frame).
        if inspect.iscoroutinefunction(fn):

            async def call_async() -> Ended:
                try:
                    return Ended(True, 0, value=await fn(*args, **kwargs))
                except SkipTask as exc:
                    return _skipped(exc)
                except FailTask as exc:
                    return _failed_final(exc)
                except Exception as exc:
                    return Ended(False, 1, format_exception(exc, skip_frames=1))

            self._task = asyncio.ensure_future(call_async())
        else:

            def call() -> Ended:
                try:
                    return Ended(True, 0, value=fn(*args, **kwargs))
                except SkipTask as exc:
                    return _skipped(exc)
                except FailTask as exc:
                    return _failed_final(exc)
                except BaseException as exc:  # SystemExit in a task is a task failure
                    return Ended(False, 1, format_exception(exc, skip_frames=1))

            self._task = asyncio.ensure_future(
                in_daemon_thread(call, f"miniflow task {self.task_id}")
            )
        ended: Ended = await self._task
        if not ended.ok or ended.skipped:
            return ended
        value = ended.value
        if self.poke:
            done, value = poke_outcome(value)
            if not done:
                return Ended(True, 0, not_yet=True)
        try:
            value = check_result(self.task_id, value, self.max_result_bytes)
        except TaskFailure as exc:
            return Ended(False, 1, str(exc))
        return Ended(True, 0, value=value)

    async def stop(self) -> None:
        """Cancel a coroutine; abandon a thread (it cannot be killed)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


Execution = BashExecution | PythonExecution
