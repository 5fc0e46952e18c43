"""Test databases: one Postgres database per test run (a migrated template cloned per test)
and a fresh SQLite file per test. Both are real; nothing about the database is mocked."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import asyncpg

PG_ADMIN_DSN = os.environ.get(
    "MINIFLOW_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_BASE_URL = os.environ.get("MINIFLOW_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432")


DROP_CONCURRENCY = 32
"""Databases dropped at once at the end (well under the server's 100 connections)."""


class PostgresDatabases:
    """Creates a migrated template database once, clones it per test, drops all at the end."""

    def __init__(self) -> None:
        self.prefix = f"mftest_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.template = f"{self.prefix}_tmpl"
        self.created: list[str] = []

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def setup(self) -> None:
        from miniflow.store import engine as store_engine
        from miniflow.store import schema

        await self._admin(f'CREATE DATABASE "{self.template}"')
        self.created.append(self.template)
        engine = store_engine.create_engine(f"{PG_BASE_URL}/{self.template}")
        try:
            await schema.upgrade(engine)
        finally:
            await engine.dispose()

    async def clone(self, migrated: bool = True) -> str:
        name = f"{self.prefix}_{len(self.created)}"
        if migrated:
            await self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        else:
            await self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return f"{PG_BASE_URL}/{name}"

    async def teardown(self) -> None:
        # All at once: each DROP DATABASE waits for a checkpoint, and concurrent ones share
        # it (measured: 0.43 s per drop one after another, 0.02 s with 40 at a time).
        limit = asyncio.Semaphore(DROP_CONCURRENCY)

        async def drop(name: str) -> None:
            async with limit:
                await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        results = await asyncio.gather(*(drop(n) for n in self.created), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'miniflow.db'}"


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]
