"""Scheduler instances: who is running, since when, and whether it is still alive.

Each `miniflow scheduler` registers a row when it starts, heartbeats it every
few seconds and ends it when it stops. Other schedulers (and the CLI) read the
rows to tell a live peer from a dead one. A heartbeat is conditional on the
row still being open (`ended_at IS NULL`): an instance that a peer declared
dead learns it from its next heartbeat.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.store.engine import rowcount as store_rowcount
from miniflow.store.models import SchedulerInstance

SI = SchedulerInstance

NON_PEER_PREFIX = "dags-test-"
"""Instance ids of `dags test` commands: registered, but not peers of the schedulers."""


@dataclass(frozen=True, slots=True)
class Instance:
    id: str
    hostname: str
    pid: int
    version: str | None
    started_at: datetime
    heartbeat_at: datetime
    ended_at: datetime | None

    @property
    def peer(self) -> bool:
        return not self.id.startswith(NON_PEER_PREFIX)

    def alive(self, now: datetime, threshold: float) -> bool:
        """Registered, not ended, and heartbeating within `threshold` seconds."""
        return self.ended_at is None and now - self.heartbeat_at <= timedelta(seconds=threshold)


async def register(
    session: AsyncSession, *, id: str, hostname: str, pid: int, version: str, now: datetime
) -> None:
    await session.execute(
        insert(SI).values(
            id=id, hostname=hostname, pid=pid, version=version, started_at=now, heartbeat_at=now
        )
    )


async def heartbeat(
    session: AsyncSession, id: str, now: datetime, *, sanity: dict[str, Any] | None = None
) -> bool:
    """False when the row was ended (by this instance's stop, or a peer that saw it dead).
    `sanity`: the sanity loop's findings to record with it, when they changed."""
    values: dict[str, Any] = {"heartbeat_at": now}
    if sanity is not None:
        values["sanity"] = sanity
    result = await session.execute(
        update(SI)
        .execution_options(synchronize_session=False)
        .where(SI.id == id, SI.ended_at.is_(None))
        .values(**values)
    )
    return bool(store_rowcount(result))


async def sanity_findings(session: AsyncSession) -> dict[str, dict[str, Any]]:
    """Each instance's recorded sanity findings (instances that recorded some)."""
    query = select(SI.id, SI.sanity).where(SI.sanity.is_not(None))
    return {id: found for id, found in (await session.execute(query)).all()}


async def end(session: AsyncSession, id: str, now: datetime) -> None:
    await session.execute(
        update(SI)
        .execution_options(synchronize_session=False)
        .where(SI.id == id, SI.ended_at.is_(None))
        .values(ended_at=now)
    )


async def end_stale(
    session: AsyncSession, ids: Collection[str], *, before: datetime, now: datetime
) -> None:
    """End the rows of these instances that have not heartbeat since `before`."""
    if ids:
        await session.execute(
            update(SI)
            .execution_options(synchronize_session=False)
            .where(SI.id.in_(sorted(ids)), SI.ended_at.is_(None), SI.heartbeat_at < before)
            .values(ended_at=now)
        )


async def rejoin(session: AsyncSession, id: str, now: datetime) -> None:
    """Open an ended row again: its instance is alive after all (it was paused)."""
    await session.execute(
        update(SI)
        .execution_options(synchronize_session=False)
        .where(SI.id == id)
        .values(ended_at=None, heartbeat_at=now)
    )


async def list_all(session: AsyncSession) -> list[Instance]:
    query = select(
        SI.id, SI.hostname, SI.pid, SI.version, SI.started_at, SI.heartbeat_at, SI.ended_at
    ).order_by(SI.started_at)
    return [Instance(*row) for row in (await session.execute(query)).all()]


async def get(session: AsyncSession, id: str) -> Instance | None:
    query = select(
        SI.id, SI.hostname, SI.pid, SI.version, SI.started_at, SI.heartbeat_at, SI.ended_at
    ).where(SI.id == id)
    row = (await session.execute(query)).one_or_none()
    return None if row is None else Instance(*row)


async def any_alive(session: AsyncSession, now: datetime, threshold: float) -> bool:
    """Whether some registered scheduler heartbeat within `threshold` seconds of `now`."""
    return any(i.alive(now, threshold) for i in await list_all(session))


async def count_live_peers(session: AsyncSession, now: datetime, threshold: float) -> int:
    """Open peer instances (not `dags test`) that heartbeat within `threshold` seconds."""
    query = select(func.count()).where(
        SI.ended_at.is_(None),
        SI.heartbeat_at >= now - timedelta(seconds=threshold),
        SI.id.not_like(NON_PEER_PREFIX + "%"),
    )
    return int((await session.execute(query)).scalar_one())


async def claim_turns(
    session: AsyncSession, now: datetime, threshold: float
) -> tuple[dict[str, datetime], frozenset[str]]:
    """Live peers' places in line at the claim lock, by id: when each one's last turn
    began or, for one that never had a turn, when it registered; and the ids of those
    (`scheduler.turns`: they queue behind the peers that were there before them)."""
    query = select(SI.id, SI.claimed_at, SI.started_at).where(
        SI.ended_at.is_(None),
        SI.heartbeat_at >= now - timedelta(seconds=threshold),
        SI.id.not_like(NON_PEER_PREFIX + "%"),
    )
    rows = (await session.execute(query)).all()
    places = {id: claimed or started for id, claimed, started in rows}
    return places, frozenset(id for id, claimed, _ in rows if claimed is None)


async def take_turn(session: AsyncSession, id: str, now: datetime) -> None:
    """This instance begins its turn at claiming (under the claim lock)."""
    await session.execute(update(SI).where(SI.id == id).values(claimed_at=now))
