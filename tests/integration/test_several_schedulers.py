"""Several schedulers on one PostgreSQL database: limits are global, not per scheduler."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.store import engine as store_engine
from miniflow.store import task_instances as store_tis


async def test_claims_of_two_schedulers_never_count_free_slots_at_once(
    engine: AsyncEngine, db_url: str
) -> None:
    """While one scheduler is inside its claim (counting, then claiming), another
    scheduler's claim waits: two that counted at once would both see the same free slots."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite runs one scheduler")
    sessions = store_engine.sessionmaker(engine)
    second_counted = asyncio.Event()

    async def second_claim() -> None:
        async with store_engine.transaction(sessions) as session:
            await store_tis.serialize_claims(session)
            await store_tis.active_counts(session)
            second_counted.set()

    admin = await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        async with store_engine.transaction(sessions) as session:
            await store_tis.serialize_claims(session)
            await store_tis.active_counts(session)
            second = asyncio.create_task(second_claim())
            deadline = time.monotonic() + 10
            while not await admin.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ):
                assert not second_counted.is_set(), "the second claim did not wait"
                assert time.monotonic() < deadline, "the second claim never asked for the lock"
                await asyncio.sleep(0.01)
            assert not second_counted.is_set()
        await asyncio.wait_for(second, 10)  # the first committed: the second goes on
        assert second_counted.is_set()
    finally:
        await admin.close()
