"""The sanity lock: which scheduler does the duties that cross owners.

Each scheduler checks the tries it owns itself (only its launcher can see and kill
them). What crosses owners — adopting a dead instance's tries and leftover pods,
killing orphans nobody owns — must be done by one scheduler at a time, or two
would adopt or kill the same thing. On PostgreSQL that one is the holder of a
session-level advisory lock, taken on a connection of its own: the lock goes
with the connection, so a scheduler that dies (SIGKILL, a lost host) frees it at
once and a peer takes it in its next sanity round.

A holder that is alive but frozen (SIGSTOP, a long GC pause, a partitioned host)
keeps its connection and so its lock. Peers recognise it by its instance row:
when the instance named by the holding connection's `application_name` has not
heartbeat within the instance timeout, they terminate that backend and take the
lock. A holder that thaws finds its connection gone and is a holder no more.

SQLite has a single scheduler, which always holds the lock.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

log = logging.getLogger("miniflow.scheduler.sanity")

SANITY_LOCK = 0x6D66_5341_4E49  # "mfSANI": any constant other than the claim lock's
APP_PREFIX = "miniflow-sanity:"
_APP_NAME_MAX = 63  # PostgreSQL truncates application_name (NAMEDATALEN - 1)

_GONE = (DBAPIError, InterfaceError, OperationalError, OSError)


# A bigint advisory key shows in pg_locks as its high and low halves. pg_locks shows
# every database of the server, and advisory locks are per database: without the
# database filter a scheduler would see (and, taking it for a frozen peer, terminate)
# another deployment's holder on the same server.
_HOLDER = text(
    "SELECT a.pid, a.application_name FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    f"AND l.classid::bigint = {SANITY_LOCK >> 32} "
    f"AND l.objid::bigint = {SANITY_LOCK & 0xFFFFFFFF}"
)


async def holder_id(session: AsyncSession) -> str | None:
    """The instance id holding the sanity lock (PostgreSQL), or None."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    row = (await session.execute(_HOLDER)).first()
    if row is None or not str(row[1]).startswith(APP_PREFIX):
        return None
    return str(row[1]).removeprefix(APP_PREFIX)


def app_name(instance_id: str) -> str:
    return (APP_PREFIX + instance_id)[:_APP_NAME_MAX]


class SanityLock:
    """Held by at most one scheduler instance of a database at a time."""

    def __init__(self, engine: AsyncEngine, instance_id: str) -> None:
        self._engine = engine
        self._id = instance_id
        self._conn: AsyncConnection | None = None
        self._always = engine.dialect.name != "postgresql"

    @property
    def held(self) -> bool:
        return self._always or self._conn is not None

    async def hold(self, live: Collection[str]) -> bool:
        """Whether this instance holds the lock now; takes it if it is free, or if its
        holder is not among the `live` instance ids (a frozen holder is fenced out)."""
        if self._always:
            return True
        if self._conn is not None:
            if await self._still_connected():
                return True
            log.warning("lost the sanity lock's connection: no longer the sanity lock holder")
        conn = await self._engine.connect()
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(
                text("SELECT set_config('application_name', :n, false)"), {"n": app_name(self._id)}
            )
            got = await self._try(conn)
            if not got and await self._fence_stale_holder(conn, live):
                got = await self._try(conn)
        except BaseException:
            await _discard(conn)
            raise
        if not got:
            await _discard(conn)
            return False
        self._conn = conn
        log.info("%s holds the sanity lock", self._id)
        return True

    async def release(self) -> None:
        """Give the lock up (a graceful stop): closing the connection frees it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await _discard(conn)

    async def holder(self, conn: AsyncConnection) -> tuple[int, str] | None:
        """(backend pid, application_name) of the lock's holder, or None when free."""
        row = (await conn.execute(_HOLDER)).first()
        return None if row is None else (int(row[0]), str(row[1]))

    async def _try(self, conn: AsyncConnection) -> bool:
        got = await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": SANITY_LOCK})
        return bool(got.scalar())

    async def _still_connected(self) -> bool:
        assert self._conn is not None
        try:
            await self._conn.execute(text("SELECT 1"))
            return True
        except _GONE:
            await self.release()
            return False

    async def _fence_stale_holder(self, conn: AsyncConnection, live: Collection[str]) -> bool:
        found = await self.holder(conn)
        if found is None:
            return True  # freed between the two queries
        pid, name = found
        if not name.startswith(APP_PREFIX) or any(app_name(i) == name for i in live):
            return False
        log.warning(
            "the sanity lock holder %s is not heartbeating: terminating its connection",
            name.removeprefix(APP_PREFIX),
        )
        # With a timeout the call waits until the backend is gone (PostgreSQL 14+), so the
        # lock is free for this round's second try.
        await conn.execute(text("SELECT pg_terminate_backend(:p, 2000)"), {"p": pid})
        return True


async def _discard(conn: AsyncConnection) -> None:
    """Close the connection itself, never back into the pool: a pooled connection would
    keep the session lock (and this instance's application_name) for its next user."""
    try:
        await conn.invalidate()
        await conn.close()
    except _GONE:
        pass
