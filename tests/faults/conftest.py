"""Fixtures of the fault suite: one `Harness` per test, torn down whatever happened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.dbs import PostgresDatabases
from tests.faults.harness import Harness, harness_engine


@pytest.fixture
async def harness(
    postgres_dbs: PostgresDatabases, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Harness]:
    """A cloned Postgres database and a tmp folder; every process killed and reaped after."""
    url = await postgres_dbs.clone()
    engine = harness_engine(url)
    h = Harness(request.node.name, url, tmp_path, engine)
    try:
        yield h
    finally:
        try:
            await h.stop_watching()
            h.cleanup()
        finally:
            await engine.dispose()
