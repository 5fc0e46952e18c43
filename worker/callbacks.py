"""Task callbacks: `on_success_callback`, `on_failure_callback`, `on_retry_callback`.

The worker of a `@task` task calls them after its outcome is recorded (so a
callback sees the final state and can never change it), in this process, each
in a daemon thread bounded by `MINIFLOW_CALLBACK_TIMEOUT`. A callback that raises
or hangs is logged on the try's stderr (its log) and abandoned; the try's state
and the worker's exit code stay what they were. Outcomes the scheduler decides
(a lost heartbeat, a queued timeout, a killed try) run no callback: no process of
the task is left to run it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from miniflow_worker import execute

from miniflow.authoring import context as task_context
from miniflow.store import states

BY_STATE: Mapping[str, str] = {
    states.SUCCESS: "on_success_callback",
    states.FAILED: "on_failure_callback",
    states.UP_FOR_RETRY: "on_retry_callback",
}
"""The callback a recorded state runs (a skipped task runs none, as in Airflow)."""


def callback_context(
    context: Mapping[str, Any], state: str, error: str | None
) -> dict[str, Any]:
    """What a callback receives: the task's context plus `state` and `exception` (the
    error text of a failure or retry, else None)."""
    return {**context, "state": state, "exception": error}


async def run_callbacks(
    callables: Sequence[Callable[..., Any]],
    context: dict[str, Any],
    *,
    timeout: float,
    name: str,
    log: Callable[[str], None],
) -> int:
    """Call each callable with `context` (also bound for `get_current_context()`); returns
    how many failed or timed out. Never raises for the callbacks' sake."""
    failed = 0
    for index, callback in enumerate(callables):
        label = f"{name}[{index}]" if len(callables) > 1 else name

        def call(callback: Callable[..., Any] = callback, given: dict[str, Any] = context) -> None:
            given = {**given}  # each callback its own copy
            with task_context.bound(given):
                callback(given)

        try:
            await asyncio.wait_for(execute.in_daemon_thread(call, f"miniflow {label}"), timeout)
        except TimeoutError:
            failed += 1
            log(f"{label} did not finish within {timeout:g}s (MINIFLOW_CALLBACK_TIMEOUT); left")
        except BaseException as exc:  # user code: whatever it raises is only logged
            failed += 1
            log(f"{label} failed (the task's state is unchanged):\n{execute.format_exception(exc)}")
        else:
            log(f"{label} ran")
    return failed
