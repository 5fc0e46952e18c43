"""The scheduler's in-memory copy of serialized DAGs, refreshed by hash.

Every tick needs task settings (trigger rules, retries, limits); reading the
JSON from the database each time would make query cost grow with DAG size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.serialized import SerializedDag
from miniflow.store import dags as store_dags


@dataclass(frozen=True, slots=True)
class CachedDag:
    dag: SerializedDag
    dag_hash: str
    is_paused: bool


class DagCache:
    def __init__(self) -> None:
        self._dags: dict[str, CachedDag] = {}

    def invalidate(self, dag_ids: Iterable[str] | None = None) -> None:
        if dag_ids is None:
            self._dags.clear()
        else:
            for dag_id in dag_ids:
                self._dags.pop(dag_id, None)

    async def load(self, session: AsyncSession, dag_ids: Iterable[str]) -> dict[str, CachedDag]:
        wanted = set(dag_ids)
        missing = [d for d in wanted if d not in self._dags]
        if missing:
            for dag_id, row in (await store_dags.dags_by_id(session, missing)).items():
                self._dags[dag_id] = CachedDag(
                    row.serialized,  # type: ignore[arg-type]
                    row.dag_hash,
                    row.is_paused,
                )
        return {d: self._dags[d] for d in wanted if d in self._dags}

    def get(self, dag_id: str) -> CachedDag | None:
        return self._dags.get(dag_id)
