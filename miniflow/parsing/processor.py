"""Parse DAG files in isolated, forked processes, concurrently, with a timeout.

Why this module exists: the scheduler must never import user DAG code, and a
broken, hanging or crashing file must never stop it or other DAGs. Each file
is imported in a fresh process (no `sys.modules` leakage between files) forked
from a forkserver that preloaded `miniflow.parsing.child`, so a file costs a
fork (a few ms) instead of a cold interpreter start (~150 ms).

The parent waits on the result pipe and the process sentinel with the event
loop's `add_reader` (no thread, no blocking), reads output as it arrives (large
results cannot deadlock the pipe), kills the child's whole process group with
SIGKILL on timeout or cancellation, and always reaps it: no process is ever
left behind.

This module must never import user code in the calling process, and never
touch the database: it returns `FileResult`s and the caller stores them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

from miniflow.authoring.serialized import SerializedDag
from miniflow.parsing import child

log = logging.getLogger(__name__)

_context: ForkServerContext | None = None
_READ_CHUNK = 1 << 16

SLOW_AFTER = 2.0
"""Seconds into one file's import after which the wait is logged, naming the file: a
file that loops at import holds up every parsing command for the whole timeout."""


@dataclass(frozen=True)
class FileResult:
    """What parsing one DAG file produced."""

    fileloc: str
    """Path relative to the DAGs folder, forward slashes."""
    mtime_ns: int
    size: int
    sha256: str
    """Hex digest of the bytes that were parsed (read just before parsing)."""
    dags: list[SerializedDag]
    error: str | None
    """Import error (traceback text), timeout or crash; None if the file parsed."""
    duration: float
    """Wall seconds spent parsing, including the fork."""


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a version of a file: cheap stat fields plus a content hash."""

    mtime_ns: int
    size: int
    sha256: str


def fingerprint(path: Path) -> Fingerprint:
    """Stat and hash `path` (raises OSError if it cannot be read)."""
    st = path.stat()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Fingerprint(st.st_mtime_ns, st.st_size, digest)


def _get_context() -> ForkServerContext:
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        # Preload miniflow (loader, dag, tasks) once in the forkserver: every
        # per-file process forked from it starts warm (only effective before it
        # starts). Nothing else in miniflow uses multiprocessing's forkserver (the
        # local launcher runs its own, `local_fork`), so the list is ours to set.
        ctx.set_forkserver_preload([child.__name__])
        _context = ctx
    return _context


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Hide `__main__` from multiprocessing while a child is being started.

    Otherwise every child re-imports the main module (the `miniflow` console
    script, pytest, `python -m miniflow.cli.main` with the whole scheduler stack)
    before running, which costs far more than the parse and runs code that
    has no business in a parser process. A bare module has neither `__file__`
    nor `__spec__`, so the child skips that step.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"DAG file processor was killed by {name} (exit code {code})"
    return f"DAG file processor exited with code {code} without a result"


def _kill_group(pid: int | None) -> None:
    """SIGKILL the child's process group (it called setpgrp), or at least the child."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _await_exit(exited: asyncio.Event, path: Path, timeout: float, slow_after: float) -> None:
    """Wait for the child to exit (TimeoutError after `timeout`); past `slow_after`,
    log once which file is being waited for."""
    waiter = asyncio.ensure_future(exited.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=min(slow_after, timeout))
        if done:
            return
        log.warning(
            "still importing DAG file %s after %gs (it is given %gs before it is killed)",
            path,
            slow_after,
            timeout,
        )
        await asyncio.wait_for(waiter, max(0.0, timeout - slow_after))
    finally:
        waiter.cancel()


async def _run_child(
    dags_folder: Path, path: Path, timeout: float, slow_after: float = SLOW_AFTER
) -> dict[str, Any]:
    """Run the child for one file; return its JSON result or an {"error": ...}."""
    ctx = _get_context()
    loop = asyncio.get_running_loop()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child.main, args=(send, str(dags_folder), str(path)), daemon=True)
    chunks: list[bytes] = []
    exited = asyncio.Event()
    fd = recv.fileno()
    readers: list[int] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:
                if fd in readers:
                    loop.remove_reader(fd)
                    readers.remove(fd)
                return
            chunks.append(chunk)

    try:
        with _main_hidden():
            proc.start()
        send.close()
        os.set_blocking(fd, False)
        sentinel = proc.sentinel
        loop.add_reader(fd, drain)
        readers.append(fd)
        loop.add_reader(sentinel, exited.set)
        readers.append(sentinel)
        try:
            await _await_exit(exited, path, timeout, slow_after)
        except TimeoutError:
            log.warning("parsing %s timed out after %ss: killing it", path, timeout)
            return {"error": f"DAG file processing timed out after {timeout:g}s"}
        drain()  # everything the child wrote is in the pipe by the time it exits
        _kill_group(proc.pid)  # anything the DAG file started and left running
        proc.join()
        if proc.exitcode == 0 and chunks:
            try:
                result: dict[str, Any] = json.loads(b"".join(chunks))
                return result
            except ValueError:
                return {"error": "DAG file processor returned a corrupt result"}
        return {"error": _describe_exit(proc.exitcode)}
    finally:
        for reader in readers:
            loop.remove_reader(reader)
        if proc.pid is not None and proc.exitcode is None:
            _kill_group(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.join(5)  # SIGKILLed: returns in milliseconds
        send.close()
        recv.close()
        with contextlib.suppress(ValueError):
            proc.close()


async def parse_file(
    dags_folder: Path, path: Path, *, timeout: float = 30.0, slow_after: float = SLOW_AFTER
) -> FileResult:
    """Parse one DAG file in an isolated process; never raises for user errors.

    An import still running after `slow_after` seconds is logged (a warning naming
    the file), so a command waiting on it says what it waits for."""
    started = time.monotonic()
    fileloc = child.fileloc_of(dags_folder, path)
    try:
        fp = await asyncio.to_thread(fingerprint, path)  # reads and hashes: off the loop
    except OSError as exc:
        return FileResult(fileloc, 0, 0, "", [], f"cannot read DAG file: {exc}", 0.0)
    result = await _run_child(dags_folder, path, timeout, slow_after)
    error = result.get("error")
    dags: list[SerializedDag] = [] if error is not None else result.get("dags", [])
    return FileResult(
        fileloc=fileloc,
        mtime_ns=fp.mtime_ns,
        size=fp.size,
        sha256=fp.sha256,
        dags=dags,
        error=error,
        duration=time.monotonic() - started,
    )


async def parse_files(
    dags_folder: Path,
    files: list[Path],
    *,
    timeout: float = 30.0,
    concurrency: int | None = None,
) -> list[FileResult]:
    """Parse `files` (paths under `dags_folder`), `concurrency` at a time.

    Returns one `FileResult` per file, in the order given. Cancelling the
    coroutine kills and reaps every child it started.
    """
    limit = asyncio.Semaphore(max(1, concurrency or os.cpu_count() or 1))

    async def one(path: Path) -> FileResult:
        async with limit:
            return await parse_file(dags_folder, path, timeout=timeout)

    tasks = [asyncio.ensure_future(one(path)) for path in files]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
