"""The scheduler's in-memory copy of DAG versions, keyed by content hash.

Every tick needs task settings (trigger rules, retries, limits); reading the
JSON from the database each time would make query cost grow with DAG size.

A version never changes once stored, and a run never changes version, so
nothing here can go stale: whoever parsed a file (this scheduler, a CLI
command, another scheduler), a run's version is looked up by the run's hash
and loaded from the database when missing. That is the whole point: an entry
keyed by dag_id had to be invalidated by this process's own parse, and a
version written by another process left it silently stale.

Lookups never answer "no such DAG" because the cache is empty; only a version
missing from the database is absent from an answer (logged once).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.serialized import SerializedDag
from miniflow.store import dags as store_dags
from miniflow.store import runs as store_runs

log = logging.getLogger("miniflow.scheduler.dagcache")

MAX_VERSIONS = 512
"""Versions kept in memory; the least recently used beyond this are dropped (and reloaded
if a run still needs them)."""
MAX_RUNS = 20_000
"""Run → version pairs kept in memory (each a few dozen bytes)."""


@dataclass(frozen=True, slots=True)
class CachedDag:
    dag: SerializedDag
    dag_hash: str


class RunRef(Protocol):
    """What the cache needs of a run (`store.records.RunInfo` and `store.runs.RunVersion`
    are ones)."""

    @property
    def id(self) -> int: ...
    @property
    def dag_id(self) -> str: ...
    @property
    def dag_hash(self) -> str | None: ...


class DagCache:
    def __init__(self, *, max_versions: int = MAX_VERSIONS, max_runs: int = MAX_RUNS) -> None:
        self._versions: OrderedDict[str, CachedDag] = OrderedDict()
        self._run_hashes: OrderedDict[int, str] = OrderedDict()
        self._max_versions = max_versions
        self._max_runs = max_runs
        self._missing_logged: set[str] = set()

    def invalidate(self, dag_ids: Iterable[str] | None = None) -> None:
        """Forget the versions of these DAGs (all with None) to free memory.

        Never needed for correctness (a version is immutable); a run that still uses
        a forgotten version reloads it on its next lookup.
        """
        if dag_ids is None:
            self._versions.clear()
            return
        wanted = set(dag_ids)
        for digest in [h for h, c in self._versions.items() if c.dag["dag_id"] in wanted]:
            del self._versions[digest]

    def get(self, dag_hash: str) -> CachedDag | None:
        """The version if it is in memory (no database access)."""
        entry = self._versions.get(dag_hash)
        if entry is not None:
            self._versions.move_to_end(dag_hash)
        return entry

    async def load(self, session: AsyncSession, hashes: Iterable[str]) -> dict[str, CachedDag]:
        """The versions named by `hashes`, from memory or the database."""
        wanted = set(hashes)
        found = {h: e for h in wanted if (e := self.get(h)) is not None}
        missing = sorted(wanted - set(found))
        if missing:
            for digest, serialized in (await store_dags.get_versions(session, missing)).items():
                found[digest] = self._remember(digest, serialized)
            for digest in missing:
                if digest not in found and digest not in self._missing_logged:
                    self._missing_logged.add(digest)
                    log.error(
                        "DAG version %s is not in the database: its runs cannot go on", digest
                    )
        return found

    async def for_runs(self, session: AsyncSession, runs: Iterable[RunRef]) -> dict[int, CachedDag]:
        """run pk → the version the run was created with.

        A run without a recorded version (older than versions) gets its DAG's current
        one, looked up each time rather than remembered.
        """
        runs = list(runs)
        legacy = sorted({r.dag_id for r in runs if r.dag_hash is None})
        current = await store_dags.current_hashes(session, legacy) if legacy else {}
        hashes: dict[int, str] = {}
        for run in runs:
            if run.dag_hash is not None:
                hashes[run.id] = run.dag_hash
                self._remember_run(run.id, run.dag_hash)
            elif run.dag_id in current:
                hashes[run.id] = current[run.dag_id]
        versions = await self.load(session, hashes.values())
        return {pk: versions[h] for pk, h in hashes.items() if h in versions}

    async def for_run_pks(self, session: AsyncSession, pks: Iterable[int]) -> dict[int, CachedDag]:
        """Like `for_runs`, for runs known only by pk (their version is read if not known)."""
        pks = set(pks)
        known = {pk: h for pk in pks if (h := self._run_hashes.get(pk)) is not None}
        refs: list[RunRef] = [store_runs.RunVersion(pk, "", h) for pk, h in known.items()]
        unknown = sorted(pks - set(known))
        if unknown:
            refs += await store_runs.versions_of(session, unknown)
        return await self.for_runs(session, refs)

    def _remember(self, digest: str, serialized: SerializedDag) -> CachedDag:
        entry = CachedDag(serialized, digest)
        self._versions[digest] = entry
        while len(self._versions) > self._max_versions:
            self._versions.popitem(last=False)
        return entry

    def _remember_run(self, pk: int, digest: str) -> None:
        self._run_hashes[pk] = digest
        self._run_hashes.move_to_end(pk)
        while len(self._run_hashes) > self._max_runs:
            self._run_hashes.popitem(last=False)
