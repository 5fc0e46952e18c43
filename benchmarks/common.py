"""What the benchmark scripts share: the local PostgreSQL they create databases in."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

PG_ADMIN_DSN = os.environ.get(
    "MINIFLOW_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_BASE_URL = os.environ.get(
    "MINIFLOW_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432"
)


async def pg_admin(sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) on the maintenance database."""
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def sample_database(
    backend: str,
    prefix: str,
    folder: Path,
    *,
    before_drop: Callable[[str], Awaitable[None]] | None = None,
) -> AsyncIterator[AsyncEngine]:
    """The engine of a fresh, migrated database for one sample. Postgres: a database
    `{prefix}_{pid}_{random}`, dropped WITH (FORCE) once the engine is disposed, after
    `before_drop(its name)` (the engine's connections are closed by then: a backend
    flushes its table statistics as it exits); SQLite: `bench.db` in `folder`."""
    from miniflow.store import engine as store_engine

    db_name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    engine: AsyncEngine | None = None
    try:
        engine = store_engine.create_engine(await fresh_database(backend, folder, db_name))
        try:
            yield engine
        finally:
            await engine.dispose()
    finally:
        if backend == "postgres":
            if before_drop is not None and engine is not None:
                await before_drop(db_name)
            await pg_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


async def fresh_database(backend: str, tmp: Path, name: str) -> str:
    """A migrated, empty database; returns its URL (Postgres: create `name`)."""
    from miniflow.store import engine as store_engine
    from miniflow.store import schema

    if backend == "postgres":
        await pg_admin(f'CREATE DATABASE "{name}"')
        url = f"{PG_BASE_URL}/{name}"
    else:
        url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    engine = store_engine.create_engine(url)
    try:
        await schema.upgrade(engine)
    finally:
        await engine.dispose()
    return url


def drop_database(name: str) -> None:
    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def floor(total: int, width: int) -> float:
    """The physical floor of a local task: posix_spawn `true`, `width` at a time, exits
    awaited with pidfd readers (what the local launcher does, minus everything else)."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Queue[int] = asyncio.Queue()
    env = dict(os.environ)
    true = shutil.which("true") or "/bin/true"

    def start() -> None:
        pid = os.posix_spawn(true, ["true"], env, setsid=True)
        fd = os.pidfd_open(pid)

        def on_exit() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            os.waitpid(pid, 0)
            finished.put_nowait(pid)

        loop.add_reader(fd, on_exit)

    t0 = time.perf_counter()
    launched = 0
    for _ in range(min(width, total)):
        start()
        launched += 1
    for _ in range(total):
        await finished.get()
        if launched < total:
            start()
            launched += 1
    return time.perf_counter() - t0
