"""One short-lived `python -m MODULE` child that imports a DAG file for the scheduler (which
never imports DAG files itself): a request as JSON on stdin, an answer on stdout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ChildResult:
    returncode: int
    out: bytes
    err: bytes  # empty when stderr was merged into `out`


async def run_module(
    module: str, request: dict[str, Any], timeout: float, *, merge_stderr: bool = False
) -> ChildResult | None:
    """Run the child to its end; None if it outlived `timeout` (it is killed then). A
    cancelled caller kills it too: no child outlives the scheduler's wait for it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return None
    return ChildResult(proc.returncode or 0, out, err or b"")
