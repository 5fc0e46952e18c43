"""Every write of task-instance state: conditional, batched, fenced.

This module is the only code that changes `task_instance.state`. Each update
names the states it expects (and, once a try has started, the try number) in
its WHERE clause, so a stale scheduler or a stale worker can never overwrite
newer truth: the update simply matches no row. Each also asks
`transitions.check` first: a transition the state machine does not allow is a
bug and raises before any SQL runs. Updates are batched per tick
(one statement per group of identical values) so the query count per tick
stays constant as DAGs grow.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    ColumnElement,
    Integer,
    Table,
    bindparam,
    case,
    delete,
    exists,
    func,
    null,
    or_,
    select,
    true,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.store import states, transitions, wakeup
from miniflow.store.engine import rowcount as store_rowcount
from miniflow.store.models import DagRun, TaskAttempt, TaskInstance, UTCDateTime
from miniflow.store.records import TaskInstanceRecord, build, columns

TI = TaskInstance
T = TypeVar("T")
_ti: Table = TaskInstance.__table__  # type: ignore[assignment]
_ta: Table = TaskAttempt.__table__  # type: ignore[assignment]

_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)  # `now` not given: every candidate is due

MAX_KEYS_PER_STATEMENT = 1000
"""(id, try) pairs per `IN` list: PostgreSQL's parser recurses per element of a row-value
list and runs out of stack at ~10,000; a batch larger than this is a few statements."""


def state_is(*allowed: str) -> ColumnElement[bool]:
    """The row's state is one of `allowed`: a check on rows found by id, never the way in.

    `state || ''` keeps PostgreSQL's planner off the indexes on `state`. A state can hold
    thousands of rows (a wide run's `none` or `scheduled` tasks) while the statistics,
    gathered before that run began, say it holds a few; the planner would then walk every
    row in that state and filter the ids, instead of looking the ids up: O(run size) for
    each batch of a few.
    """
    checked = _ti.c.state.concat("")
    return checked == allowed[0] if len(allowed) == 1 else checked.in_(allowed)


def chunked(keys: Sequence[T]) -> Iterator[Sequence[T]]:
    """`keys` in slices of at most `MAX_KEYS_PER_STATEMENT`."""
    for start in range(0, len(keys), MAX_KEYS_PER_STATEMENT):
        yield keys[start : start + MAX_KEYS_PER_STATEMENT]


@dataclass(frozen=True, slots=True)
class TIState:
    id: int
    run_pk: int
    task_id: str
    state: str
    try_number: int
    max_tries: int
    map_index: int = -1  # >= 0: a mapped instance (readiness sees only the -1 rows)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A scheduled task instance that may be queued now."""

    id: int
    run_pk: int
    dag_id: str
    run_id: str
    task_id: str
    kind: str
    try_number: int
    priority: int
    pool: str | None
    map_index: int = -1
    map_args: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of a try as decided by its reporter (worker or scheduler)."""

    ti_id: int
    try_number: int
    state: str  # success | failed | up_for_retry | skipped (the task skipped itself)
    expected: tuple[str, ...] = (states.QUEUED, states.RUNNING)
    exit_code: int | None = None
    error: str | None = None
    next_retry_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def states_for_runs(
    session: AsyncSession, run_pks: Iterable[int]
) -> dict[int, list[TIState]]:
    pks = list(run_pks)
    out: dict[int, list[TIState]] = defaultdict(list)
    if not pks:
        return out
    for row in (await session.execute(_STATES_FOR_RUNS, {"pks": pks})).all():
        out[row.run_pk].append(TIState(*row))
    return out


# Statements of every round are built once (here and below): a statement caches its cache
# key, and building one costs more CPU than executing it.
# A mapped task's instances are not tasks of the graph: its own row stands for them.
_STATES_FOR_RUNS = select(
    _ti.c.id, _ti.c.run_pk, _ti.c.task_id, _ti.c.state, _ti.c.try_number, _ti.c.max_tries
).where(_ti.c.run_pk.in_(bindparam("pks", expanding=True)), _ti.c.map_index == -1)


async def states_of(
    session: AsyncSession, ids: Iterable[int], keys: Iterable[tuple[str, str, str, int]] = ()
) -> list[TIState]:
    """The states of task instances named by id or by (dag_id, run_id, task_id, map_index),
    of running runs (a mapped instance's key names its task's other instances too)."""
    by_run: dict[tuple[str, str], list[str]] = defaultdict(list)
    for dag_id, run_id, task_id, _ in sorted(set(keys)):
        by_run[(dag_id, run_id)].append(task_id)
    clauses: list[ColumnElement[bool]] = [
        TI.id.in_(list(chunk)) for chunk in chunked(sorted(set(ids)))
    ]
    clauses += [
        (TI.dag_id == dag_id) & (TI.run_id == run_id) & TI.task_id.in_(task_ids)
        for (dag_id, run_id), task_ids in by_run.items()
    ]
    if not clauses:
        return []
    # The run's state is read per row found (a correlated subquery), not joined: a join
    # lets the planner find these rows through the run (every row of a 10,000-task run,
    # filtered down to the few asked for) when its statistics predate the run.
    run_state = select(DagRun.state).where(DagRun.id == TI.run_pk).scalar_subquery()
    query = select(
        TI.id, TI.run_pk, TI.task_id, TI.state, TI.try_number, TI.max_tries, TI.map_index
    ).where(or_(*clauses), run_state == states.RUN_RUNNING)
    return [TIState(*row) for row in (await session.execute(query)).all()]


async def state_counts_of_running_runs(
    session: AsyncSession, run_pks: Sequence[int] | None = None
) -> dict[int, dict[str, int]]:
    """{run pk: {state: task instances}} of every running run (of `run_pks` only, if given).

    One grouped count: what the scheduler compares with what it believes, instead of
    reading every row of every running run.
    """
    query = (
        select(TI.run_pk, TI.state, func.count())
        .join(DagRun, DagRun.id == TI.run_pk)
        .where(DagRun.state == states.RUN_RUNNING, TI.map_index == -1)
        .group_by(TI.run_pk, TI.state)
    )
    if run_pks is not None:
        query = query.where(DagRun.id.in_(list(run_pks)))
    out: dict[int, dict[str, int]] = defaultdict(dict)
    for pk, state, count in (await session.execute(query)).all():
        out[pk][state] = count
    return dict(out)


async def set_states(
    session: AsyncSession,
    changes: Sequence[tuple[int, str, str]],
    now: datetime,
    *,
    running_runs_only: bool = False,
) -> int:
    """Apply (ti_id, expected_state, new_state) changes; one UPDATE per state pair. With
    `running_runs_only` (readiness decisions), rows of runs no longer running stay as
    they are (and are not counted as applied)."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for ti_id, expected, new in changes:
        groups[(expected, new)].append(ti_id)
    applied = 0
    for (expected, new), ids in groups.items():
        transitions.check((expected,), new)
        statement = _set_state(expected, new, running_runs_only)
        result = await session.execute(statement, {"ids": ids, "now": now})
        applied += store_rowcount(result)
    return applied


@cache
def _set_state(expected: str, new: str, running_runs_only: bool) -> Any:
    values: dict[str, Any] = {"state": new}
    if new in states.FINISHED:
        values["ended_at"] = bindparam("now", type_=UTCDateTime())
    if new == states.SCHEDULED:
        values["launch_attempts"] = 0  # a new try begins
    run = DagRun.__table__.c
    running = [exists().where(run.id == _ti.c.run_pk, run.state == states.RUN_RUNNING)]
    return (
        update(_ti)
        .where(
            _ti.c.id.in_(bindparam("ids", expanding=True)),
            state_is(expected),
            *(running if running_runs_only else []),
        )
        .values(**values)
    )


async def promote_due_retries(session: AsyncSession, now: datetime) -> list[int]:
    """up_for_retry → scheduled once the back-off has passed, and up_for_reschedule →
    scheduled once a sensor's next poke is due; returns touched run pks. One statement:
    it runs every round.

    A poke only once the last poke's attempt is closed (its exit recorded). A scheduler
    that died between the worker's "reschedule at T" and the exit leaves that attempt
    open; whoever adopts it records the exit first, so the next poke is launched once,
    after the last one is accounted for.
    """
    transitions.check((states.UP_FOR_RETRY, states.UP_FOR_RESCHEDULE), states.SCHEDULED)
    result = await session.execute(_PROMOTE_DUE, {"now": now})
    return sorted({row[0] for row in result.all()})


def _promote_due() -> Any:
    retry = _ti.c.state == states.UP_FOR_RETRY
    poke = (_ti.c.state == states.UP_FOR_RESCHEDULE) & ~_open_attempt()
    return (
        update(_ti)
        .where(
            _ti.c.state.in_([states.UP_FOR_RETRY, states.UP_FOR_RESCHEDULE]),
            _ti.c.next_retry_at <= bindparam("now", type_=UTCDateTime()),
            or_(retry, poke),
        )
        # a retry starts the sensor's timeout afresh; a poke keeps counting from the first
        .values(
            state=states.SCHEDULED,
            launch_attempts=0,
            first_poke_at=case((retry, null()), else_=_ti.c.first_poke_at),
        )
        .returning(_ti.c.run_pk)
    )


def _open_attempt() -> ColumnElement[bool]:
    """The task instance's current try still has an open attempt (its exit unrecorded)."""
    return (
        select(_ta.c.id)
        .where(
            _ta.c.ti_id == _ti.c.id,
            _ta.c.try_number == _ti.c.try_number,
            _ta.c.ended_at.is_(None),
        )
        .exists()
    )


_PROMOTE_DUE = _promote_due()


async def next_retry_due(session: AsyncSession) -> datetime | None:
    """When the next retry, the next poke of a sensor, or the next relaunch after its
    back-off is due. A poke waiting for its last poke's exit is not counted: that exit
    wakes the scheduler itself, and its past due time would make it spin until then."""
    due: datetime | None = (await session.execute(_NEXT_DUE)).scalar_one_or_none()
    return due


_NEXT_DUE = select(func.min(_ti.c.next_retry_at)).where(
    or_(
        _ti.c.state.in_([states.UP_FOR_RETRY, states.SCHEDULED]),
        (_ti.c.state == states.UP_FOR_RESCHEDULE) & ~_open_attempt(),
    )
)


CLAIM_LOCK = 0x6D666C77  # "mflw": the advisory lock that serializes claims across schedulers
_CLAIM_LOCK = select(func.pg_advisory_xact_lock(CLAIM_LOCK))


async def serialize_claims(session: AsyncSession) -> None:
    """Hold the claim lock until this transaction ends (PostgreSQL; SQLite has one writer).

    Limits (parallelism, `max_active_tasks`, pools) are counted from the database inside
    the claim: two schedulers counting at once would each see the same free slots and
    together exceed them. Taken in the same transaction, the count and the claim are
    one step for every scheduler.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(_CLAIM_LOCK)


ActiveCounts = tuple[int, dict[str, int], dict[str, int]]
"""Queued+running task instances: total, per DAG, per pool."""


async def active_counts(session: AsyncSession) -> ActiveCounts:
    """Queued+running task instances: total, per DAG, per pool."""
    return _tally((await session.execute(_ACTIVE_COUNTS)).all())


def _tally(groups: Iterable[Sequence[Any]]) -> ActiveCounts:
    """`ActiveCounts` of (dag_id, pool, count) groups."""
    total = 0
    by_dag: dict[str, int] = defaultdict(int)
    by_pool: dict[str, int] = defaultdict(int)
    for dag_id, pool, count in groups:
        total += count
        by_dag[dag_id] += count
        if pool is not None:
            by_pool[pool] += count
    return total, dict(by_dag), dict(by_pool)


_ACTIVE_COUNTS = (
    select(_ti.c.dag_id, _ti.c.pool, func.count().label("n"))
    .where(_ti.c.state.in_(list(states.ACTIVE)))
    .group_by(_ti.c.dag_id, _ti.c.pool)
)


async def counts_and_candidates(
    session: AsyncSession, limit: int, now: datetime
) -> tuple[ActiveCounts, list[Candidate]] | None:
    """PostgreSQL: `active_counts` and the first window of `scheduled_candidates` (nothing
    skipped) in one statement, both read in the snapshot it takes once the claim lock is
    held; None when there is no candidate (then the counts are not needed). Every claiming
    round starts with these two reads, and a chain of tasks pays each statement per link.
    SQLite: the two statements."""
    if session.get_bind().dialect.name != "postgresql":
        candidates = await scheduled_candidates(session, limit, now)
        return (await active_counts(session), candidates) if candidates else None
    rows = (await session.execute(_COUNTS_AND_CANDIDATES, {"now": now, "limit": limit})).all()
    if not rows:
        return None
    return _tally(rows[0][-1] or ()), [Candidate(*row[:-1]) for row in rows]


def _counts_and_candidates() -> Any:
    counts = _ACTIVE_COUNTS.subquery("active")
    groups = (
        select(func.json_agg(func.json_build_array(counts.c.dag_id, counts.c.pool, counts.c.n)))
        .select_from(counts)
        .scalar_subquery()
    )
    return _candidates(True, False, False, False).add_columns(
        type_coerce(groups, JSON()).label("active")
    )


async def scheduled_candidates(
    session: AsyncSession,
    limit: int,
    now: datetime | None = None,
    *,
    skip_dags: Iterable[str] = (),
    skip_pools: Iterable[str] = (),
    skip_ids: Iterable[int] = (),
) -> list[Candidate]:
    """Scheduled task instances, highest priority then oldest run first; locked on Postgres.

    A relaunch waiting out its back-off (`next_retry_at` after `now`) is not a candidate yet.
    `skip_dags` / `skip_pools` leave out DAGs and pools already at their limit, so a DAG
    with many waiting tasks and a low limit cannot fill the window and starve the others.

    On PostgreSQL the window is read per running run: each run's first `limit` scheduled
    tasks (priority, then id) come straight from `ix_task_instance_run_state_priority`,
    and only those are merged and ordered. The plain query below sorts every scheduled
    task of every run each round (a 10,000-task run at parallelism 32: thousands of rows
    a round, O(n²) over the run). Only the rows returned are locked.
    """
    dags, pools, ids = list(skip_dags), list(skip_pools), list(skip_ids)
    dialect = session.get_bind().dialect.name
    statement = _candidates(dialect == "postgresql", bool(dags), bool(pools), bool(ids))
    params = {"now": now or _FAR_FUTURE, "limit": limit, "dags": dags, "pools": pools, "ids": ids}
    return [Candidate(*row) for row in (await session.execute(statement, params)).all()]


_CANDIDATE_COLUMNS = tuple(
    _ti.c[name]
    for name in (
        "id",
        "run_pk",
        "dag_id",
        "run_id",
        "task_id",
        "kind",
        "try_number",
        "priority",
        "pool",
        "map_index",
        "map_args",
    )
)


@cache
def _candidates(per_run: bool, skip_dags: bool, skip_pools: bool, skip_ids: bool) -> Any:
    """The query of `scheduled_candidates`; parameters `now`, `limit`, and the lists
    `dags`, `pools`, `ids` of those skipped."""
    limit = bindparam("limit", type_=Integer())
    filters = [
        or_(
            _ti.c.next_retry_at.is_(None),
            _ti.c.next_retry_at <= bindparam("now", type_=UTCDateTime()),
        ),
        *([_ti.c.dag_id.not_in(bindparam("dags", expanding=True))] if skip_dags else []),
        *(
            [or_(_ti.c.pool.is_(None), _ti.c.pool.not_in(bindparam("pools", expanding=True)))]
            if skip_pools
            else []
        ),
        *([_ti.c.id.not_in(bindparam("ids", expanding=True))] if skip_ids else []),
    ]
    run = DagRun.__table__.c
    if not per_run:
        return (
            select(*_CANDIDATE_COLUMNS)
            .join(DagRun.__table__, run.id == _ti.c.run_pk)
            .where(_ti.c.state == states.SCHEDULED, run.state == states.RUN_RUNNING, *filters)
            .order_by(_ti.c.priority.desc(), run.logical_date, _ti.c.id)
            .limit(limit)
        )
    first = (
        select(_ti.c.id, _ti.c.priority)
        .where(_ti.c.run_pk == run.id, _ti.c.state == states.SCHEDULED, *filters)
        .order_by(_ti.c.priority.desc(), _ti.c.id)
        .limit(limit)
        .lateral("run_head")
    )
    window = (
        select(first.c.id, first.c.priority, run.logical_date)
        .select_from(DagRun.__table__)
        .join(first, true())
        .where(run.state == states.RUN_RUNNING)
        .order_by(first.c.priority.desc(), run.logical_date, first.c.id)
        .limit(limit)
        .subquery("claim_window")
    )
    return (
        select(*_CANDIDATE_COLUMNS)
        .join(window, window.c.id == _ti.c.id)
        .where(state_is(states.SCHEDULED))
        .order_by(window.c.priority.desc(), window.c.logical_date, window.c.id)
        .with_for_update(of=_ti, skip_locked=True)
    )


_COUNTS_AND_CANDIDATES = _counts_and_candidates()


async def mark_queued(session: AsyncSession, ids: Sequence[int], now: datetime) -> dict[int, int]:
    """scheduled → queued; returns {ti_id: try_number} of those claimed.

    A new try gets the next try number; a relaunch (`launch_attempts > 0`: the
    try never reached a container) keeps its try number.
    """
    if not ids:
        return {}
    transitions.check((states.SCHEDULED,), states.QUEUED)
    result = await session.execute(_MARK_QUEUED, {"ids": list(ids), "now": now})
    return {ti_id: try_number for ti_id, try_number in result.all()}


async def record_started(
    session: AsyncSession, items: Sequence[tuple[int, int, str | None, datetime]]
) -> None:
    """Launcher saw (ti_id, try, handle, at) start: queued → running, fenced by try.

    One executemany for the whole batch (a fan-out starts hundreds at once).
    """
    if not items:
        return
    transitions.check(states.ACTIVE, states.RUNNING)
    await session.execute(
        RECORD_STARTED,
        [{"k_id": i, "k_try": n, "k_handle": h, "k_at": at} for i, n, h, at in items],
    )


QUEUE = (
    update(_ti)
    .where(_ti.c.id.in_(bindparam("ids", expanding=True)), state_is(states.SCHEDULED))
    .values(
        state=states.QUEUED,
        try_number=case((_ti.c.launch_attempts > 0, _ti.c.try_number), else_=_ti.c.try_number + 1),
        queued_at=bindparam("now", type_=UTCDateTime()),
        started_at=None,
        ended_at=None,
        heartbeat_at=None,
        handle=None,
        exit_code=None,
        error=None,
        next_retry_at=None,
    )
)
"""scheduled → queued for the ids given as `ids`, as of `now` (no RETURNING)."""
_MARK_QUEUED = QUEUE.returning(_ti.c.id, _ti.c.try_number)


RECORD_STARTED = (
    _ti.update()
    .where(
        _ti.c.id == bindparam("k_id"),
        _ti.c.try_number == bindparam("k_try"),
        # executemany can't expand IN lists: spell the two active states out
        or_(_ti.c.state == states.QUEUED, _ti.c.state == states.RUNNING),
    )
    .values(
        state=states.RUNNING,
        handle=bindparam("k_handle"),
        started_at=func.coalesce(_ti.c.started_at, bindparam("k_at", type_=UTCDateTime())),
    )
)


async def finish(session: AsyncSession, outcomes: Sequence[Outcome], now: datetime) -> set[int]:
    """Apply outcomes, each only if its try is still current and in an expected state.

    Outcomes with identical values are one UPDATE (`(id, try) IN (...)`), so a
    tick that ends 2,000 tries costs a handful of statements. Returns the ids
    of the task instances that changed.
    """
    groups: dict[tuple[Any, ...], list[Outcome]] = defaultdict(list)
    for item in outcomes:
        # `extra` may hold unhashable values (a dict result): group on its JSON text.
        extra_key = json.dumps(item.extra, sort_keys=True, default=str) if item.extra else ""
        key = (item.state, item.expected, item.exit_code, item.error, item.next_retry_at, extra_key)
        groups[key].append(item)
    changed: set[int] = set()
    for items in groups.values():
        statement, values = finish_step(items[0], now)
        keys = [(i.ti_id, i.try_number) for i in items]
        for chunk in chunked(keys):
            result = await session.execute(statement, {**values, "keys": list(chunk)})
            changed.update(row[0] for row in result.all())
    return changed


def finish_step(outcome: Outcome, now: datetime) -> tuple[Any, dict[str, Any]]:
    """The UPDATE that applies `outcome` (and every outcome with its values) and its
    parameters but `keys`, the (id, try) pairs; it returns the ids it changed."""
    transitions.check(outcome.expected, outcome.state)
    statement = _finish_statement(outcome.expected, tuple(sorted(outcome.extra)))
    values: dict[str, Any] = {
        "v_state": outcome.state,
        "v_exit_code": outcome.exit_code,
        "v_error": outcome.error,
        "v_next_retry_at": outcome.next_retry_at,
        "v_ended_at": now,
        **{f"v_{name}": value for name, value in outcome.extra.items()},
    }
    return statement, values


@cache
def _finish_statement(expected: tuple[str, ...], extra: tuple[str, ...]) -> Any:
    """The UPDATE of `finish` for tries in states `expected` setting the columns `extra`
    too; every value a parameter `v_<column>`."""
    columns = ("state", "exit_code", "error", "next_retry_at", "ended_at", *extra)
    return (
        update(_ti)
        .where(
            tuple_(_ti.c.id, _ti.c.try_number).in_(bindparam("keys", expanding=True)),
            _ti.c.state.in_(list(expected)),
        )
        .values({name: bindparam(f"v_{name}", type_=_ti.c[name].type) for name in columns})
        .returning(_ti.c.id)
    )


async def skip_waiting(
    session: AsyncSession, ti_id: int, task_ids: Sequence[str], now: datetime
) -> int:
    """none → skipped for `task_ids` of the run of task instance `ti_id`.

    A branch or short-circuit task's worker calls this in the transaction that records
    its success, so no scheduler ever sees the success without the skips (and a task
    already decided or running is left alone). Returns the rows skipped.
    """
    if not task_ids:
        return 0
    transitions.check((states.NONE,), states.SKIPPED)
    run_pk = select(TI.run_pk).where(TI.id == ti_id).scalar_subquery()
    skipped = 0
    for chunk in chunked(sorted(set(task_ids))):
        result = await session.execute(
            update(TI)
            .execution_options(synchronize_session=False)
            .where(TI.run_pk == run_pk, TI.task_id.in_(list(chunk)), TI.state == states.NONE)
            .values(state=states.SKIPPED, ended_at=now)
        )
        skipped += store_rowcount(result)
    return skipped


async def fetch(session: AsyncSession, ids: Sequence[int]) -> dict[int, TaskInstanceRecord]:
    if not ids:
        return {}
    rows = await session.execute(_FETCH, {"ids": list(ids)})
    return {r.id: r for r in build(TaskInstanceRecord, rows)}


# Records are read with the table's columns in every clause: one ORM attribute makes the
# statement an ORM one, whose rows cost ~20% more to read (a run's 2,000 task instances).
_RECORD = select(*columns(TaskInstanceRecord))
_FETCH = _RECORD.where(_ti.c.id.in_(bindparam("ids", expanding=True)))


async def find_keys(
    session: AsyncSession, keys: Sequence[tuple[str, str, str, int] | tuple[str, str, str]]
) -> dict[tuple[str, str, str, int] | tuple[str, str, str], TaskInstanceRecord]:
    """Task instances by (dag_id, run_id, task_id, map_index), keyed as asked: a key of
    three names the task's own row (map_index -1)."""
    if not keys:
        return {}
    full = {(k if len(k) == 4 else (*k, -1)): k for k in keys}
    out: dict[tuple[str, str, str, int] | tuple[str, str, str], TaskInstanceRecord] = {}
    for r in build(TaskInstanceRecord, await session.execute(_FIND_KEYS, {"keys": list(full)})):
        out[full[(r.dag_id, r.run_id, r.task_id, r.map_index)]] = r
    return out


_FIND_KEYS = _RECORD.where(
    tuple_(_ti.c.dag_id, _ti.c.run_id, _ti.c.task_id, _ti.c.map_index).in_(
        bindparam("keys", expanding=True)
    )
)


async def in_flight(session: AsyncSession) -> list[TaskInstanceRecord]:
    """Queued and running task instances (to adopt after a restart)."""
    return build(TaskInstanceRecord, await session.execute(_IN_FLIGHT))


_IN_FLIGHT = _RECORD.where(_ti.c.state.in_(list(states.ACTIVE)))


async def list_for_run(session: AsyncSession, dag_id: str, run_id: str) -> list[TaskInstanceRecord]:
    rows = await session.execute(_FOR_RUN, {"dag_id": dag_id, "run_id": run_id})
    return build(TaskInstanceRecord, rows)


_FOR_RUN = _RECORD.where(
    _ti.c.dag_id == bindparam("dag_id"), _ti.c.run_id == bindparam("run_id")
).order_by(_ti.c.id)


async def state_counts_for_run(session: AsyncSession, dag_id: str, run_id: str) -> dict[str, int]:
    """{state: task instances} of one run, mapped instances included (the rows
    `list_for_run` reads, counted by the database instead)."""
    rows = await session.execute(_COUNTS_FOR_RUN, {"dag_id": dag_id, "run_id": run_id})
    return {state: count for state, count in rows.all()}


_COUNTS_FOR_RUN = (
    select(_ti.c.state, func.count())
    .where(_ti.c.dag_id == bindparam("dag_id"), _ti.c.run_id == bindparam("run_id"))
    .group_by(_ti.c.state)
)


async def clear(
    session: AsyncSession,
    dag_id: str,
    run_id: str,
    task_ids: Sequence[str],
    retries: dict[str, int],
) -> int:
    """Reset finished tasks to `none` so they run again with a new try and fresh retries.

    Running tries are left alone (kill them first); the run goes back to running.
    """
    rows = list(
        (
            await session.execute(
                select(TI).where(
                    TI.dag_id == dag_id, TI.run_id == run_id, TI.task_id.in_(list(task_ids))
                )
            )
        ).scalars()
    )
    busy = {r.task_id for r in rows if r.state in states.ACTIVE}
    # A mapped task's instances are deleted and made again: numbering their new tries after
    # the old ones keeps a try's key (log file, pod name) from ever being reused.
    instance_tries: dict[str, int] = defaultdict(int)
    for r in rows:
        if r.map_index >= 0:
            instance_tries[r.task_id] = max(instance_tries[r.task_id], r.try_number)
    count = 0
    run_pk = None
    for row in rows:
        if row.state in states.ACTIVE or row.map_index >= 0:
            continue  # a mapped task's instances go with it (below)
        if row.task_id in busy:
            continue  # one of its mapped instances still runs
        transitions.check((row.state,), states.NONE)
        run_pk = row.run_pk
        result = await session.execute(
            update(TI)
            .execution_options(synchronize_session=False)
            .where(TI.id == row.id, TI.try_number == row.try_number, TI.state == row.state)
            .values(
                state=states.NONE,
                try_number=max(row.try_number, instance_tries[row.task_id]),
                max_tries=max(row.try_number, instance_tries[row.task_id])
                + retries.get(row.task_id, 0),
                launch_attempts=0,
                next_retry_at=None,
                first_poke_at=None,
                ended_at=None,
                map_args=null(),  # a mapped task expands again (SQL NULL, not JSON null)
            )
        )
        count += store_rowcount(result)
        if store_rowcount(result):
            # A mapped task expands again when it next may run, maybe into other items.
            await session.execute(
                delete(TI).where(
                    TI.run_pk == row.run_pk, TI.task_id == row.task_id, TI.map_index >= 0
                )
            )
    if run_pk is not None:
        await session.execute(
            update(DagRun)
            .where(DagRun.id == run_pk, DagRun.state.in_(list(states.RUN_FINISHED)))
            .values(state=states.RUN_RUNNING, ended_at=None)
        )
    if count:
        await wakeup.announce(session, "clear")
    return count


# --- the worker's side -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """What a worker needs of the task instance it claimed."""

    id: int
    try_number: int
    max_tries: int
    map_args: dict[str, Any] | None = None  # a mapped instance's own arguments


async def worker_claim(
    session: AsyncSession,
    dag_id: str,
    run_id: str,
    task_id: str,
    try_number: int,
    now: datetime,
    map_index: int = -1,
) -> Claimed | None:
    """Mark the try running for this worker, only if the database still expects this try.

    `heartbeat_at IS NULL` makes the claim exclusive: a second worker for the
    same try (a duplicate pod) finds it taken and runs nothing.
    """
    result = await session.execute(
        _WORKER_CLAIM,
        {
            "k_dag_id": dag_id,
            "k_run_id": run_id,
            "k_task_id": task_id,
            "k_map_index": map_index,
            "k_try": try_number,
            "v_now": now,
        },
    )
    row = result.one_or_none()
    return None if row is None else Claimed(*row)


transitions.check(states.ACTIVE, states.RUNNING)
# Built once, on the table (an ORM statement costs a worker milliseconds per claim).
_WORKER_CLAIM = (
    update(_ti)
    .where(
        _ti.c.dag_id == bindparam("k_dag_id"),
        _ti.c.run_id == bindparam("k_run_id"),
        _ti.c.task_id == bindparam("k_task_id"),
        _ti.c.map_index == bindparam("k_map_index"),
        _ti.c.try_number == bindparam("k_try"),
        _ti.c.state.in_(sorted(states.ACTIVE)),
        _ti.c.heartbeat_at.is_(None),
    )
    .values(
        state=states.RUNNING,
        heartbeat_at=bindparam("v_now", type_=UTCDateTime()),
        started_at=func.coalesce(_ti.c.started_at, bindparam("v_now", type_=UTCDateTime())),
    )
    .returning(_ti.c.id, _ti.c.try_number, _ti.c.max_tries, _ti.c.map_args)
)


async def heartbeat(session: AsyncSession, ti_id: int, try_number: int, now: datetime) -> bool:
    """False when this try is no longer the current running one (the worker must stop)."""
    result = await session.execute(
        update(TI)
        .execution_options(synchronize_session=False)
        .where(TI.id == ti_id, TI.try_number == try_number, TI.state == states.RUNNING)
        .values(heartbeat_at=now)
    )
    return bool(store_rowcount(result))


async def start_poking(
    session: AsyncSession, ti_id: int, try_number: int, now: datetime
) -> datetime:
    """A sensor's first poke of its try chain: set once (to `now`), then kept across its
    rescheduled tries; returns it. Its `timeout` counts from here."""
    result = await session.execute(
        update(TI)
        .execution_options(synchronize_session=False)
        .where(TI.id == ti_id, TI.try_number == try_number)
        .values(first_poke_at=func.coalesce(TI.first_poke_at, now))
        .returning(TI.first_poke_at)
    )
    first = result.scalar_one_or_none()
    return now if first is None else first


async def reschedule(
    session: AsyncSession, ti_id: int, try_number: int, poke_at: datetime, now: datetime
) -> bool:
    """running → up_for_reschedule: the sensor's try ends and its next poke is due at
    `poke_at`. The next try is a poke, not a retry: `max_tries` grows by one so the
    task's retries are left whole. False if this try is no longer the running one."""
    transitions.check((states.RUNNING,), states.UP_FOR_RESCHEDULE)
    result = await session.execute(
        update(TI)
        .execution_options(synchronize_session=False)
        .where(TI.id == ti_id, TI.try_number == try_number, TI.state == states.RUNNING)
        .values(
            state=states.UP_FOR_RESCHEDULE,
            next_retry_at=poke_at,
            max_tries=TI.max_tries + 1,
            ended_at=now,
            exit_code=0,
            error=None,
        )
        .returning(TI.id)
    )
    return result.scalar_one_or_none() is not None


async def upstream_results(
    session: AsyncSession, dag_id: str, run_id: str, task_ids: Sequence[str]
) -> dict[str, Any]:
    """{task_id: result}; a mapped task's result is the list of its mapped instances'
    results in map_index order (of those that succeeded: a skipped one has none)."""
    if not task_ids:
        return {}
    rows = await session.execute(
        _UPSTREAM_RESULTS, {"dag_id": dag_id, "run_id": run_id, "task_ids": list(task_ids)}
    )
    out: dict[str, Any] = {}
    mapped: dict[str, list[Any]] = {}
    for task_id, result, state, map_index in rows.all():
        if map_index < 0:
            out[task_id] = result
        elif state == states.SUCCESS:
            mapped.setdefault(task_id, []).append(result)
        else:
            mapped.setdefault(task_id, [])
    return {**out, **mapped}


_UPSTREAM_RESULTS = (
    select(_ti.c.task_id, _ti.c.result, _ti.c.state, _ti.c.map_index)
    .where(
        _ti.c.dag_id == bindparam("dag_id"),
        _ti.c.run_id == bindparam("run_id"),
        _ti.c.task_id.in_(bindparam("task_ids", expanding=True)),
    )
    .order_by(_ti.c.map_index)
)


# --- relaunches and the sanity loop ------------------------------------------------------------


async def relaunch(
    session: AsyncSession, items: Sequence[tuple[int, int]], not_before: datetime | None = None
) -> set[int]:
    """queued → scheduled for (ti_id, try) pairs that never reached a container, and
    running → scheduled for worker tries whose worker never claimed them.

    The try keeps its number (the next claim launches the same try again, not before
    `not_before`) and `launch_attempts` grows by one; the caller enforces the cap.
    Returns the ids that changed.
    """
    if not items:
        return set()
    transitions.check(states.ACTIVE, states.SCHEDULED)
    keys = list(items)
    changed: set[int] = set()
    for chunk in chunked(keys):
        result = await session.execute(
            update(TI)
            .execution_options(synchronize_session=False)
            .where(
                tuple_(TI.id, TI.try_number).in_(chunk),
                TI.state.in_(list(states.ACTIVE)),
                TI.heartbeat_at.is_(None),  # no worker ever claimed it
            )
            .values(
                state=states.SCHEDULED,
                launch_attempts=TI.launch_attempts + 1,
                handle=None,
                started_at=None,
                next_retry_at=not_before,
            )
            .returning(TI.id)
        )
        changed.update(row[0] for row in result.all())
    return changed


@dataclass(frozen=True, slots=True)
class ActiveTry:
    """A queued or running try as the sanity loop judges it."""

    id: int
    run_pk: int
    dag_id: str
    run_id: str
    task_id: str
    kind: str
    state: str
    try_number: int
    max_tries: int
    launch_attempts: int
    handle: str | None
    queued_at: datetime | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    map_index: int = -1


async def active_tries(session: AsyncSession) -> list[ActiveTry]:
    """Every queued or running try, with the timestamps that show its progress."""
    query = select(
        TI.id,
        TI.run_pk,
        TI.dag_id,
        TI.run_id,
        TI.task_id,
        TI.kind,
        TI.state,
        TI.try_number,
        TI.max_tries,
        TI.launch_attempts,
        TI.handle,
        TI.queued_at,
        TI.started_at,
        TI.heartbeat_at,
        TI.map_index,
    ).where(TI.state.in_(list(states.ACTIVE)))
    return [ActiveTry(**row._mapping) for row in (await session.execute(query)).all()]


async def launch_counts(session: AsyncSession, ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """{ti_id: (try_number, launch_attempts)}."""
    if not ids:
        return {}
    query = select(TI.id, TI.try_number, TI.launch_attempts).where(TI.id.in_(list(ids)))
    return {i: (n, a) for i, n, a in (await session.execute(query)).all()}
