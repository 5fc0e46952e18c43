"""The parse loop's glue: scan the DAGs folder, store what changed.

The scanner's memory (file fingerprints and dag_id owners) is loaded from the
database on first use, so a restarted scheduler or a one-shot CLI command does
not re-import unchanged files.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from miniflow.parsing.scanner import DagFolderScanner
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine

log = logging.getLogger("miniflow.scheduler.parse")


class DagParser:
    def __init__(self, dags_folder: Path, *, timeout: float = 30.0) -> None:
        self.dags_folder = Path(dags_folder)
        self.timeout = timeout
        self._scanner: DagFolderScanner | None = None

    async def parse_once(
        self, sessions: async_sessionmaker[AsyncSession], now: datetime
    ) -> list[str]:
        """Parse new and changed files; returns the dag_ids whose definition changed."""
        if self._scanner is None:
            async with store_engine.transaction(sessions) as session:
                known, owners = await store_dags.known_files(session)
            self._scanner = DagFolderScanner(
                self.dags_folder, known=known, owners=owners, timeout=self.timeout
            )
        if not self.dags_folder.is_dir():
            log.warning("DAGs folder %s does not exist", self.dags_folder)
            return []
        scan = await self._scanner.scan()
        if not scan.results and not scan.removed:
            return []
        parsed = [
            store_dags.ParsedFile(r.fileloc, r.mtime_ns, r.size, r.sha256, r.dags, r.error)
            for r in scan.results
        ]
        for item in parsed:
            if item.error:
                log.warning(
                    "import error in %s: %s", item.fileloc, item.error.strip().splitlines()[-1]
                )
        async with store_engine.transaction(sessions) as session:
            changed = await store_dags.apply_parse(session, parsed, scan.removed, now)
        log.info(
            "parsed %d file(s) in %.2fs, %d removed, %d DAG(s) changed",
            len(parsed),
            scan.duration,
            len(scan.removed),
            len(changed),
        )
        return changed
