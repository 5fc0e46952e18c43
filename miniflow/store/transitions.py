"""The task-instance state machine: every allowed (from, to) pair, in one table.

Every function in `task_instances` that writes `state` names the states it
expects and the state it writes, and asks `check` first; a pair missing from
`ALLOWED` is a bug in the caller and raises `IllegalTransition` before any SQL
runs. The table is the answer to "can a task go from X to Y?", for readers and
for tests alike.

Two rules the table encodes on purpose:

- **`success` is final** (until a user clears it back to `none`): once
  downstream tasks may have seen it, nothing revokes it. A worker that
  recorded success and then exited non-zero keeps its success; the exit is
  noted on the attempt.
- **`queued → scheduled` is a relaunch of the same try** (the try never
  reached a container: claimed but never launched, a create refused for a
  transient reason, lost before it started). It keeps the try number and
  counts in `launch_attempts`, capped apart from the task's retries. So is
  `running → scheduled` for a worker try whose worker never claimed it (its
  process started, the user's code never did); the store's `relaunch`
  requires `heartbeat_at IS NULL` for it.
"""

from __future__ import annotations

from collections.abc import Iterable

from miniflow.errors import MiniflowError
from miniflow.store.states import (
    FAILED,
    MAPPED,
    NONE,
    QUEUED,
    RUNNING,
    SCHEDULED,
    SKIPPED,
    SUCCESS,
    UP_FOR_RESCHEDULE,
    UP_FOR_RETRY,
    UPSTREAM_FAILED,
)


class IllegalTransition(MiniflowError):
    """A write asked for a task-instance transition the state machine does not allow."""


ALLOWED: dict[str, frozenset[str]] = {
    # readiness decides; `none → none` is a clear of a task that never ran;
    # `none → success`: an `Empty` task, which the scheduler completes without a try
    # `none → mapped`: a mapped task that may run (readiness), expanded in the same round
    NONE: frozenset({SCHEDULED, SKIPPED, UPSTREAM_FAILED, NONE, SUCCESS, MAPPED}),
    # claimed by a scheduler; or cleared before it was claimed
    # `scheduled → success`: an `Empty` task with `depends_on_past`, completed by the
    # claim once the previous run allows it (still without a try)
    SCHEDULED: frozenset({QUEUED, NONE, SUCCESS}),
    # started; ended before it was seen running; relaunched (same try); or decided
    # by the sanity loop (queued too long, lost)
    # `queued → skipped`: a command exited with one of its `skip_on_exit_code`s
    QUEUED: frozenset({RUNNING, SUCCESS, FAILED, UP_FOR_RETRY, SCHEDULED, SKIPPED}),
    # `running → running`: a repeated started event, a worker's claim, a heartbeat;
    # `running → scheduled`: a relaunch of a worker try whose worker never claimed it
    # (the process ran, the user's code never did: e.g. the database was unreachable)
    # `running → skipped`: the task skipped itself (`SkipTask`)
    # `running → up_for_reschedule`: a sensor's poke found nothing; it gives its slot back
    RUNNING: frozenset(
        {RUNNING, SUCCESS, FAILED, UP_FOR_RETRY, SCHEDULED, SKIPPED, UP_FOR_RESCHEDULE}
    ),
    # the back-off passed; or a user cleared it
    UP_FOR_RETRY: frozenset({SCHEDULED, NONE}),
    # the next poke is due (a new try, not a retry); or a user cleared it
    UP_FOR_RESCHEDULE: frozenset({SCHEDULED, NONE}),
    # a mapped task: its instances' combined outcome (an empty expansion is skipped, one
    # that cannot be made fails); or a user cleared it
    MAPPED: frozenset({SUCCESS, FAILED, SKIPPED, NONE}),
    SUCCESS: frozenset({NONE}),
    FAILED: frozenset({NONE}),
    UPSTREAM_FAILED: frozenset({NONE}),
    SKIPPED: frozenset({NONE}),
}


def allowed(source: str, target: str) -> bool:
    return target in ALLOWED.get(source, frozenset())


def check(sources: Iterable[str], target: str) -> None:
    """Raise `IllegalTransition` unless every `source → target` is allowed."""
    bad = sorted(s for s in sources if not allowed(s, target))
    if bad:
        raise IllegalTransition(
            f"task-instance transition {', '.join(bad)} → {target} is not allowed"
        )
