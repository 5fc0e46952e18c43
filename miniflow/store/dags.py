"""DAG rows, DAG versions, parsed files and import errors: what the parse loop writes.

Every serialized DAG is stored once in `dag_version`, keyed by its content
hash; `dag.dag_hash` names the current one and each run keeps the one it was
created with, so an edited file changes new runs only. A file that breaks
keeps its DAGs' last good version, flagged with `has_import_error`, so a typo
in production never stops running DAGs.

Several processes parse at once (the scheduler, every CLI command that
parses, other schedulers): every write here is an insert-if-absent or an
upsert, so two parses of the same files both succeed, whoever commits first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.serialized import SerializedDag, readable
from miniflow.errors import NotFound
from miniflow.store import wakeup
from miniflow.store.engine import conflict_insert
from miniflow.store.engine import rowcount as store_rowcount
from miniflow.store.models import Base, Dag, DagFile, DagVersion, ImportErrorRow
from miniflow.store.records import DagRecord, ImportErrorRecord, build, columns, table


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """One parsed file as the store needs it (mirrors parsing's FileResult)."""

    fileloc: str
    mtime_ns: int
    size: int
    sha256: str
    dags: Sequence[SerializedDag]
    error: str | None


@dataclass(frozen=True, slots=True)
class KnownFiles:
    """The parser's memory, as stored: what it last parsed of each file, and when."""

    files: dict[str, tuple[int, int, str]]
    """fileloc -> (mtime_ns, size, sha256)."""
    parsed_at: dict[str, datetime]
    """fileloc -> when it was last parsed (by any process)."""
    owners: dict[str, str]
    """dag_id -> the fileloc that defines it."""


def dag_hash(serialized: SerializedDag) -> str:
    return hashlib.sha256(json.dumps(serialized, sort_keys=True).encode()).hexdigest()


def _insert(session: AsyncSession, model: type[Base]) -> Any:
    """An INSERT with ON CONFLICT support for the session's database."""
    return conflict_insert(session, model)


async def save_versions(
    session: AsyncSession, versions: Sequence[tuple[str, SerializedDag]], now: datetime
) -> None:
    """Store (hash, serialized) versions not stored yet; a known hash writes nothing."""
    if not versions:
        return
    rows = [
        {"dag_hash": h, "dag_id": d["dag_id"], "serialized": dict(d), "created_at": now}
        for h, d in dict(versions).items()
    ]
    await session.execute(_insert(session, DagVersion).values(rows).on_conflict_do_nothing())


async def get_versions(session: AsyncSession, hashes: Sequence[str]) -> dict[str, SerializedDag]:
    """The stored versions among `hashes` (an unknown hash is simply absent)."""
    if not hashes:
        return {}
    query = select(DagVersion.dag_hash, DagVersion.serialized).where(
        DagVersion.dag_hash.in_(sorted(set(hashes)))
    )
    return {h: readable(serialized) for h, serialized in (await session.execute(query)).all()}


async def current_hashes(session: AsyncSession, dag_ids: Sequence[str]) -> dict[str, str]:
    """The current version of each DAG (runs that predate versions fall back to it)."""
    if not dag_ids:
        return {}
    query = select(Dag.dag_id, Dag.dag_hash).where(Dag.dag_id.in_(sorted(set(dag_ids))))
    return {dag_id: h for dag_id, h in (await session.execute(query)).all()}


async def known_files(session: AsyncSession) -> KnownFiles:
    """What the parser last saw of each file, and which file owns each active dag_id."""
    files: dict[str, tuple[int, int, str]] = {}
    parsed_at: dict[str, datetime] = {}
    for row in (await session.execute(select(DagFile))).scalars():
        files[row.fileloc] = (row.mtime_ns, row.size, row.sha256)
        parsed_at[row.fileloc] = row.last_parsed_at
    owners = {
        dag_id: fileloc
        for dag_id, fileloc in (
            await session.execute(select(Dag.dag_id, Dag.fileloc).where(Dag.is_active))
        ).all()
    }
    return KnownFiles(files, parsed_at, owners)


async def apply_parse(
    session: AsyncSession, parsed: Sequence[ParsedFile], removed: Sequence[str], now: datetime
) -> list[str]:
    """Record parse results; returns the dag_ids whose definition changed.

    A DAG parsed again to the same hash writes nothing (no new version, its row
    untouched) and is not "changed". Rows are written table by table, each in key
    order (versions by hash, DAGs by dag_id, files by fileloc), so two transactions
    writing the same rows (concurrent parses; run creation, which updates DAG rows
    by dag_id) wait for each other instead of deadlocking.
    """
    filelocs = [item.fileloc for item in parsed] + list(removed)
    ids = [d["dag_id"] for item in parsed for d in item.dags]
    # Plain columns, not ORM objects: rows are written with upserts that tolerate a
    # concurrent parse of the same files, never by flushing loaded objects.
    existing = {
        row.dag_id: row
        for row in (
            await session.execute(
                select(
                    Dag.dag_id, Dag.fileloc, Dag.dag_hash, Dag.is_active, Dag.has_import_error
                ).where(Dag.fileloc.in_(filelocs) | Dag.dag_id.in_(ids))
            )
        ).all()
    }
    versions: dict[str, SerializedDag] = {}
    upserts: dict[str, dict[str, Any]] = {}  # dag_id -> every column of its new version
    updates: dict[str, dict[str, Any]] = {}  # dag_id -> flags of a DAG its file lost
    changed: list[str] = []
    for item in parsed:
        broken = item.error is not None
        for serialized in item.dags:
            dag_id, digest = serialized["dag_id"], dag_hash(serialized)
            versions[digest] = serialized
            row = existing.get(dag_id)
            state = (digest, True, item.fileloc, broken)
            if (
                row is not None
                and (row.dag_hash, row.is_active, row.fileloc, row.has_import_error) == state
            ):
                continue  # the same version, still here: nothing to write
            if row is None or row.dag_hash != digest or not row.is_active:
                changed.append(dag_id)
            upserts[dag_id] = {
                "fileloc": item.fileloc,
                "serialized": dict(serialized),
                "dag_hash": digest,
                "schedule": serialized["schedule"],
                "is_active": True,
                "has_import_error": broken,
                "last_parsed_at": now,
            }
        defined = {d["dag_id"] for d in item.dags}
        for row in existing.values():
            if row.fileloc == item.fileloc and row.dag_id not in defined | set(upserts):
                # A broken file keeps the last good version of its DAGs, flagged; a file
                # that parsed and no longer defines a DAG deactivates it.
                if broken and not item.dags:
                    if not row.has_import_error:
                        updates[row.dag_id] = {"has_import_error": True}
                elif row.is_active:
                    updates[row.dag_id] = {"is_active": False}
    gone = set(removed)
    for row in existing.values():
        if row.fileloc in gone and row.dag_id not in upserts and row.is_active:
            updates[row.dag_id] = {"is_active": False}
    await save_versions(session, sorted(versions.items()), now)
    for dag_id in sorted(set(upserts) | set(updates)):
        if dag_id in upserts:
            values = upserts[dag_id]
            # is_paused and next_interval_* are the DAG's own state: a new version keeps them.
            insert = _insert(session, Dag).values(dag_id=dag_id, is_paused=False, **values)
            statement = insert.on_conflict_do_update(index_elements=[Dag.dag_id], set_=values)
        else:
            statement = update(Dag).where(Dag.dag_id == dag_id).values(**updates[dag_id])
        await session.execute(statement)
    by_loc = {item.fileloc: item for item in parsed}
    for fileloc in sorted(set(by_loc) | gone):
        found = by_loc.get(fileloc)
        if found is None:
            await session.execute(delete(ImportErrorRow).where(ImportErrorRow.fileloc == fileloc))
            await session.execute(delete(DagFile).where(DagFile.fileloc == fileloc))
        else:
            await _set_error(session, fileloc, found.error, now)
            await _save_file(session, found, now)
    return changed


async def _save_file(session: AsyncSession, item: ParsedFile, now: datetime) -> None:
    values: dict[str, Any] = {
        "mtime_ns": item.mtime_ns,
        "size": item.size,
        "sha256": item.sha256,
        "dag_ids": {"ids": [d["dag_id"] for d in item.dags]},
        "last_parsed_at": now,
    }
    insert = _insert(session, DagFile).values(fileloc=item.fileloc, **values)
    await session.execute(
        insert.on_conflict_do_update(index_elements=[DagFile.fileloc], set_=values)
    )


async def _set_error(session: AsyncSession, fileloc: str, error: str | None, now: datetime) -> None:
    if error is None:
        await session.execute(delete(ImportErrorRow).where(ImportErrorRow.fileloc == fileloc))
        return
    values = {"error": error, "at": now}
    insert = _insert(session, ImportErrorRow).values(fileloc=fileloc, **values)
    await session.execute(
        insert.on_conflict_do_update(index_elements=[ImportErrorRow.fileloc], set_=values)
    )


async def list_dags(session: AsyncSession, *, include_inactive: bool = False) -> list[DagRecord]:
    c = table(DagRecord).c
    query = select(*columns(DagRecord)).order_by(c.dag_id)
    if not include_inactive:
        query = query.where(c.is_active)
    return build(DagRecord, await session.execute(query))


def _not_found(dag_id: str) -> NotFound:
    return NotFound(f"no DAG {dag_id!r} (see `miniflow dags list` and `miniflow dags errors`)")


async def get_dag(session: AsyncSession, dag_id: str) -> DagRecord:
    c = table(DagRecord).c
    query = select(*columns(DagRecord)).where(c.dag_id == dag_id, c.is_active)
    row = (await session.execute(query)).one_or_none()
    if row is None:
        raise _not_found(dag_id)
    return DagRecord(*row)


async def import_errors(session: AsyncSession) -> list[ImportErrorRecord]:
    query = select(*columns(ImportErrorRecord)).order_by(table(ImportErrorRecord).c.fileloc)
    return build(ImportErrorRecord, await session.execute(query))


async def set_paused(session: AsyncSession, dag_id: str, paused: bool) -> None:
    result = await session.execute(
        update(Dag)
        .execution_options(synchronize_session=False)
        .where(Dag.dag_id == dag_id, Dag.is_active)
        .values(is_paused=paused)
    )
    if not store_rowcount(result):
        raise _not_found(dag_id)
    if not paused:
        await wakeup.announce(session, "dag")


async def schedulable_dags(session: AsyncSession) -> list[DagRecord]:
    """Active, unpaused DAGs that have a schedule, by dag_id (the order rows are written in)."""
    c = table(DagRecord).c
    query = (
        select(*columns(DagRecord))
        .where(c.is_active, ~c.is_paused, c.schedule.is_not(None))
        .order_by(c.dag_id)
    )
    return build(DagRecord, await session.execute(query))


async def paused(session: AsyncSession, dag_ids: Sequence[str]) -> set[str]:
    """The paused DAGs among `dag_ids`."""
    if not dag_ids:
        return set()
    query = select(Dag.dag_id).where(Dag.dag_id.in_(sorted(set(dag_ids))), Dag.is_paused)
    return set((await session.execute(query)).scalars())


async def set_next_interval(
    session: AsyncSession, dag_id: str, start: datetime | None, end: datetime | None
) -> None:
    await session.execute(
        update(Dag)
        .where(Dag.dag_id == dag_id)
        .values(next_interval_start=start, next_interval_end=end)
    )
