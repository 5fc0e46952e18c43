"""Pools: named slot limits shared by tasks across DAGs (like Airflow's pools)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.store.models import Pool
from miniflow.store.records import PoolRecord, build, columns, table


async def slots(session: AsyncSession) -> dict[str, int]:
    return {name: n for name, n in (await session.execute(select(Pool.name, Pool.slots))).all()}


async def set_pool(session: AsyncSession, name: str, slots: int, description: str | None) -> None:
    row = await session.get(Pool, name)
    if row is None:
        session.add(Pool(name=name, slots=slots, description=description))
    else:
        row.slots = slots
        if description is not None:
            row.description = description


async def list_pools(session: AsyncSession) -> list[PoolRecord]:
    query = select(*columns(PoolRecord)).order_by(table(PoolRecord).c.name)
    return build(PoolRecord, await session.execute(query))
