"""What the benchmark scripts share: the local PostgreSQL they create databases in."""

from __future__ import annotations

import os

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
