"""DAG rows, parsed files and import errors: what the parse loop writes.

A file that breaks keeps its DAGs' last good serialized version, flagged with
`has_import_error`, so a typo in production never stops running DAGs.
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

from miniflow.errors import NotFound
from miniflow.serialized import SerializedDag
from miniflow.store.models import Dag, DagFile, ImportErrorRow


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """One parsed file as the store needs it (mirrors parsing's FileResult)."""

    fileloc: str
    mtime_ns: int
    size: int
    sha256: str
    dags: Sequence[SerializedDag]
    error: str | None


def dag_hash(serialized: SerializedDag) -> str:
    return hashlib.sha256(json.dumps(serialized, sort_keys=True).encode()).hexdigest()


async def known_files(
    session: AsyncSession,
) -> tuple[dict[str, tuple[int, int, str]], dict[str, str]]:
    """The parser's memory: {fileloc: (mtime_ns, size, sha256)} and {dag_id: owning fileloc}."""
    files = {
        row.fileloc: (row.mtime_ns, row.size, row.sha256)
        for row in (await session.execute(select(DagFile))).scalars()
    }
    owners = {
        dag_id: fileloc
        for dag_id, fileloc in (
            await session.execute(select(Dag.dag_id, Dag.fileloc).where(Dag.is_active))
        ).all()
    }
    return files, owners


async def apply_parse(
    session: AsyncSession, parsed: Sequence[ParsedFile], removed: Sequence[str], now: datetime
) -> list[str]:
    """Record parse results; returns the dag_ids whose definition changed."""
    changed: list[str] = []
    for item in parsed:
        changed += await _apply_file(session, item, now)
    for fileloc in removed:
        await session.execute(update(Dag).where(Dag.fileloc == fileloc).values(is_active=False))
        await session.execute(delete(DagFile).where(DagFile.fileloc == fileloc))
        await session.execute(delete(ImportErrorRow).where(ImportErrorRow.fileloc == fileloc))
    return changed


async def _apply_file(session: AsyncSession, item: ParsedFile, now: datetime) -> list[str]:
    changed: list[str] = []
    ids = [d["dag_id"] for d in item.dags]
    existing = {
        row.dag_id: row
        for row in (
            await session.execute(
                select(Dag).where((Dag.fileloc == item.fileloc) | Dag.dag_id.in_(ids))
            )
        ).scalars()
    }
    for serialized in item.dags:
        digest = dag_hash(serialized)
        row = existing.get(serialized["dag_id"])
        if row is None:
            session.add(
                Dag(
                    dag_id=serialized["dag_id"],
                    fileloc=item.fileloc,
                    serialized=dict(serialized),
                    dag_hash=digest,
                    schedule=serialized["schedule"],
                    is_paused=False,
                    is_active=True,
                    has_import_error=item.error is not None,
                    last_parsed_at=now,
                )
            )
            changed.append(serialized["dag_id"])
            continue
        if row.dag_hash != digest or not row.is_active:
            changed.append(row.dag_id)
        row.fileloc = item.fileloc
        row.serialized = dict(serialized)
        row.dag_hash = digest
        row.schedule = serialized["schedule"]
        row.is_active = True
        row.has_import_error = item.error is not None
        row.last_parsed_at = now
    stale = [r for r in existing.values() if r.fileloc == item.fileloc and r.dag_id not in ids]
    for row in stale:
        if item.error is not None and not item.dags:
            row.has_import_error = True  # broken file: keep the last good version, flagged
        else:
            row.is_active = False  # the file no longer defines it
    await _set_error(session, item.fileloc, item.error, now)
    file_row = await session.get(DagFile, item.fileloc)
    dag_ids: dict[str, Any] = {"ids": ids}
    if file_row is None:
        session.add(
            DagFile(
                fileloc=item.fileloc,
                mtime_ns=item.mtime_ns,
                size=item.size,
                sha256=item.sha256,
                dag_ids=dag_ids,
                last_parsed_at=now,
            )
        )
    else:
        file_row.mtime_ns, file_row.size, file_row.sha256 = item.mtime_ns, item.size, item.sha256
        file_row.dag_ids, file_row.last_parsed_at = dag_ids, now
    await session.flush()
    return changed


async def _set_error(session: AsyncSession, fileloc: str, error: str | None, now: datetime) -> None:
    row = await session.get(ImportErrorRow, fileloc)
    if error is None:
        if row is not None:
            await session.delete(row)
    elif row is None:
        session.add(ImportErrorRow(fileloc=fileloc, error=error, at=now))
    else:
        row.error, row.at = error, now


async def list_dags(session: AsyncSession, *, include_inactive: bool = False) -> list[Dag]:
    query = select(Dag).order_by(Dag.dag_id)
    if not include_inactive:
        query = query.where(Dag.is_active)
    return list((await session.execute(query)).scalars())


async def get_dag(session: AsyncSession, dag_id: str) -> Dag:
    row = await session.get(Dag, dag_id)
    if row is None or not row.is_active:
        raise NotFound(f"no DAG {dag_id!r} (see `miniflow dags list` and `miniflow dags errors`)")
    return row


async def import_errors(session: AsyncSession) -> list[ImportErrorRow]:
    return list(
        (await session.execute(select(ImportErrorRow).order_by(ImportErrorRow.fileloc))).scalars()
    )


async def set_paused(session: AsyncSession, dag_id: str, paused: bool) -> None:
    row = await get_dag(session, dag_id)
    row.is_paused = paused


async def schedulable_dags(session: AsyncSession) -> list[Dag]:
    """Active, unpaused DAGs that have a schedule."""
    query = select(Dag).where(Dag.is_active, ~Dag.is_paused, Dag.schedule.is_not(None))
    return list((await session.execute(query)).scalars())


async def dags_by_id(session: AsyncSession, dag_ids: Sequence[str]) -> dict[str, Dag]:
    if not dag_ids:
        return {}
    rows = (await session.execute(select(Dag).where(Dag.dag_id.in_(list(dag_ids))))).scalars()
    return {row.dag_id: row for row in rows}


async def set_next_interval(
    session: AsyncSession, dag_id: str, start: datetime | None, end: datetime | None
) -> None:
    await session.execute(
        update(Dag)
        .where(Dag.dag_id == dag_id)
        .values(next_interval_start=start, next_interval_end=end)
    )
