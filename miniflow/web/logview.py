"""A try's log for the web: the same sources as `miniflow tasks logs` (from `miniflow.cli.logs`).

The local launcher's log file while it exists, the pod's log on Kubernetes,
else the tail saved on the attempt; a try that never started shows why.
Only the last `MAX_LINES` lines are returned: a page must stay small. `follow`
streams a running try's lines as they are written, until the try ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

from miniflow.cli import logs
from miniflow.config import Config

MAX_LINES = 5000


async def read(
    config: Config, dag_id: str, run_id: str, task_id: str, try_number: int
) -> list[str]:
    kept: deque[str] = deque(maxlen=MAX_LINES)
    async for line in logs.read(config, dag_id, run_id, task_id, try_number, follow=False):
        kept.append(line.rstrip("\n"))
    return list(kept)


async def follow(
    config: Config, dag_id: str, run_id: str, task_id: str, try_number: int
) -> AsyncIterator[str]:
    async for line in logs.read(config, dag_id, run_id, task_id, try_number, follow=True):
        yield line.rstrip("\n")
