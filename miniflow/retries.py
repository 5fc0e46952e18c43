"""When a failed try is retried: pure functions shared by the scheduler and the worker.

Both the scheduler (for tries it supervises: Bash/Pod processes, lost pods)
and the worker (for the tries it runs) decide a failure's fate here, so the
rule exists once.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from miniflow.authoring.serialized import SerializedTask
from miniflow.store import states
from miniflow.store.task_instances import Outcome

FALLBACK_RETRY_DELAY = 300.0
"""Back-off when the task's own settings cannot be read (the authoring default)."""


def retry_delay(
    task: SerializedTask, try_number: int, *, rng: random.Random | None = None
) -> float:
    """Seconds to wait before the try after `try_number` (1-based).

    Exponential back-off doubles the delay per try and adds jitter (between
    half and all of the delay) so that many tasks failing together do not
    retry in lockstep; `max_retry_delay` caps it either way.
    """
    delay = float(task["retry_delay"])
    if task["retry_exponential_backoff"]:
        full = delay * (2 ** max(0, try_number - 1))
        delay = full / 2 + (rng or random).uniform(0, full / 2)
    cap = task["max_retry_delay"]
    if cap is not None:
        delay = min(delay, float(cap))
    return max(0.0, delay)


def failure_outcome(
    *,
    ti_id: int,
    try_number: int,
    max_tries: int,
    task: SerializedTask | None,
    now: datetime,
    exit_code: int | None,
    error: str | None,
    expected: tuple[str, ...] = (states.QUEUED, states.RUNNING),
) -> Outcome:
    """up_for_retry while tries remain (try_number <= max_tries), failed otherwise.

    The row's `max_tries` alone decides; the task (when known) only sets the
    back-off, so a caller that could not load the task never skips a retry.
    """
    if try_number <= max_tries:
        delay = retry_delay(task, try_number) if task is not None else FALLBACK_RETRY_DELAY
        at = now + timedelta(seconds=delay)
        return Outcome(ti_id, try_number, states.UP_FOR_RETRY, expected, exit_code, error, at)
    return Outcome(ti_id, try_number, states.FAILED, expected, exit_code, error, None)
