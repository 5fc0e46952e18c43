"""The parse loop's glue: scan the DAGs folder, store what changed.

The scanner's memory (file fingerprints, when each file was last parsed, and
dag_id owners) is loaded from the database on first use, so a restarted
scheduler or a one-shot CLI command does not re-import unchanged files, and a
file last parsed longer than `reparse_interval` ago is parsed again even
across restarts (an edited helper module or a newly installed package).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from miniflow.errors import NotFound
from miniflow.parsing.child import fileloc_of
from miniflow.parsing.scanner import DagFolderScanner, ScanResult
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine

log = logging.getLogger("miniflow.scheduler.parse")


@dataclass(frozen=True, slots=True)
class ParseReport:
    """What one parse did."""

    changed: list[str] = field(default_factory=list)
    """dag_ids whose definition changed (a new version, or active again)."""
    files: list[store_dags.ParsedFile] = field(default_factory=list)
    """Every file parsed, sorted by fileloc, with its DAGs or its import error."""
    removed: list[str] = field(default_factory=list)
    """Files gone since the last scan."""


class DagParser:
    def __init__(
        self, dags_folder: Path, *, timeout: float = 30.0, reparse_interval: float | None = None
    ) -> None:
        self.dags_folder = Path(dags_folder)
        self.timeout = timeout
        self.reparse_interval = reparse_interval
        self._scanner: DagFolderScanner | None = None

    async def parse_once(
        self, sessions: async_sessionmaker[AsyncSession], now: datetime
    ) -> list[str]:
        """Parse new and changed files (and those due for a re-parse); returns the
        dag_ids whose definition changed."""
        return (await self.parse(sessions, now)).changed

    def fileloc(self, path: str | Path) -> str:
        """The fileloc of a DAG file named relative to the DAGs folder, or by any path."""
        for candidate in (self.dags_folder / path, Path(path)):
            if candidate.is_file():
                fileloc = fileloc_of(self.dags_folder, candidate)
                if not fileloc.startswith("../"):
                    return fileloc
        raise NotFound(f"no file {str(path)!r} in the DAGs folder {self.dags_folder}")

    async def parse(
        self,
        sessions: async_sessionmaker[AsyncSession],
        now: datetime,
        *,
        force: bool | Collection[str] = False,
    ) -> ParseReport:
        """One scan; `force` parses these filelocs (True: every file) even if unchanged."""
        scanner = await self._scanner_for(sessions)
        if not self.dags_folder.is_dir():
            log.warning("DAGs folder %s does not exist", self.dags_folder)
            return ParseReport()
        return await self._store(sessions, now, await scanner.scan(now=now, force=force))

    async def parse_dag_file(
        self, sessions: async_sessionmaker[AsyncSession], now: datetime, dag_id: str
    ) -> ParseReport:
        """Bring one DAG up to date: its own file parsed again only if it changed, the rest
        of the folder left alone (`dags trigger` of a known DAG); the whole folder when the
        DAG is new, or its file is gone."""
        scanner = await self._scanner_for(sessions)
        fileloc = scanner.owners.get(dag_id)
        scan = await scanner.scan_one(fileloc, now=now) if fileloc is not None else None
        if scan is None:
            return await self.parse(sessions, now)
        report = await self._store(sessions, now, scan)
        if scan.results and not any(d["dag_id"] == dag_id for r in scan.results for d in r.dags):
            # Parsed, and it no longer defines the DAG (moved to another file, or the file
            # is broken now): what the folder says decides.
            return await self.parse(sessions, now)
        return report

    async def _scanner_for(self, sessions: async_sessionmaker[AsyncSession]) -> DagFolderScanner:
        if self._scanner is None:
            async with store_engine.transaction(sessions) as session:
                known = await store_dags.known_files(session)
            self._scanner = DagFolderScanner(
                self.dags_folder,
                known=known.files,
                owners=known.owners,
                parsed_at=known.parsed_at,
                reparse_interval=self.reparse_interval,
                timeout=self.timeout,
            )
        return self._scanner

    async def _store(
        self, sessions: async_sessionmaker[AsyncSession], now: datetime, scan: ScanResult
    ) -> ParseReport:
        if not scan.results and not scan.removed:
            return ParseReport()
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
        return ParseReport(changed, parsed, scan.removed)
