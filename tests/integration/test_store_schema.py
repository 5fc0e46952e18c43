"""Schema creation and checks on both backends."""

from __future__ import annotations

import asyncio
import os
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest
from sqlalchemy import text

from miniflow.errors import DatabaseUnavailable, SchemaError
from miniflow.store import engine as store_engine
from miniflow.store import schema
from tests.dbs import PostgresDatabases, sqlite_url


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    dbs: PostgresDatabases = request.getfixturevalue("postgres_dbs")
    return await dbs.clone(migrated=False)


async def test_check_refuses_unmigrated_then_upgrade_creates_schema(empty_url: str) -> None:
    eng = store_engine.create_engine(empty_url)
    try:
        with pytest.raises(SchemaError, match="miniflow db upgrade"):
            await schema.check(eng)
        before, after = await schema.upgrade(eng)
        assert before is None and after == schema.head_revision()
        await schema.check(eng)
        again = await schema.upgrade(eng)
        assert again == (after, after)
    finally:
        await eng.dispose()


async def test_check_refuses_newer_schema(db_url: str) -> None:
    eng = store_engine.create_engine(db_url)
    try:
        async with eng.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
        with pytest.raises(SchemaError, match="newer miniflow"):
            await schema.check(eng)
        with pytest.raises(SchemaError, match="newer miniflow"):
            await schema.upgrade(eng)
    finally:
        await eng.dispose()


async def test_unreachable_database_is_one_clear_error() -> None:
    eng = store_engine.create_engine("postgresql+asyncpg://bob:secret@127.0.0.1:1/nope")
    try:
        with pytest.raises(DatabaseUnavailable) as info:
            await store_engine.check_connection(eng, timeout=5)
    finally:
        await eng.dispose()
    message = str(info.value)
    assert "127.0.0.1:1/nope" in message and "secret" not in message


async def test_sqlite_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    eng = store_engine.create_engine(sqlite_url(tmp_path))
    try:
        async with eng.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await eng.dispose()


async def test_concurrent_upgrades_of_a_fresh_postgres_database_do_not_race(
    postgres_dbs: PostgresDatabases, tmp_path: Path
) -> None:
    """Several `miniflow db upgrade` at once (a rollout's migration Job beside a manual
    run, say): one migrates, the others wait for it and find the schema current."""
    url = await postgres_dbs.clone(migrated=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIFLOW_")}
    env.update(MINIFLOW_HOME=str(tmp_path), MINIFLOW_DATABASE_URL=url)
    miniflow = str(Path(sys.executable).with_name("miniflow"))
    procs = [
        await asyncio.create_subprocess_exec(
            miniflow, "db", "upgrade", env=env, stdout=PIPE, stderr=PIPE
        )
        for _ in range(4)
    ]
    outputs = [await p.communicate() for p in procs]
    messages = [
        (p.returncode, out.decode() + err.decode())
        for p, (out, err) in zip(procs, outputs, strict=True)
    ]
    assert all(code == 0 for code, _ in messages), messages
    head = schema.head_revision()
    assert sum(f"schema upgraded empty -> {head}" in m for _, m in messages) == 1, messages
    assert sum(f"schema already at {head}" in m for _, m in messages) == 3, messages
    eng = store_engine.create_engine(url)
    try:
        await schema.check(eng)
    finally:
        await eng.dispose()


def test_the_head_check_s_revision_is_alembic_s_head() -> None:
    """A new migration must move `schema.HEAD` along, or `check` would refuse its schema."""
    assert schema.HEAD == schema.head_revision()


async def test_checking_a_current_schema_does_not_import_alembic(db_url: str) -> None:
    """Every command and scheduler start checks the schema: on a current database that is
    one row read, not Alembic's import and its reading of every migration script."""
    code = (
        "import asyncio, sys\n"
        "from miniflow.store import engine, schema\n"
        "async def main():\n"
        f"    eng = engine.create_engine({db_url!r})\n"
        "    await schema.check(eng)\n"
        "    await eng.dispose()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "[]", out.decode()
