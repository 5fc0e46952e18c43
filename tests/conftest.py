"""Shared fixtures: real databases (SQLite file, Postgres clone) and migrated engines."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.dbs import PostgresDatabases, sqlite_url

# A suite started in the background by a non-interactive shell (as a CI runner may) has
# SIGINT ignored, and every process it spawns inherits that: a `miniflow` command under
# test then ignored the Ctrl-C a test sends it (it was SIGKILLed 15 s later instead).
# Children of a handler-installed process start with the default, as under a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = (
    ["tests.fakekube.fixtures"]
    if (Path(__file__).parent / "fakekube" / "fixtures.py").exists()
    else []
)


def _run_in_thread(coro: object) -> None:
    """asyncio.run in a thread: session fixtures may be first requested from a running loop."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


@pytest.fixture(scope="session", autouse=True)
def miniflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """MINIFLOW_HOME for the whole run: no test reads or writes the real ~/miniflow."""
    home = tmp_path_factory.mktemp("miniflow-home")
    before = os.environ.get("MINIFLOW_HOME")
    os.environ["MINIFLOW_HOME"] = str(home)
    try:
        yield home
    finally:
        if before is None:
            os.environ.pop("MINIFLOW_HOME", None)
        else:
            os.environ["MINIFLOW_HOME"] = before


@pytest.fixture(scope="session")
def postgres_dbs() -> Iterator[PostgresDatabases]:
    dbs = PostgresDatabases()
    _run_in_thread(dbs.setup())
    try:
        yield dbs
    finally:
        _run_in_thread(dbs.teardown())


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database URL on each backend."""
    if request.param == "sqlite":
        from miniflow.store import engine as store_engine
        from miniflow.store import schema

        url = sqlite_url(tmp_path)
        engine = store_engine.create_engine(url)
        try:
            await schema.upgrade(engine)
        finally:
            await engine.dispose()
        return url
    dbs: PostgresDatabases = request.getfixturevalue("postgres_dbs")
    return await dbs.clone()


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    from miniflow.store import engine as store_engine

    eng = store_engine.create_engine(db_url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def pg_engine(postgres_dbs: PostgresDatabases) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty PostgreSQL database, for what only PostgreSQL does (several
    schedulers, advisory locks)."""
    from miniflow.store import engine as store_engine

    eng = store_engine.create_engine(await postgres_dbs.clone())
    try:
        yield eng
    finally:
        await eng.dispose()
