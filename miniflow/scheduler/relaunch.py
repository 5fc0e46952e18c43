"""Tries that never reached a container: launch the same try again, up to a cap.

A try can be claimed and then fail to start for reasons that say nothing about
the task: the scheduler died between the claim and the launch, the API server
refused the create for a transient reason, the pod or process was lost before
it ever ran. Such a try is launched again under the same try number
(`queued → scheduled`, `launch_attempts + 1`) without spending one of the
task's retries — `max_tries` keeps meaning the configured retries. After
`max_launch_attempts` launches the try fails like any other (and retries per
the task's policy), so an unlaunchable task cannot loop forever.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.serialized import SerializedTask
from miniflow.retries import failure_outcome
from miniflow.store import attempts as store_attempts
from miniflow.store import states
from miniflow.store import task_instances as store_tis

log = logging.getLogger("miniflow.scheduler.relaunch")


MAX_BACKOFF = 30.0


def backoff(launches: int) -> float:
    """Seconds before launching again after `launches` launches that did not start:
    at once after the first (a scheduler that died mid-claim), then 1, 2, 4 … s, so a
    short outage of the database or the API server does not burn the cap at once."""
    return 0.0 if launches <= 1 else min(2.0 ** (launches - 2), MAX_BACKOFF)


@dataclass(frozen=True, slots=True)
class NotStarted:
    """A try that ended before it reached a container, and why."""

    ti_id: int
    try_number: int
    max_tries: int
    task: SerializedTask | None
    label: str  # dag/run/task#try, for the log
    why: str


@dataclass(frozen=True, slots=True)
class Decided:
    relaunched: set[int]
    """Task instances scheduled again under the same try (their attempt stays open)."""
    failed: list[store_tis.Outcome]
    """Outcomes for tries that reached the cap; the caller applies them."""


async def relaunch_or_fail(
    session: AsyncSession, items: Sequence[NotStarted], *, cap: int, now: datetime
) -> Decided:
    if not items:
        return Decided(set(), [])
    counts = await store_tis.launch_counts(session, [i.ti_id for i in items])
    again: list[NotStarted] = []
    failed: list[store_tis.Outcome] = []
    for item in items:
        launches = counts.get(item.ti_id, (item.try_number, 0))[1] + 1
        if launches < cap:
            again.append(item)
            continue
        log.warning("%s did not start after %d launches: %s", item.label, launches, item.why)
        failed.append(
            failure_outcome(
                ti_id=item.ti_id,
                try_number=item.try_number,
                max_tries=item.max_tries,
                task=item.task,
                now=now,
                exit_code=None,
                error=f"{item.why} (launched {launches} times, never started)",
                expected=(states.QUEUED,),
            )
        )
    relaunched: set[int] = set()
    by_delay: dict[float, list[tuple[int, int]]] = {}
    for item in again:
        launches = counts.get(item.ti_id, (item.try_number, 0))[1] + 1
        by_delay.setdefault(backoff(launches), []).append((item.ti_id, item.try_number))
    for delay, keys in by_delay.items():
        not_before = now + timedelta(seconds=delay) if delay else None
        relaunched |= await store_tis.relaunch(session, keys, not_before)
    notes = []
    for item in again:
        if item.ti_id in relaunched:
            launches = counts.get(item.ti_id, (item.try_number, 0))[1] + 1
            log.info("%s did not start (%s): launching it again", item.label, item.why)
            notes.append(
                (item.ti_id, item.try_number, None, f"launch {launches} did not start: {item.why}")
            )
    await store_attempts.note(session, notes)
    return Decided(relaunched, failed)
