"""A local try's log and its end, read from any process (read-only).

The files of a try (`local_procs.AttemptPaths`) are the local launcher's own
layout; readers outside the launcher (`miniflow tasks logs`, the web UI) use
this module instead, so the layout can change in one place. Nothing here starts,
signals or deletes anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from miniflow.launchers import local_procs
from miniflow.launchers.base import AttemptKey


@dataclass(frozen=True, slots=True)
class LocalTryLog:
    """One try's log under a state directory."""

    state_dir: Path
    key: AttemptKey

    @property
    def _paths(self) -> local_procs.AttemptPaths:
        return local_procs.AttemptPaths.of(self.state_dir, self.key)

    @property
    def path(self) -> Path:
        return self._paths.log

    def exists(self) -> bool:
        return self._paths.log.exists()

    def exited(self) -> bool:
        """The launcher wrote the try's exit (its process ended)."""
        return self._paths.exit.exists()

    def process_gone(self) -> bool:
        """No process of this try can still write to the log: it exited, or it was not
        started on this machine's current boot (nothing to wait for here)."""
        marker = local_procs.read_marker(self._paths.marker)
        return marker is None or not local_procs.marker_process_alive(marker)

    def lines(self, done: asyncio.Event | None = None) -> AsyncIterator[str]:
        """The log's lines; with `done`, keep waiting for more until it is set."""
        return local_procs.iter_log(self._paths.log, done=done, tail_lines=None)
