"""Reading a try's log: live from the launcher while it runs, else the tail kept on the attempt.

The tail is saved on the attempt before a pod is deleted (or a local log file
is cleaned), so `miniflow tasks logs` keeps working after clean-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from miniflow import admin, runtime
from miniflow.config import Config
from miniflow.errors import MiniflowError, NotFound
from miniflow.launchers.base import AttemptKey


async def read(
    config: Config, dag_id: str, run_id: str, task_id: str, try_number: int | None, follow: bool
) -> AsyncIterator[str]:
    attempts = await admin.task_attempts(config, dag_id, run_id, task_id)
    if try_number is None:
        attempt = attempts[-1]
    else:
        matching = [a for a in attempts if a.try_number == try_number]
        if not matching:
            tries = ", ".join(str(a.try_number) for a in attempts)
            raise NotFound(f"{dag_id}/{run_id}/{task_id} has no try {try_number} (tries: {tries})")
        attempt = matching[0]
    key = AttemptKey(dag_id, run_id, task_id, attempt.try_number)
    if (
        attempt.ended_at is not None
        and attempt.log_tail is not None
        and not _local_file(config, key)
    ):
        for line in attempt.log_tail.splitlines():
            yield line
        return
    launcher = runtime.make_launcher(config)
    await launcher.start()
    try:
        async for line in launcher.read_logs(key, attempt.handle, follow=follow):
            yield line
    except MiniflowError:
        if attempt.log_tail is None:
            raise
        for line in attempt.log_tail.splitlines():
            yield line
    finally:
        await launcher.close()


def _local_file(config: Config, key: AttemptKey) -> bool:
    """Local runs keep the whole log file: prefer it to the saved tail."""
    if config.launcher != "local":
        return False
    from miniflow.launchers.local_procs import AttemptPaths

    return AttemptPaths.of(config.state_dir, key).log.exists()
