"""Create, upgrade and check the schema through Alembic.

`upgrade` is what `miniflow db upgrade` runs. `check` is run by everything else
at start-up, so an unmigrated database, an old one, or one written by a newer
miniflow gives a clear instruction instead of a failing query later.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.errors import SchemaError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x6D66_4D49_4752  # "mfMIGR": an advisory key of its own (see sanity_lock)

VERSION_TABLE = "alembic_version"
_READ_VERSION = text(f"SELECT version_num FROM {VERSION_TABLE}")

HEAD = "0005_turns"
"""The newest revision, as Alembic finds it (a test holds the two equal): `check` on a
current database reads one row and never imports Alembic, whose import and reading of
the migration scripts cost every command and every scheduler start ~0.1 s of CPU."""


def _alembic_config(connection: Any = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


async def upgrade(engine: AsyncEngine) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; returns (before, after).

    On PostgreSQL the whole upgrade holds a transaction-level advisory lock, and reads
    the revision it starts from only once it has the lock: concurrent upgrades (a
    migration Job retried beside a manual `miniflow db upgrade`) run one after the
    other, and the later ones find the schema current instead of racing Alembic into
    duplicate tables. The lock goes with the transaction, so a killed upgrade frees it.
    """

    from alembic import command

    def run(sync_conn: Any) -> None:
        command.upgrade(_alembic_config(sync_conn), "head")

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        before = await conn.run_sync(_revision_of)
        _refuse_unknown(before)
        await conn.run_sync(run)
    return before, head_revision()


def _revision_of(sync_conn: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    revision: str | None = MigrationContext.configure(sync_conn).get_current_revision()
    return revision


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision recorded in Alembic's own table (None: no such table), read without
    importing Alembic."""
    async with engine.connect() as conn:
        if not await conn.run_sync(lambda sync: inspect(sync).has_table(VERSION_TABLE)):
            return None
        rows = (await conn.execute(_READ_VERSION)).scalars().all()
    if len(rows) > 1:
        raise SchemaError(f"the database records several schema revisions ({', '.join(rows)})")
    return str(rows[0]) if rows else None


def _refuse_unknown(revision: str | None) -> None:
    if revision is None:
        return
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if revision not in known:
        raise SchemaError(
            f"the database schema is at revision {revision}, which this miniflow does not know: "
            "it was written by a newer miniflow; upgrade miniflow"
        )


async def check(engine: AsyncEngine) -> None:
    """Raise SchemaError unless the schema is exactly at this code's head revision."""
    revision = await current_revision(engine)
    if revision == HEAD:
        return  # the usual case: no Alembic import, no reading of its scripts
    if revision is None:
        raise SchemaError("the database has no miniflow schema: run `miniflow db upgrade`")
    _refuse_unknown(revision)
    raise SchemaError(
        f"the database schema is at revision {revision}, older than this miniflow "
        f"({HEAD}): run `miniflow db upgrade`"
    )
