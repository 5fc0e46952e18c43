"""Ending a claimed try: the worker's exit codes and the recording of its outcome.

Step 5 of a run (see `miniflow_worker.runner`), and every failure path that
leads to it. A `Recorder` writes the outcome with `task_instances.finish`,
expecting `running`: success with the result, or `retries.failure_outcome`
(up_for_retry with back-off while tries remain, else failed). The update is
fenced by try and state: if it matches nothing, a newer try owns the row and
the worker exits `EXIT_FENCED` without having changed anything. A database
error while recording is retried a few times (`RECORD_RETRY_DELAYS`); then
the worker exits `EXIT_NOT_RECORDED` and the scheduler's zombie detection
takes over.

An interruption is decided here too: fenced out, or cut off from the database
for the zombie threshold ("lost"), records nothing; a signal
records "terminated by <SIGNAL>" and exits 128+signal; a timeout records a
failure. This module never imports the scheduler, the launchers or
kubernetes_asyncio.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from miniflow_worker import execute
from miniflow_worker.clock import now
from miniflow_worker.heartbeat import Heartbeat
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from miniflow.retries import failure_outcome
from miniflow.store import states, task_instances
from miniflow.store.engine import transaction
from miniflow.store.task_instances import Outcome

from .claim import Claim  # relative, so mypy sees its type (see `runner`)
from .relay import Relay, RelayUnavailable

EXIT_SUCCESS = 0
"""The task succeeded, or there was nothing to run (stale try, already claimed)."""
EXIT_TASK_FAILED = 1
"""The task failed (failed or up_for_retry recorded), including timeouts."""
EXIT_UNAVAILABLE = 2
"""Bad arguments or config, or the database cannot be reached: nothing recorded."""
EXIT_FENCED = 3
"""A newer try owns the task instance: the task was stopped, nothing recorded."""
EXIT_NOT_RECORDED = 4
"""The task ended but its outcome could not be written (database gone)."""
EXIT_HEARTBEAT_LOST = 5
"""No heartbeat could be written for the zombie threshold: the task was stopped, nothing
recorded (the scheduler fails the try as a zombie)."""

RECORD_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
EXPECT_RUNNING = (states.RUNNING,)


def db_reason(exc: BaseException) -> str:
    """The first line of a database error, for a one-line message."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Recorder:
    """Writes the outcome of one claimed try; each method returns the worker's exit code."""

    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        claim: Claim,
        heartbeat: Heartbeat,
        *,
        key: str,
        log: Callable[[str], None],
        relay: Relay | None = None,
    ) -> None:
        self.factory = factory
        self.relay = relay  # the forkserver's relay records the outcome, if it can
        self.claim = claim
        self.heartbeat = heartbeat
        self.key = key
        self.log = log
        self.recorded: Outcome | None = None  # the outcome this worker wrote, once it has

    async def success(self, extra: dict[str, Any], *, skip: Sequence[str] = ()) -> int:
        """Record success; `skip`: waiting tasks of the run a branch or short-circuit
        skips, in the same transaction (see `miniflow_worker.branching`)."""
        claim = self.claim
        outcome = Outcome(
            claim.ti_id,
            claim.try_number,
            states.SUCCESS,
            EXPECT_RUNNING,
            exit_code=0,
            extra=extra,
        )
        return await self.record(outcome, EXIT_SUCCESS, skip=skip)

    async def skip(self, reason: str, *, exit_code: int = 0) -> int:
        """Record `skipped` (the task skipped itself); the reason is kept as its error."""
        claim = self.claim
        outcome = Outcome(
            claim.ti_id,
            claim.try_number,
            states.SKIPPED,
            EXPECT_RUNNING,
            exit_code=exit_code,
            error=reason,
        )
        return await self.record(outcome, EXIT_SUCCESS)

    async def fail(self, error: str, *, exit_code: int | None) -> int:
        print(error, file=sys.stderr, flush=True)
        claim = self.claim
        outcome = failure_outcome(
            ti_id=claim.ti_id,
            try_number=claim.try_number,
            max_tries=claim.max_tries,
            task=claim.task,
            now=now(),
            exit_code=exit_code,
            error=error,
            expected=EXPECT_RUNNING,
        )
        return await self.record(outcome, EXIT_TASK_FAILED)

    async def start_poking(self) -> datetime | None:
        """The sensor's first poke (now, unless an earlier try of the chain poked); None
        if the database could not be reached."""
        claim = self.claim
        first: list[datetime] = []

        async def write(session: AsyncSession) -> bool:
            at = await task_instances.start_poking(session, claim.ti_id, claim.try_number, now())
            first.append(at)
            return True

        if await self._write(write, what="first poke") is None:
            return None
        return first[-1]

    async def fail_final(self, error: str) -> int:
        """Record `failed` whatever retries remain (a sensor's timeout, as in Airflow)."""
        print(error, file=sys.stderr, flush=True)
        claim = self.claim
        outcome = Outcome(
            claim.ti_id, claim.try_number, states.FAILED, EXPECT_RUNNING, None, error, None
        )
        return await self.record(outcome, EXIT_TASK_FAILED)

    async def reschedule(self, poke_at: datetime) -> int:
        """End a sensor's try as `up_for_reschedule`, its next poke due at `poke_at`.

        One transaction: a scheduler sees the try ended and the time of the next poke
        together, or neither (then the try is still running: its exit decides)."""
        await self.heartbeat.stop()
        claim = self.claim

        async def write(session: AsyncSession) -> bool:
            return await task_instances.reschedule(
                session, claim.ti_id, claim.try_number, poke_at, now()
            )

        applied = await self._write(write, what=states.UP_FOR_RESCHEDULE)
        if applied is None:
            return EXIT_NOT_RECORDED
        if not applied:
            self.log(
                f"reschedule not recorded: try {claim.try_number} of {self.key} is no longer "
                "the current running try"
            )
            return EXIT_FENCED
        self.log(
            f"try {claim.try_number} of {self.key}: not yet; up_for_reschedule, next poke at "
            f"{poke_at.isoformat()}"
        )
        return EXIT_SUCCESS

    async def _write(
        self, fn: Callable[[AsyncSession], Awaitable[bool]], *, what: str
    ) -> bool | None:
        """`fn` in a transaction, retried on database errors; None if it never committed."""
        for delay in (*RECORD_RETRY_DELAYS, None):
            try:
                async with transaction(self.factory) as session:
                    return await fn(session)
            except (SQLAlchemyError, OSError) as exc:
                if delay is None:
                    self.log(f"could not record the outcome ({what}): {db_reason(exc)}")
                    return None
                self.log(f"recording the outcome failed ({db_reason(exc)}); retrying in {delay:g}s")
                await asyncio.sleep(delay)
        return None

    async def interrupted(
        self,
        why: tuple[str, Any],
        execution: execute.Execution | None,
    ) -> int:
        """Stop the execution; record what the interruption (fence, signal, timeout) means."""
        reason, detail = why
        if execution is not None:
            await execution.stop()
        if reason == "fenced":
            self.log(
                f"fenced out: try {self.claim.try_number} of {self.key} is no longer the "
                "current running try (a newer try exists or the scheduler ended it); task "
                "stopped, nothing recorded"
            )
            return EXIT_FENCED
        if reason == "lost":
            self.log(
                f"try {self.claim.try_number} of {self.key} could not heartbeat: task stopped, "
                "nothing recorded (the scheduler decides this try)"
            )
            return EXIT_HEARTBEAT_LOST
        if reason == "signal":
            name = signal.Signals(detail).name
            self.log(f"received {name}: task stopped")
            await self.fail(f"terminated by {name}", exit_code=128 + detail)
            return 128 + int(detail)
        timeout = self.claim.task["timeout"] if self.claim.task else None
        return await self.fail(f"timed out after {timeout:g}s (the task's timeout)", exit_code=None)

    async def _record_relayed(self, outcome: Outcome, skip: Sequence[str]) -> set[int] | None:
        """The ids `finish` changed, written by the forkserver's relay process; None: write
        it yourself."""
        if self.relay is None:
            return None
        try:
            return await self.relay.record(outcome, skip)
        except RelayUnavailable as exc:
            self.log(f"the forkserver could not record the outcome ({exc}); recording it directly")
            self.relay = None
            return None

    async def record(self, outcome: Outcome, code: int, *, skip: Sequence[str] = ()) -> int:
        """Write the outcome (fenced by try and state); `code` if it was applied.

        The skips are written only with an outcome that applied: a fenced-out try
        decides nothing for its downstream tasks.
        """
        await self.heartbeat.stop()
        relayed = self.relay is not None
        changed = await self._record_relayed(outcome, skip)
        for delay in (*RECORD_RETRY_DELAYS, None):
            if changed is not None:
                break
            try:
                async with transaction(self.factory) as session:
                    changed = await task_instances.finish(session, [outcome], now())
                    if skip and outcome.ti_id in changed:
                        await task_instances.skip_waiting(session, outcome.ti_id, skip, now())
                    elif relayed and outcome.ti_id not in changed:
                        changed = await _applied_by_relay(session, outcome)
                break
            except (SQLAlchemyError, OSError) as exc:
                if delay is None:
                    self.log(f"could not record the outcome ({outcome.state}): {db_reason(exc)}")
                    return EXIT_NOT_RECORDED
                self.log(f"recording the outcome failed ({db_reason(exc)}); retrying in {delay:g}s")
                await asyncio.sleep(delay)
        assert changed is not None
        if outcome.ti_id not in changed:
            self.log(
                f"outcome {outcome.state} not recorded: try {outcome.try_number} of {self.key} "
                "is no longer the current running try"
            )
            return EXIT_FENCED
        self.recorded = outcome
        retry_at = outcome.next_retry_at
        when = f" (next try after {retry_at.isoformat()})" if retry_at else ""
        self.log(f"try {outcome.try_number} of {self.key}: {outcome.state}{when}")
        return code


async def _applied_by_relay(session: AsyncSession, outcome: Outcome) -> set[int]:
    """{the try's id} if the row already holds this outcome: the relay wrote it and died
    before answering (a newer try or another writer would have changed try or state)."""
    row = (await task_instances.fetch(session, [outcome.ti_id])).get(outcome.ti_id)
    if row is not None and (row.try_number, row.state) == (outcome.try_number, outcome.state):
        return {outcome.ti_id}
    return set()
