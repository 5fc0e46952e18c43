"""Variables and connections in the database, and the synchronous backend DAG code uses.

The async functions serve the CLI. `DatabaseBackend` is what `miniflow.authoring.lookups`
calls when DAG code or a template reads a variable or a connection: user code is
synchronous and may run on an event loop's thread (templates render in the scheduler),
so each call runs its query on a thread of its own with a short-lived engine. Values
are never logged. On SQLite, reads use a plain deferred-read connection instead: the
store's connections begin with `BEGIN IMMEDIATE`, which would wait for a write
transaction that the blocked event loop of this very process holds (templates render
in the scheduler), until the busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.store.engine import create_engine, sessionmaker, transaction
from miniflow.store.engine import rowcount as store_rowcount
from miniflow.store.models import Connection, Variable
from miniflow.store.records import ConnectionRecord, VariableRecord, build, columns, table

T = TypeVar("T")

CONNECTION_FIELDS = (
    "conn_type", "host", "login", "password", "schema", "port", "extra", "description",
)  # fmt: skip


async def list_variables(session: AsyncSession) -> list[VariableRecord]:
    query = sa.select(*columns(VariableRecord)).order_by(table(VariableRecord).c.key)
    return build(VariableRecord, await session.execute(query))


async def get_variable(session: AsyncSession, key: str) -> VariableRecord | None:
    query = sa.select(*columns(VariableRecord)).where(table(VariableRecord).c.key == key)
    row = (await session.execute(query)).one_or_none()
    return None if row is None else VariableRecord(*row)


async def set_variable(
    session: AsyncSession, key: str, value: str, description: str | None = None
) -> None:
    row = await session.get(Variable, key)
    now = datetime.now(UTC)
    if row is None:
        session.add(Variable(key=key, value=value, description=description, updated_at=now))
    else:
        row.value, row.updated_at = value, now
        if description is not None:
            row.description = description


async def delete_variable(session: AsyncSession, key: str) -> bool:
    result = await session.execute(sa.delete(Variable).where(Variable.key == key))
    return bool(store_rowcount(result))


async def list_connections(session: AsyncSession) -> list[ConnectionRecord]:
    query = sa.select(*columns(ConnectionRecord)).order_by(table(ConnectionRecord).c.conn_id)
    return build(ConnectionRecord, await session.execute(query))


async def get_connection(session: AsyncSession, conn_id: str) -> ConnectionRecord | None:
    c = table(ConnectionRecord).c
    query = sa.select(*columns(ConnectionRecord)).where(c.conn_id == conn_id)
    row = (await session.execute(query)).one_or_none()
    return None if row is None else ConnectionRecord(*row)


async def set_connection(session: AsyncSession, conn_id: str, fields: dict[str, Any]) -> None:
    """Create or replace the connection `conn_id` with `fields` (`CONNECTION_FIELDS`)."""
    values = {name: fields.get(name) for name in CONNECTION_FIELDS}
    row = await session.get(Connection, conn_id)
    now = datetime.now(UTC)
    if row is None:
        session.add(Connection(conn_id=conn_id, updated_at=now, **values))
    else:
        for name, value in values.items():
            setattr(row, name, value)
        row.updated_at = now


async def delete_connection(session: AsyncSession, conn_id: str) -> bool:
    result = await session.execute(sa.delete(Connection).where(Connection.conn_id == conn_id))
    return bool(store_rowcount(result))


def connection_record(row: ConnectionRecord) -> dict[str, Any]:
    return {name: getattr(row, name) for name in CONNECTION_FIELDS}


class DatabaseBackend:
    """`miniflow.authoring.lookups.Backend` on miniflow's database.

    `database_url` is the URL itself, or a function returning it (resolved at the first
    lookup: a parse child that never reads a variable never loads its configuration).
    """

    def __init__(self, database_url: str | Callable[[], str]) -> None:
        self._url = database_url

    def _database_url(self) -> str:
        if callable(self._url):
            self._url = self._url()
        return self._url

    def _run(self, work: Callable[[AsyncSession], Coroutine[Any, Any, T]]) -> T:
        url = self._database_url()

        async def main() -> T:
            engine = create_engine(url, pool_size=1)
            try:
                async with transaction(sessionmaker(engine)) as session:
                    return await work(session)
            finally:
                await engine.dispose()

        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = asyncio.run(main())
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=target, name="miniflow lookup", daemon=True)
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def _sqlite_file(self) -> str | None:
        url = sa.engine.make_url(self._database_url())
        return url.database if url.get_backend_name() == "sqlite" and url.database else None

    @staticmethod
    def _sqlite_read(path: str, query: str, key: str) -> tuple[Any, ...] | None:
        import sqlite3  # here: a worker on PostgreSQL never needs it (its start-up time)

        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
            row = conn.execute(query, (key,)).fetchone()
        return None if row is None else tuple(row)

    def get_variable(self, key: str) -> str | None:
        path = self._sqlite_file()
        if path is not None:
            row = self._sqlite_read(path, "SELECT value FROM variable WHERE key = ?", key)
            return None if row is None else str(row[0])

        async def work(session: AsyncSession) -> str | None:
            row = await get_variable(session, key)
            return None if row is None else row.value

        return self._run(work)

    def set_variable(self, key: str, value: str, description: str | None) -> None:
        async def work(session: AsyncSession) -> None:
            await set_variable(session, key, value, description)

        self._run(work)

    def delete_variable(self, key: str) -> bool:
        async def work(session: AsyncSession) -> bool:
            return await delete_variable(session, key)

        return self._run(work)

    def get_connection(self, conn_id: str) -> dict[str, Any] | None:
        path = self._sqlite_file()
        if path is not None:
            query = f"SELECT {', '.join(CONNECTION_FIELDS)} FROM connection WHERE conn_id = ?"
            row = self._sqlite_read(path, query, conn_id)
            return None if row is None else dict(zip(CONNECTION_FIELDS, row, strict=True))

        async def work(session: AsyncSession) -> dict[str, Any] | None:
            row = await get_connection(session, conn_id)
            return None if row is None else connection_record(row)

        return self._run(work)
