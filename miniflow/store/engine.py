"""Engine creation for PostgreSQL (asyncpg) and SQLite (aiosqlite).

SQLite gets WAL, foreign keys and `BEGIN IMMEDIATE` transactions: the worker
processes and the scheduler write to one file, and a deferred transaction that
later upgrades to a write lock fails at once with "database is locked" instead
of waiting for the busy timeout. Immediate transactions queue up properly.
"""

from __future__ import annotations

import asyncio
import importlib
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from sqlalchemy import event, text
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from miniflow.config import redact_url
from miniflow.errors import DatabaseUnavailable

SQLITE_BUSY_TIMEOUT_MS = 60_000


def load_driver(url: str) -> None:
    """Import the URL's SQLAlchemy dialect and its driver now (what `create_engine` and
    the first connection import otherwise); quietly nothing for a URL they reject."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError):
        pass  # create_engine reports it, where it is used


def create_engine(
    url: str,
    *,
    pool_size: int = 5,
    idle_transaction_timeout: float | None = None,
    application_name: str = "miniflow",
) -> AsyncEngine:
    """An AsyncEngine configured for miniflow's access pattern on either backend.

    `idle_transaction_timeout` (PostgreSQL, seconds): the server ends a session left idle
    inside a transaction that long. A scheduler frozen mid-transaction (SIGSTOP, a
    partitioned host) would otherwise keep its row and advisory locks (the claim lock
    among them) and stall every peer until it thaws. `application_name` (PostgreSQL): a
    scheduler's names its sessions for its peers to end them (`miniflow.store.fencing`)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    # No pre-ping: it costs a round trip per checkout (several per scheduler round); a
    # connection dropped by the server fails that round, which the daemon retries.
    settings = {"application_name": application_name}
    if idle_transaction_timeout is not None:
        ms = max(1, round(idle_transaction_timeout * 1000))
        settings["idle_in_transaction_session_timeout"] = str(ms)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args={"server_settings": settings},
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (the driver would defer it).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def check_connection(engine: AsyncEngine, *, timeout: float = 10.0) -> None:
    """Raise `DatabaseUnavailable` with one clear line if the database can't be reached."""
    safe = redact_url(str(engine.url.render_as_string(hide_password=False)))
    try:
        async with asyncio.timeout(timeout):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except TimeoutError as exc:
        raise DatabaseUnavailable(f"database {safe} did not answer within {timeout:g}s") from exc
    except (OperationalError, InterfaceError, DBAPIError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseUnavailable(f"cannot connect to database {safe}: {reason}") from exc


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session inside one transaction: committed on success, rolled back on error."""
    async with factory() as session, session.begin():
        yield session


@asynccontextmanager
async def one_statement(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for work that is one statement on PostgreSQL (atomic by itself): there it
    runs without a transaction around it (autocommit), one round trip instead of three
    (BEGIN, the statement, COMMIT), on the path of every task a chain launches. On
    SQLite, `transaction`."""
    bind = factory.kw["bind"]
    if bind.dialect.name != "postgresql":
        async with transaction(factory) as session:
            yield session
        return
    autocommit = _AUTOCOMMIT.get(bind)
    if autocommit is None:
        autocommit = _AUTOCOMMIT[bind] = bind.execution_options(isolation_level="AUTOCOMMIT")
    async with AsyncSession(autocommit, expire_on_commit=False) as session, session.begin():
        yield session


_AUTOCOMMIT: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE / DELETE / INSERT matched (`session.execute` is typed for SELECTs)."""
    return cast(CursorResult[Any], result).rowcount


def conflict_insert(session: AsyncSession, target: Any) -> Any:
    """An INSERT into `target` with the `ON CONFLICT` clauses of the session's database
    (`on_conflict_do_nothing`, `on_conflict_do_update`, `.excluded`).

    Imports only that database's dialect module, which its engine has loaded already:
    a worker on PostgreSQL never pays for SQLite's dialect, nor the embedded default
    for PostgreSQL's (tens of milliseconds of a cold worker start)."""
    return dialect_insert(session.get_bind().dialect.name, target)


def dialect_insert(dialect: str, target: Any) -> Any:
    """`conflict_insert` for the database named `dialect` (a statement built once)."""
    module = "postgresql" if dialect == "postgresql" else "sqlite"
    return importlib.import_module(f"sqlalchemy.dialects.{module}").insert(target)
