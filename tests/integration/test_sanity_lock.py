"""The sanity lock: one holder per database, freed with its connection, and a holder
that stops heartbeating is cut off by a peer."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.store import engine as store_engine
from miniflow.store import sanity_lock
from miniflow.store.sanity_lock import SanityLock
from tests.dbs import PostgresDatabases


async def _holder(engine: AsyncEngine) -> str | None:
    async with store_engine.transaction(store_engine.sessionmaker(engine)) as session:
        return await sanity_lock.holder_id(session)


async def test_one_holder_at_a_time_and_release_frees_it(engine: AsyncEngine, db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        a = SanityLock(engine, "a")
        assert await a.hold(["a"]) and a.held  # SQLite: the single scheduler always holds it
        return
    a, b = SanityLock(engine, "a"), SanityLock(engine, "b")
    try:
        assert await a.hold(["a", "b"])
        assert not await b.hold(["a", "b"])  # a is alive: b waits its turn
        assert await a.hold(["a", "b"])  # still a's, on the same connection
        assert await _holder(engine) == "a"
        await a.release()
        # The connection was closed, not returned to the pool with the lock on it.
        assert await _holder(engine) is None
        assert await b.hold(["a", "b"])
        assert await _holder(engine) == "b"
    finally:
        await a.release()
        await b.release()


async def test_a_holder_that_is_not_heartbeating_is_cut_off(pg_engine: AsyncEngine) -> None:
    engine = pg_engine
    frozen, peer = SanityLock(engine, "frozen"), SanityLock(engine, "peer")
    try:
        assert await frozen.hold(["frozen", "peer"])
        # The peer no longer counts "frozen" among the live instances: it terminates the
        # holder's connection and takes the lock in the same round.
        assert await peer.hold(["peer"])
        assert await _holder(engine) == "peer"
        # The frozen one comes back: its connection is gone, and so is its lock.
        assert not await frozen.hold(["frozen", "peer"])
        assert not frozen.held
    finally:
        await frozen.release()
        await peer.release()


async def test_another_databases_holder_is_neither_seen_nor_cut_off(
    pg_engine: AsyncEngine, postgres_dbs: PostgresDatabases
) -> None:
    """Two deployments on one PostgreSQL server: each database has its own lock."""
    other = store_engine.create_engine(await postgres_dbs.clone())
    theirs = SanityLock(other, "theirs")
    ours, peer = SanityLock(pg_engine, "ours"), SanityLock(pg_engine, "peer")
    try:
        assert await theirs.hold(["theirs"])
        assert await _holder(pg_engine) is None
        assert await ours.hold(["ours"])
        assert await _holder(pg_engine) == "ours"
        # "peer" takes "ours" for a frozen holder (not live): it cuts off "ours" only.
        assert await peer.hold(["peer"])
        assert await _holder(pg_engine) == "peer"
        assert await _holder(other) == "theirs"
        assert await theirs._still_connected()  # its backend was not terminated
    finally:
        for lock in (theirs, ours, peer):
            await lock.release()
        await other.dispose()
