"""Counts the launchers keep for the scheduler's metrics: API errors, watch restarts, relists.

Plain numbers, process-wide like the metrics they feed: the launchers never import
prometheus (the scheduler's `metrics` module reads these at scrape time), so a launcher
stays usable without the ops server, and tests read the counts directly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class KubeStats:
    api_errors: Counter[str] = field(default_factory=Counter)
    """Error answers of the Kubernetes API, by HTTP status code ("connection": none came)."""
    watch_restarts: int = 0
    """Watch streams that ended before the server's timeout (dropped, 410 Gone, failed)."""
    relists: int = 0
    """Full lists of a namespace's pods (the first one of each watch included)."""


KUBE = KubeStats()
