"""Task attempts: one row per try, the audit history. Closed rows are never rewritten.

A decision taken about an open try (the sanity loop's "heartbeat lost", a
relaunch) is noted on its row at once, with its reason; the exit that closes
the row later keeps that reason and adds the exit's own detail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import String, Table, bindparam, case, func, literal, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.store import states, transitions
from miniflow.store import task_instances as store_tis
from miniflow.store.engine import dialect_insert
from miniflow.store.models import TaskAttempt, UTCDateTime
from miniflow.store.records import AttemptRecord, build, columns

TA = TaskAttempt
_table: Table = TaskAttempt.__table__  # type: ignore[assignment]


# WHERE clause of executemany updates: the (ti_id, try) given as k_ti / k_try, still open.
_OPEN_TRY = (
    _table.c.ti_id == bindparam("k_ti"),
    _table.c.try_number == bindparam("k_try"),
    _table.c.ended_at.is_(None),
)


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    ti_id: int
    try_number: int
    state: str
    exit_code: int | None
    reason: str | None
    message: str | None
    log_tail: str | None
    ended_at: datetime


async def open_attempts(
    session: AsyncSession,
    rows: Sequence[tuple[int, str, str, str, int, int]],
    *,
    launcher: str,
    scheduler_id: str,
    now: datetime,
) -> None:
    """Insert (ti_id, dag_id, run_id, task_id, try, map_index) attempts in state queued.

    A relaunch of a try keeps the row its first launch opened (same try), and the
    scheduler that claimed it this time becomes its owner: the relaunch may be another
    scheduler's (one that adopted a try which had never started), and the launcher
    that reports the new launch's exit is the claimer's.
    """
    if not rows:
        return
    await session.execute(
        _open_statement(session.get_bind().dialect.name),
        [
            {
                "ti_id": ti_id,
                "dag_id": dag_id,
                "run_id": run_id,
                "task_id": task_id,
                "try_number": try_number,
                "map_index": map_index,
                "state": "queued",
                "launcher": launcher,
                "scheduler_id": scheduler_id,
                "queued_at": now,
            }
            for ti_id, dag_id, run_id, task_id, try_number, map_index in rows
        ],
    )


@cache
def _open_statement(dialect: str) -> Any:
    insert = dialect_insert(dialect, _table)
    return _on_conflict(insert)


def _on_conflict(insert: Any) -> Any:
    return insert.on_conflict_do_update(
        index_elements=["ti_id", "try_number"],
        set_={
            "scheduler_id": insert.excluded.scheduler_id,
            "launcher": insert.excluded.launcher,
        },
        where=_table.c.ended_at.is_(None),
    )


async def claim(
    session: AsyncSession,
    chosen: Sequence[tuple[int, str, str, str, int]],
    *,
    launcher: str,
    scheduler_id: str,
    now: datetime,
) -> dict[int, int]:
    """Claim the (ti_id, dag_id, run_id, task_id, map_index) task instances: scheduled →
    queued (`store_tis.mark_queued`) and their attempts opened (`open_attempts`);
    returns {ti_id: try_number} of those claimed. On PostgreSQL one statement (the
    attempts inserted from the updated rows): a claim is on every chain link's path."""
    if not chosen:
        return {}
    if session.get_bind().dialect.name != "postgresql":
        claimed = await store_tis.mark_queued(session, [c[0] for c in chosen], now)
        await open_attempts(
            session,
            [(t, d, r, k, claimed[t], m) for t, d, r, k, m in chosen if t in claimed],
            launcher=launcher,
            scheduler_id=scheduler_id,
            now=now,
        )
        return claimed
    transitions.check((states.SCHEDULED,), states.QUEUED)
    params = {
        "ids": [c[0] for c in chosen],
        "now": now,
        "launcher": launcher,
        "scheduler_id": scheduler_id,
    }
    return dict((await session.execute(_claim_statement(), params)).all())


@cache
def _claim_statement() -> Any:
    ti = store_tis.QUEUE.table.c
    queued = store_tis.QUEUE.returning(
        ti.id, ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.try_number
    ).cte("queued")
    rows = select(
        queued.c.id,
        queued.c.dag_id,
        queued.c.run_id,
        queued.c.task_id,
        queued.c.map_index,
        queued.c.try_number,
        literal(states.QUEUED),
        bindparam("launcher", type_=String()),
        bindparam("scheduler_id", type_=String()),
        bindparam("now", type_=UTCDateTime()),
    )
    names = [
        "ti_id",
        "dag_id",
        "run_id",
        "task_id",
        "map_index",
        "try_number",
        "state",
        "launcher",
        "scheduler_id",
        "queued_at",
    ]
    opened = _on_conflict(dialect_insert("postgresql", _table).from_select(names, rows))
    return select(queued.c.id, queued.c.try_number).add_cte(opened.cte("opened"))


async def record_started(
    session: AsyncSession, items: Sequence[tuple[int, int, str | None, datetime]]
) -> None:
    """(ti_id, try, handle, started_at): the task instance queued → running
    (`store_tis.record_started`) and its open attempt too (`mark_started`). On PostgreSQL
    one statement per try: a start is recorded on every chain link's path."""
    if not items:
        return
    if session.get_bind().dialect.name != "postgresql":
        await store_tis.record_started(session, items)
        await mark_started(session, items)
        return
    transitions.check(states.ACTIVE, states.RUNNING)
    await session.execute(
        _record_started_statement(),
        [{"k_id": t, "k_ti": t, "k_try": n, "k_handle": h, "k_at": at} for t, n, h, at in items],
    )


@cache
def _record_started_statement() -> Any:
    return _MARK_STARTED.add_cte(store_tis.RECORD_STARTED.cte("ti_started"))


async def mark_started(
    session: AsyncSession, items: Sequence[tuple[int, int, str | None, datetime]]
) -> None:
    """(ti_id, try, handle, started_at) for attempts still open."""
    if not items:
        return
    await session.execute(
        _MARK_STARTED,
        [{"k_ti": t, "k_try": n, "k_handle": h, "k_at": at} for t, n, h, at in items],
    )


async def set_handles(session: AsyncSession, items: Sequence[tuple[int, int, str]]) -> None:
    if not items:
        return
    await session.execute(
        _SET_HANDLE, [{"k_ti": t, "k_try": n, "k_handle": h} for t, n, h in items]
    )


async def close(session: AsyncSession, ends: Sequence[AttemptEnd]) -> None:
    """Close open attempts; an attempt that already ended is left as it was."""
    if not ends:
        return
    await session.execute(_CLOSE, [_end_params(e) for e in ends])


async def finish_and_close(
    session: AsyncSession, outcome: store_tis.Outcome, end: AttemptEnd, now: datetime
) -> set[int]:
    """`store_tis.finish` of one outcome and, if it applied, `close` of its attempt with
    `end`: one statement on PostgreSQL (a round that records one exit, as each link of a
    chain does, pays a round trip less). Returns `finish`'s answer."""
    if session.get_bind().dialect.name != "postgresql":
        changed = await store_tis.finish(session, [outcome], now)
        if outcome.ti_id in changed:
            await close(session, [end])
        return changed
    statement, values = store_tis.finish_step(outcome, now)
    result = await session.execute(
        _finish_and_close(statement),
        {**values, "keys": [(outcome.ti_id, outcome.try_number)], **_end_params(end)},
    )
    return {row[0] for row in result.all()}


@cache
def _finish_and_close(finish: Any) -> Any:
    """`finish` (an UPDATE of task instances returning their ids) and `_CLOSE` of the
    attempts of the rows it changed, as data-modifying CTEs: both run, whatever matches."""
    finished = finish.cte("finished")
    closed = (
        update(_table)
        .where(*_OPEN_TRY[1:], _table.c.ti_id == finished.c.id)
        .values(_CLOSE_VALUES)
        .returning(_table.c.id)
        .cte("closed")
    )
    return select(finished.c.id).add_cte(closed)


def _end_params(e: AttemptEnd) -> dict[str, Any]:
    return {
        "k_ti": e.ti_id,
        "k_try": e.try_number,
        "k_state": e.state,
        "k_exit": e.exit_code,
        "k_reason": e.reason,
        "k_message": e.message,
        "k_tail": e.log_tail,
        "k_ended": e.ended_at,
    }


def _joined(old: Any, new: Any) -> Any:
    """`old; new`, or whichever of the two is set."""
    return func.coalesce(old + "; " + new, old, new)


# Built once: a statement object caches its cache key, and building one costs more than
# executing it (these run every scheduler round).
_MARK_STARTED = (
    update(_table)
    .where(*_OPEN_TRY)
    .values(state="running", handle=bindparam("k_handle"), started_at=bindparam("k_at"))
)
_SET_HANDLE = update(_table).where(*_OPEN_TRY).values(handle=bindparam("k_handle"))
_CLOSE_VALUES: dict[str, Any] = {
    # a decision noted earlier (the sanity loop's) already set the final state
    "state": case(
        (or_(_table.c.state == "queued", _table.c.state == "running"), bindparam("k_state")),
        else_=_table.c.state,
    ),
    "exit_code": bindparam("k_exit"),
    # a decision noted earlier (e.g. "heartbeat lost") stays the reason
    "reason": func.coalesce(_table.c.reason, bindparam("k_reason")),
    "message": _joined(_table.c.message, bindparam("k_message")),
    "log_tail": bindparam("k_tail"),
    "ended_at": bindparam("k_ended"),
}
_CLOSE = update(_table).where(*_OPEN_TRY).values(_CLOSE_VALUES)


async def note(
    session: AsyncSession,
    items: Sequence[tuple[int, int, str | None, str]],
    *,
    states: dict[int, str] | None = None,
) -> None:
    """(ti_id, try, reason or None, message): record a decision on attempts still open.

    `states` ({ti_id: state}) stamps the try's final state, decided before its exit
    arrives (the sanity loop's verdicts); the exit that closes the row keeps it.
    """
    if not items:
        return
    stmt = (
        update(_table)
        .where(*_OPEN_TRY)
        .values(
            reason=func.coalesce(bindparam("k_reason"), _table.c.reason),
            message=_joined(_table.c.message, bindparam("k_msg")),
            state=func.coalesce(bindparam("k_state"), _table.c.state),
        )
    )
    decided = states or {}
    await session.execute(
        stmt,
        [
            {"k_ti": t, "k_try": n, "k_reason": r, "k_msg": m, "k_state": decided.get(t)}
            for t, n, r, m in items
        ],
    )


async def open_keys(session: AsyncSession) -> list[AttemptRecord]:
    """Attempts not yet closed (their exit has not been recorded)."""
    return build(AttemptRecord, await session.execute(_OPEN_KEYS))


_OPEN_KEYS = select(*columns(AttemptRecord)).where(_table.c.ended_at.is_(None))


async def owners(session: AsyncSession) -> dict[tuple[int, int], str | None]:
    """{(ti_id, try): scheduler_id} of every open attempt: who launched it, who follows it."""
    query = select(TA.ti_id, TA.try_number, TA.scheduler_id).where(TA.ended_at.is_(None))
    return {(t, n): sid for t, n, sid in (await session.execute(query)).all()}


async def owned_elsewhere(
    session: AsyncSession, keys: Sequence[tuple[int, int]], me: str
) -> set[tuple[int, int]]:
    """The (ti_id, try) among `keys` whose open attempt another instance owns now.

    The rows stay locked until the transaction ends (PostgreSQL): a peer's take-over
    of one of them waits for it, so a scheduler never records the outcome of a try
    that moved to another owner while it looked.
    """
    out: set[tuple[int, int]] = set()
    for chunk in store_tis.chunked(list(keys)):
        rows = (await session.execute(_OWNERS, {"keys": list(chunk)})).all()
        out.update((t, n) for t, n, owner in rows if owner is not None and owner != me)
    return out


async def open_and_owned(
    session: AsyncSession, keys: Sequence[tuple[int, int]], me: str
) -> set[tuple[int, int]]:
    """The (ti_id, try) among `keys` whose attempt is open and owned by `me`."""
    out: set[tuple[int, int]] = set()
    for chunk in store_tis.chunked(list(keys)):
        rows = (await session.execute(_OWNED_BY, {"keys": list(chunk), "me": me})).all()
        out.update((t, n) for t, n in rows)
    return out


_OWNED_BY = select(_table.c.ti_id, _table.c.try_number).where(
    tuple_(_table.c.ti_id, _table.c.try_number).in_(bindparam("keys", expanding=True)),
    _table.c.ended_at.is_(None),
    _table.c.scheduler_id == bindparam("me"),
)


_OWNERS = (
    select(_table.c.ti_id, _table.c.try_number, _table.c.scheduler_id)
    .where(
        tuple_(_table.c.ti_id, _table.c.try_number).in_(bindparam("keys", expanding=True)),
        _table.c.ended_at.is_(None),
    )
    .with_for_update()
)


async def take_over(
    session: AsyncSession, items: Sequence[tuple[int, int, str | None]], new_owner: str
) -> set[tuple[int, int]]:
    """(ti_id, try, old owner): make `new_owner` the owner of these open attempts, each only
    if its owner is still the old one — of two schedulers adopting the same try, one wins.
    Returns the (ti_id, try) pairs taken over."""
    taken: set[tuple[int, int]] = set()
    by_owner: dict[str | None, list[tuple[int, int]]] = {}
    for ti_id, try_number, old in items:
        by_owner.setdefault(old, []).append((ti_id, try_number))
    for old, keys in by_owner.items():
        for chunk in store_tis.chunked(keys):
            owner_is = TA.scheduler_id.is_(None) if old is None else TA.scheduler_id == old
            result = await session.execute(
                update(TA)
                .execution_options(synchronize_session=False)
                .where(
                    tuple_(TA.ti_id, TA.try_number).in_(chunk),
                    TA.ended_at.is_(None),
                    owner_is,
                )
                .values(scheduler_id=new_owner)
                .returning(TA.ti_id, TA.try_number)
            )
            taken.update((t, n) for t, n in result.all())
    return taken


async def open_by_scheduler(session: AsyncSession) -> dict[str | None, int]:
    """How many attempts each scheduler instance has open (launched, exit not recorded)."""
    query = (
        select(TA.scheduler_id, func.count()).where(TA.ended_at.is_(None)).group_by(TA.scheduler_id)
    )
    return {sid: n for sid, n in (await session.execute(query)).all()}


async def for_task(
    session: AsyncSession, dag_id: str, run_id: str, task_id: str, map_index: int = -1
) -> list[AttemptRecord]:
    query = (
        select(*columns(AttemptRecord))
        .where(
            _table.c.dag_id == dag_id,
            _table.c.run_id == run_id,
            _table.c.task_id == task_id,
            _table.c.map_index == map_index,
        )
        .order_by(_table.c.try_number)
    )
    return build(AttemptRecord, await session.execute(query))


async def for_run(session: AsyncSession, dag_id: str, run_id: str) -> list[AttemptRecord]:
    query = (
        select(*columns(AttemptRecord))
        .where(_table.c.dag_id == dag_id, _table.c.run_id == run_id)
        .order_by(_table.c.id)
    )
    return build(AttemptRecord, await session.execute(query))


async def open_owners(session: AsyncSession, dag_id: str, run_id: str) -> set[str | None]:
    """The scheduler instances that own an open attempt of the run (None: unowned)."""
    query = (
        select(TA.scheduler_id)
        .where(TA.dag_id == dag_id, TA.run_id == run_id, TA.ended_at.is_(None))
        .distinct()
    )
    return set((await session.execute(query)).scalars())
