"""A `Pod(..., push_result=True)` task's result: its termination message, as JSON.

The container writes small JSON to `/dev/termination-log`; the kubelet copies it
into the pod status (`state.terminated.message`) that the launcher already
watches, so reading it costs no request, no sidecar and no exec. The scheduler
turns it into the task's result here, with the same limits as a `@task` result.
Pure: no database, no launcher.
"""

from __future__ import annotations

import json
from typing import Any

from miniflow.launchers.base import MAX_TERMINATION_MESSAGE, RESULT_FILE


class ResultError(Exception):
    """The termination message is not a result miniflow can store; the text says why."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_result(message: str | None, max_bytes: int, path: str = RESULT_FILE) -> Any:
    """The stored form of the result in `message` (written to `path`); `ResultError` if
    there is none, it is not JSON, or it is too big (Kubernetes cuts messages at 4096
    bytes)."""
    if message is None or not message.strip():
        raise ResultError(f"push_result=True but the container wrote no result to {path}")
    size = len(message.encode())
    if size >= MAX_TERMINATION_MESSAGE:
        raise ResultError(
            f"the result in {path} is too big: Kubernetes keeps at most "
            f"{MAX_TERMINATION_MESSAGE:,} bytes of a termination message and this one "
            f"reached {size:,} (cut off); write a smaller result, or a reference to "
            "where the data is"
        )
    if size > max_bytes:
        raise ResultError(
            f"the result in {path} is {size:,} bytes, over the limit of "
            f"{max_bytes:,} bytes (MINIFLOW_MAX_RESULT_BYTES)"
        )
    try:
        value = json.loads(message, parse_constant=_no_constant)
    except ValueError as exc:
        shown = message if len(message) <= 200 else message[:200] + "…"
        raise ResultError(f"the result in {path} is not valid JSON ({exc}): {shown!r}") from None
    return value
