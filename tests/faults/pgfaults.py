"""Faults injected into PostgreSQL itself: killed connections and a locked table.

Both act on one test database through the admin connection of `tests.dbs`, and
spare the harness's own connections (`application_name = miniflow-faults-harness`)
so the test can still watch while the scheduler and the workers suffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from sqlalchemy.engine import make_url

from tests.dbs import PG_ADMIN_DSN
from tests.faults.harness import HARNESS_APP

TERMINATE = """
    SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE datname = $1 AND pid <> pg_backend_pid() AND coalesce(application_name, '') <> $2
"""
WAITING_ON_LOCKS = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = $1 AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()
"""


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def database_of(url: str) -> str:
    name = make_url(url).database
    assert name, url
    return name


async def terminate_backends(url: str, *, seconds: float, every: float) -> int:
    """Terminate every backend of the database but the harness's, every `every` seconds
    for `seconds`; how many were terminated in all."""
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    killed = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            killed += await conn.fetchval(TERMINATE, database_of(url), HARNESS_APP)
            await asyncio.sleep(every)
    finally:
        await conn.close()
    return killed


@dataclass
class HeldLock:
    max_waiting: int = 0
    """Most backends seen waiting on a lock at once while it was held."""


@contextlib.asynccontextmanager
async def lock_table(url: str, table: str) -> AsyncIterator[HeldLock]:
    """`LOCK TABLE` (ACCESS EXCLUSIVE) in an open transaction for the body's duration."""
    dsn = asyncpg_dsn(url)
    conn = await asyncpg.connect(dsn, server_settings={"application_name": HARNESS_APP})
    held = HeldLock()
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        watcher = asyncio.ensure_future(_count_waiters(url, held))
        try:
            yield held
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await tx.rollback()
    finally:
        await conn.close()


async def _count_waiters(url: str, held: HeldLock) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        while True:
            waiting = await conn.fetchval(WAITING_ON_LOCKS, database_of(url))
            held.max_waiting = max(held.max_waiting, waiting)
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
