"""Incremental scans of the DAGs folder: parse only what changed.

Why this module exists: the parse loop runs every few seconds over hundreds
of files, so a rescan with nothing changed must cost a stat per file, not an
import. A file is parsed at once when its (mtime, size) changed *and* its
content hash changed; a touched-but-identical file just has its known state
updated. A file's own bytes are not all it depends on (a helper module it
imports is edited, a missing package gets installed), so with a
`reparse_interval` every file is also parsed again once its last parse is
that old, changed or not. The scanner also owns the cross-file rule that a
dag_id belongs to the first file that defined it: a second file defining it
gets an error for that DAG, its other DAGs still load.

The state (`known`, `parsed_at`, `owners`) is plain data the caller may
persist in the database and hand back to the constructor after a restart.
Time comes from the caller (`scan(now=...)`), so tests drive it with a
clock. This module must never touch the database and never import user code
(parsing goes through `miniflow.parsing.processor`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from miniflow.authoring.serialized import SerializedDag
from miniflow.parsing import discovery, processor
from miniflow.parsing.child import fileloc_of
from miniflow.parsing.processor import FileResult

KnownState = tuple[int, int, str]
"""(mtime_ns, size, sha256) of the version of a file last parsed."""


@dataclass(frozen=True)
class ScanResult:
    """What one scan found."""

    results: list[FileResult]
    """Files parsed (new, changed, due for a periodic re-parse, or forced), sorted by
    fileloc, duplicate dag_ids already rejected."""
    removed: list[str] = field(default_factory=list)
    """Filelocs known before that are gone (deleted, ignored, or no longer DAG files)."""
    unchanged: int = 0
    """Files found and not parsed (unchanged, and not due for a re-parse)."""
    duration: float = 0.0


class DagFolderScanner:
    """Keeps what is known about the DAGs folder between scans."""

    def __init__(
        self,
        dags_folder: Path,
        *,
        known: dict[str, KnownState] | None = None,
        owners: dict[str, str] | None = None,
        parsed_at: dict[str, datetime] | None = None,
        reparse_interval: float | None = None,
        timeout: float = 30.0,
        concurrency: int | None = None,
    ) -> None:
        self.dags_folder = Path(dags_folder)
        self.known: dict[str, KnownState] = dict(known or {})
        """fileloc -> (mtime_ns, size, sha256) of the version last parsed."""
        self.owners: dict[str, str] = dict(owners or {})
        """dag_id -> fileloc of the file that defines it."""
        self.parsed_at: dict[str, datetime] = dict(parsed_at or {})
        """fileloc -> when it was last parsed."""
        self.reparse_interval = reparse_interval
        """Seconds after which an unchanged file is parsed again; None: never."""
        self.timeout = timeout
        self.concurrency = concurrency
        # fileloc -> dag_ids refused as duplicates: re-parsed when an owner lets go.
        self._refused: dict[str, set[str]] = {}
        self._released: set[str] = set()  # dag_ids released during the current round
        self._present: set[str] = set()  # filelocs found by the current scan

    async def scan(
        self, *, now: datetime | None = None, force: bool | Collection[str] = False
    ) -> ScanResult:
        """Find new, changed and removed files; parse the new and changed ones, those
        due for a periodic re-parse at `now`, and those `force`d (True: every file)."""
        started = time.monotonic()
        now = now or datetime.now(UTC)
        # Discovery reads every candidate's bytes (safe mode): keep it off the loop.
        files = await asyncio.to_thread(discovery.find_dag_files, self.dags_folder)
        by_loc = {fileloc_of(self.dags_folder, path): path for path in files}
        self._present = set(by_loc)
        self._released = set()
        removed = sorted(set(self.known) - self._present)
        for fileloc in removed:
            del self.known[fileloc]
            self.parsed_at.pop(fileloc, None)
            self._refused.pop(fileloc, None)
            self._release(fileloc, keep=set())

        # Stats, and hashes of files whose mtime moved: off the loop as well.
        batch = await asyncio.to_thread(
            lambda: {
                loc
                for loc, path in by_loc.items()
                if force is True
                or (not isinstance(force, bool) and loc in force)
                or self._needs_parse(loc, path, now)
            }
        )
        results: dict[str, FileResult] = {}
        # Releasing a dag_id (its file removed, or no longer defining it) lets
        # a file that was refused it load it: parse that file again, same scan.
        for _ in range(3):
            released, self._released = self._released, set()
            batch |= {loc for loc, ids in self._refused.items() if ids & released}
            if not batch:
                break
            parsed = await processor.parse_files(
                self.dags_folder,
                [by_loc[loc] for loc in sorted(batch)],
                timeout=self.timeout,
                concurrency=self.concurrency,
            )
            for result in parsed:
                results[result.fileloc] = self._apply(result)
                self.parsed_at[result.fileloc] = now
            batch = set()
        return ScanResult(
            results=[results[loc] for loc in sorted(results)],
            removed=removed,
            unchanged=len(by_loc) - len(results),
            duration=time.monotonic() - started,
        )

    async def scan_one(self, fileloc: str, *, now: datetime | None = None) -> ScanResult | None:
        """Parse one known file if it changed, without reading the rest of the folder (the
        DAG of a `dags trigger`); None when that is not enough: the file is gone or was
        never parsed, so the folder must be scanned."""
        started = time.monotonic()
        now = now or datetime.now(UTC)
        path = self.dags_folder / fileloc
        if fileloc not in self.known or not path.is_file():
            return None
        # The other files are taken as they were last scanned (owners of dag_ids included).
        self._present = set(self.known)
        self._released = set()
        if not await asyncio.to_thread(self._needs_parse, fileloc, path, now):
            return ScanResult(results=[], unchanged=1, duration=time.monotonic() - started)
        parsed = await processor.parse_files(
            self.dags_folder, [path], timeout=self.timeout, concurrency=self.concurrency
        )
        results = [self._apply(result) for result in parsed]
        for result in results:
            self.parsed_at[result.fileloc] = now
        return ScanResult(results=results, duration=time.monotonic() - started)

    def _needs_parse(self, fileloc: str, path: Path, now: datetime) -> bool:
        old = self.known.get(fileloc)
        if old is None:
            return True
        if self.reparse_interval is not None:
            last = self.parsed_at.get(fileloc)
            if last is None or now - last >= timedelta(seconds=self.reparse_interval):
                return True  # what it imports may have changed
        try:
            st = path.stat()
        except OSError:
            return True  # parse_files reports the read error
        if (st.st_mtime_ns, st.st_size) == old[:2]:
            return False
        try:
            fp = processor.fingerprint(path)
        except OSError:
            return True
        if fp.sha256 == old[2]:
            self.known[fileloc] = (fp.mtime_ns, fp.size, fp.sha256)
            return False
        return True

    def _release(self, fileloc: str, keep: set[str]) -> None:
        gone = [d for d, owner in self.owners.items() if owner == fileloc and d not in keep]
        for dag_id in gone:
            del self.owners[dag_id]
        self._released.update(gone)

    def _apply(self, result: FileResult) -> FileResult:
        """Record a parse result; refuse dag_ids another file already owns."""
        fileloc = result.fileloc
        self.known[fileloc] = (result.mtime_ns, result.size, result.sha256)
        if result.error is not None:
            # A broken file keeps its dag_ids: a typo must not let another file take them.
            return result
        kept: list[SerializedDag] = []
        errors: list[str] = []
        refused: set[str] = set()
        for dag in result.dags:
            owner = self.owners.get(dag["dag_id"])
            if owner is not None and owner != fileloc and owner in self._present:
                errors.append(f"DAG {dag['dag_id']!r} is already defined in {owner}")
                refused.add(dag["dag_id"])
                continue
            self.owners[dag["dag_id"]] = fileloc
            kept.append(dag)
        self._release(fileloc, keep={dag["dag_id"] for dag in kept})
        if refused:
            self._refused[fileloc] = refused
        else:
            self._refused.pop(fileloc, None)
        if not errors:
            return result
        return dataclasses.replace(result, dags=kept, error="\n".join(errors))
