"""Record launcher events: started → running; exited → outcome, attempt closed.

Who decides a try's outcome depends on who ran it. A worker (the `@task`
kinds, and Bash tasks in pods) records its own result; its exit code is then
only cross-checked: a worker that never recorded anything, or that said
success but exited non-zero, fails the try with the reason. Processes the
scheduler supervises directly (Pod tasks; Bash tasks under the local
launcher) end by their exit code alone. A worker's recorded success is final:
downstream tasks may already have seen it, so an exit code that disagrees is
noted on the attempt, never used to revoke it. A try lost before it ever
started is launched again under the same try (`scheduler.relaunch`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.serialized import SerializedDag, SerializedTask
from miniflow.authoring.xcom import pushed_line
from miniflow.launchers.base import (
    RESULT_FILE,
    AttemptExited,
    AttemptKey,
    AttemptStarted,
    LauncherEvent,
)
from miniflow.retries import failure_outcome
from miniflow.scheduler import metrics, pod_results, relaunch
from miniflow.scheduler.dag_callbacks import TASK_BY_STATE
from miniflow.scheduler.dagcache import CachedDag
from miniflow.scheduler.flights import RoundDeps
from miniflow.scheduler.round_records import InFlight
from miniflow.store import attempts as store_attempts
from miniflow.store import runs as store_runs
from miniflow.store import states
from miniflow.store import task_instances as store_tis
from miniflow.store.records import RunInfo, TaskInstanceRecord

log = logging.getLogger("miniflow.scheduler.events")


@dataclass(slots=True)
class Recorded:
    touched: set[int] = field(default_factory=set)
    """Run pks whose tasks changed."""
    foreign: set[AttemptKey] = field(default_factory=set)
    """Tries another instance owns now (it adopted them): their events were dropped, and
    their evidence is the new owner's to read."""
    finished: Counter[str] = field(default_factory=Counter)
    """Task instances whose try ended in a final state, by state."""
    exits: Counter[str] = field(default_factory=Counter)
    """Exits recorded, by reason."""
    callbacks: list[TaskEnd] = field(default_factory=list)
    """Ended tries of Bash / Pod tasks with a callback for their state: the scheduler
    starts them once this round's transaction has committed, never before."""
    states: dict[int, store_tis.TIState] = field(default_factory=dict)
    """By task instance id: the row of an ended try as this transaction left it (the
    outcome written, or the worker's as read), so readiness need not read it again."""


@dataclass(frozen=True, slots=True)
class TaskEnd:
    """A Bash or Pod try's recorded end, as its task callback needs it."""

    dag: SerializedDag
    run: RunInfo
    key: AttemptKey
    state: str
    error: str | None


async def record(
    deps: RoundDeps, session: AsyncSession, batch: Sequence[LauncherEvent], now: datetime
) -> Recorded:
    """Apply a batch of events (only those of tries this instance still owns)."""
    await _resolve_unknown(deps, session, batch)
    foreign = await _fence(deps, session, batch)
    batch = [e for e in batch if e.key not in foreign]
    started = [e for e in batch if isinstance(e, AttemptStarted) and e.key in deps.flights.tries]
    exited = [e for e in batch if isinstance(e, AttemptExited) and e.key in deps.flights.tries]
    if started:
        items = [
            (deps.flights.tries[e.key].ti_id, e.key.try_number, e.handle, e.at) for e in started
        ]
        await store_attempts.record_started(session, items)
    if not exited:
        return Recorded(foreign=foreign)
    recorded = Recorded(foreign=foreign)
    recorded.touched = await _record_exits(deps, session, exited, now, recorded)
    return recorded


async def _fence(
    deps: RoundDeps, session: AsyncSession, batch: Sequence[LauncherEvent]
) -> set[AttemptKey]:
    """Keys of the batch whose try a peer adopted (this instance was taken for dead, say
    while it was paused): forgotten here, so nothing of theirs is recorded twice."""
    keys = {e.key for e in batch if e.key in deps.flights.tries}
    if not keys:
        return set()
    by_row = {(deps.flights.tries[k].ti_id, k.try_number): k for k in keys}
    elsewhere = await store_attempts.owned_elsewhere(session, list(by_row), deps.scheduler_id)
    foreign = {by_row[r] for r in elsewhere}
    for key in foreign:
        log.warning("%s: adopted by another scheduler; leaving it to that one", key)
        deps.flights.forget(key)
    return foreign


async def _resolve_unknown(
    deps: RoundDeps, session: AsyncSession, batch: Sequence[LauncherEvent]
) -> None:
    """Events for tries this scheduler is not tracking (adopted pods, another scheduler's,
    or a late event of a try that already ended).

    A try still current and in flight is tracked from now on. A started event of a try
    that is no longer in flight is history: tracking it would wait forever for an exit
    that was already recorded. The exit of a superseded try (a newer try exists, e.g.
    after a restart) only closes that try's attempt row, judged by its exit code.
    """
    unknown = {e.key for e in batch if e.key not in deps.flights.tries}
    if not unknown:
        return
    rows = await store_tis.find_keys(session, [k.ti_key for k in unknown])
    exits = {e.key: e for e in batch if isinstance(e, AttemptExited) and e.key in unknown}
    stale: list[store_attempts.AttemptEnd] = []
    for key in unknown:
        row = rows.get(key.ti_key)
        if row is None:
            continue
        current = row.try_number == key.try_number
        if current and (row.state in states.ACTIVE or key in exits):
            deps.flights.tries[key] = InFlight(row.id, row.run_pk, row.kind, row.max_tries)
        elif not current and key in exits:
            event = exits[key]
            state = states.SUCCESS if event.exit_code == 0 else states.FAILED
            stale.append(_attempt_end(event, row.id, state))
    await store_attempts.close(session, stale)


def _worker_reports(deps: RoundDeps, kind: str) -> bool:
    worker_kinds: frozenset[str] = getattr(deps.launcher, "worker_kinds", frozenset({"python"}))
    return kind in worker_kinds


async def _record_exits(
    deps: RoundDeps,
    session: AsyncSession,
    exited: Sequence[AttemptExited],
    now: datetime,
    recorded: Recorded,
) -> set[int]:
    flights: list[tuple[AttemptExited, InFlight]] = [
        (e, deps.flights.tries.pop(e.key)) for e in exited
    ]
    current = await store_tis.fetch(session, [f.ti_id for _, f in flights])
    versions = await deps.dags.for_run_pks(session, {f.run_pk for _, f in flights})
    outcomes: dict[int, store_tis.Outcome] = {}
    not_started: list[relaunch.NotStarted] = []
    notes: list[tuple[int, int, str | None, str]] = []
    for event, flight in flights:
        row = current.get(flight.ti_id)
        if row is None or row.try_number != event.key.try_number:
            continue  # a newer try exists (or the run was deleted): this event is history
        flight.max_tries = row.max_tries  # a clear changes it
        task = _task(versions.get(flight.run_pk), event.key)
        never_claimed = (
            _worker_reports(deps, flight.kind)
            and row.state in states.ACTIVE
            and row.heartbeat_at is None
        )
        lost_early = event.reason == "Lost" and row.state == states.QUEUED
        if (lost_early and row.started_at is None) or never_claimed:
            # The user's code never ran: the scheduler died between claiming and
            # launching, or the worker exited before it could claim the try (say, the
            # database was unreachable). Launch the same try again, without a retry.
            if never_claimed and not lost_early:
                why = f"the worker exited before claiming the try: {_describe(event)}"
            else:
                why = f"lost before it started: {event.message or 'no process or pod found'}"
            not_started.append(
                relaunch.NotStarted(
                    flight.ti_id, event.key.try_number, row.max_tries, task, str(event.key), why
                )
            )
            continue
        if _worker_reports(deps, flight.kind):
            outcome = _cross_check(event, flight, row.state, task, now)
            if row.state == states.SUCCESS and event.exit_code not in (0, None):
                notes.append(
                    (
                        flight.ti_id,
                        event.key.try_number,
                        None,
                        f"the process exited {event.exit_code} after the worker recorded success",
                    )
                )
        else:
            outcome = _by_exit_code(event, flight, task, now)
            # A Bash task's pushed result is its last line (`_by_exit_code`); a Pod's is
            # its termination message.
            if task is not None and task.get("push_result") and task["kind"] == "pod":
                outcome = _with_result(
                    outcome, event, flight, task, now, deps.settings.max_result_bytes
                )
        if outcome is not None:
            outcomes[flight.ti_id] = outcome
    decided = await relaunch.relaunch_or_fail(
        session, not_started, cap=deps.settings.max_launch_attempts, now=now
    )
    outcomes.update({o.ti_id: o for o in decided.failed})
    await store_attempts.note(session, notes)
    closing = _closed_with_outcome(flights, outcomes, current, decided.relaunched)
    if closing is not None:
        changed = await store_attempts.finish_and_close(session, *closing, now)
        closed = changed  # its attempt too, if the outcome applied
    else:
        changed = await store_tis.finish(session, list(outcomes.values()), now)
        closed = set()
    ends = []
    ended: list[tuple[AttemptKey, int, str, str | None]] = []
    for event, flight in flights:
        noted = deps.flights.kill_reasons.pop(event.key, None)
        recorded.exits[metrics.exit_reason(noted or event.reason, event.exit_code)] += 1
        row = current.get(flight.ti_id)
        # Scheduled under this try number: launched again (it never started), or its next
        # round is due and not yet claimed (a retry after a failure the sanity loop or the
        # worker decided, a sensor's next poke) — only a relaunch counts launches.
        pending = row is not None and row.state == states.SCHEDULED
        relaunched = flight.ti_id in decided.relaunched or (
            pending and row is not None and row.launch_attempts > 0
        )
        if relaunched and row is not None and row.try_number == event.key.try_number:
            continue  # the same try is launched again: its attempt stays open
        this_try = row is not None and row.try_number == event.key.try_number and not pending
        # The try's final state, derived rather than read back: the outcome if it
        # applied, else the row as fetched above (no update touched it).
        if flight.ti_id in changed:
            state = outcomes[flight.ti_id].state
        elif this_try and row is not None:
            state = row.state
        else:
            # The task instance moved on (the worker or the sanity loop decided this try,
            # and its next try is due or claimed before this exit arrived): judge the old
            # try by its exit (a decision noted on its attempt row stays).
            state = states.SUCCESS if event.exit_code == 0 else states.FAILED
        if state in states.FINISHED:
            recorded.finished[state] += 1
        # Known only if this transaction wrote it, or nobody here meant to (a worker's
        # recorded end): an outcome that did not apply lost to a concurrent writer.
        known = flight.ti_id in changed or flight.ti_id not in outcomes
        if known and row is not None and row.try_number == event.key.try_number:
            recorded.states[flight.ti_id] = store_tis.TIState(
                flight.ti_id,
                flight.run_pk,
                event.key.task_id,
                state,
                row.try_number,
                row.max_tries,
                event.key.map_index,
            )
        callback_state = state
        if flight.ti_id in changed:
            error = outcomes[flight.ti_id].error
        elif this_try and row is not None:
            error = row.error  # the worker of a Bash task in a pod recorded it
        else:
            # Judged by its exit only: the attempt keeps that state, but no callback runs
            # on a guess.
            error, callback_state = None, ""
        ended.append((event.key, flight.run_pk, callback_state, error))
        if flight.ti_id not in closed:
            ends.append(_attempt_end(event, flight.ti_id, state))
        log.info(
            "%s exited: code=%s reason=%s → %s", event.key, event.exit_code, event.reason, state
        )
    await store_attempts.close(session, ends)
    recorded.callbacks = await callbacks_due(deps, session, versions, ended)
    return {flight.run_pk for _, flight in flights}


def _attempt_end(event: AttemptExited, ti_id: int, state: str) -> store_attempts.AttemptEnd:
    """The end of the attempt of `event`'s try, judged `state`."""
    return store_attempts.AttemptEnd(
        ti_id,
        event.key.try_number,
        state,
        event.exit_code,
        event.reason,
        event.message,
        event.log_tail,
        event.at,
    )


def _closed_with_outcome(
    flights: Sequence[tuple[AttemptExited, InFlight]],
    outcomes: dict[int, store_tis.Outcome],
    current: Mapping[int, TaskInstanceRecord],
    relaunched: set[int],
) -> tuple[store_tis.Outcome, store_attempts.AttemptEnd] | None:
    """A round that records one exit with an outcome to write: the outcome and the end of
    its attempt if it applies (the try's state is then the outcome's), which one statement
    writes. Not a try launched again (its attempt stays open)."""
    if len(flights) != 1 or len(outcomes) != 1:
        return None
    event, flight = flights[0]
    outcome, row = outcomes.get(flight.ti_id), current.get(flight.ti_id)
    if outcome is None or row is None or flight.ti_id in relaunched:
        return None
    if row.state == states.SCHEDULED:
        return None
    return outcome, _attempt_end(event, flight.ti_id, outcome.state)


async def callbacks_due(
    deps: RoundDeps,
    session: AsyncSession,
    versions: Mapping[int, CachedDag],
    ended: Sequence[tuple[AttemptKey, int, str, str | None]],
) -> list[TaskEnd]:
    """Of the ended tries (key, run pk, state, error), the Bash / Pod ones whose task has a
    callback for the state they ended in (a `@task`'s worker runs its own)."""
    due: list[tuple[AttemptKey, int, str, str | None, SerializedDag]] = []
    for key, run_pk, state, error in ended:
        version = versions.get(run_pk)
        task = _task(version, key)
        name = TASK_BY_STATE.get(state)
        if version is None or task is None or task["kind"] not in ("bash", "pod"):
            continue
        if name in task.get("callbacks", ()):
            due.append((key, run_pk, state, error, version.dag))
    out = []
    for key, run_pk, state, error, dag in due:
        # The run may have ended already (a worker's recorded end can end it before its
        # pod's exit arrives): then it is no longer in the cache of running runs.
        run = deps.flights.run_infos.get(run_pk) or await store_runs.find_run(
            session, key.dag_id, key.run_id
        )
        if run is not None:  # None: deleted meanwhile
            out.append(TaskEnd(dag, run, key, state, error))
    return out


def _task(version: CachedDag | None, key: AttemptKey) -> SerializedTask | None:
    """The task as the run's version defines it (retries, back-off)."""
    return version.dag["tasks"].get(key.task_id) if version is not None else None


def _describe(event: AttemptExited) -> str:
    parts = []
    if event.exit_code is not None:
        parts.append(f"exit code {event.exit_code}")
    if event.reason and event.reason not in ("Error", "Completed"):
        parts.append(f"reason {event.reason}")
    if event.message:
        parts.append(event.message)
    return ", ".join(parts) or "ended with no exit code"


def _failed(
    event: AttemptExited,
    flight: InFlight,
    task: SerializedTask | None,
    now: datetime,
    error: str,
    expected: tuple[str, ...] = (states.QUEUED, states.RUNNING),
) -> store_tis.Outcome:
    return failure_outcome(
        ti_id=flight.ti_id,
        try_number=event.key.try_number,
        max_tries=flight.max_tries,
        task=task,
        now=now,
        exit_code=event.exit_code,
        error=f"{error}: {_describe(event)}",
        expected=expected,
    )


def _by_exit_code(
    event: AttemptExited, flight: InFlight, task: SerializedTask | None, now: datetime
) -> store_tis.Outcome:
    if event.exit_code == 0 and event.reason in (None, "Completed"):
        # `push_result`: the command's last line (of the log tail the launcher read) is
        # its result; a launcher whose worker runs Bash records it itself.
        extra = (
            {"result": pushed_line(event.log_tail)}
            if task is not None and task.get("push_result")
            else {}
        )
        return store_tis.Outcome(
            flight.ti_id, event.key.try_number, states.SUCCESS, exit_code=0, extra=extra
        )
    if task is not None and event.exit_code in task.get("skip_on_exit_code", ()):
        return store_tis.Outcome(
            flight.ti_id,
            event.key.try_number,
            states.SKIPPED,
            exit_code=event.exit_code,
            error=skip_reason(event.exit_code),
        )
    return _failed(event, flight, task, now, "task failed")


def _with_result(
    outcome: store_tis.Outcome,
    event: AttemptExited,
    flight: InFlight,
    task: SerializedTask,
    now: datetime,
    max_bytes: int,
) -> store_tis.Outcome:
    """A successful `push_result` Pod try's outcome carries its result (stored as a
    `@task` result is); one whose termination message is no result fails, saying why."""
    if outcome.state != states.SUCCESS:
        return outcome
    try:
        value = pod_results.read_result(
            event.termination_message, max_bytes, task.get("result_file") or RESULT_FILE
        )
    except pod_results.ResultError as exc:
        return failure_outcome(
            ti_id=flight.ti_id,
            try_number=event.key.try_number,
            max_tries=flight.max_tries,
            task=task,
            now=now,
            exit_code=event.exit_code,
            error=str(exc),
        )
    return store_tis.Outcome(
        flight.ti_id, event.key.try_number, states.SUCCESS, exit_code=0, extra={"result": value}
    )


def skip_reason(exit_code: int | None) -> str:
    return f"skipped: exit code {exit_code} is one of the task's skip_on_exit_code"


def _cross_check(
    event: AttemptExited, flight: InFlight, state: str, task: SerializedTask | None, now: datetime
) -> store_tis.Outcome | None:
    """The worker recorded its own outcome; check it against how the process ended.

    Only a try the worker left unrecorded is decided here; a recorded outcome
    stands (success is final, see the module docstring).
    """
    if state in states.ACTIVE:
        return _failed(event, flight, task, now, "worker ended without recording a result")
    return None
