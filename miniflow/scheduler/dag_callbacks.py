"""DAG-level callbacks: run `on_success_callback` / `on_failure_callback` when a run ends.

The scheduler process never imports user code, so each callback runs in a child
interpreter (`miniflow.parsing.dag_callback`) that imports the DAG file, started
only after the run's end is committed. It is bounded by `MINIFLOW_CALLBACK_TIMEOUT`
(killed past it) and only logged: a callback that fails, hangs or cannot import
its file never changes a run's or a task's state, and never holds up a round
(the scheduler does not wait for it, except for a bounded wait when it stops, so
`dags test` sees its run's callback through).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from miniflow.authoring.serialized import SerializedDag
from miniflow.store import states
from miniflow.store.runs import RunInfo

log = logging.getLogger("miniflow.scheduler.callbacks")

BY_STATE = {
    states.RUN_SUCCESS: "on_success_callback",
    states.RUN_FAILED: "on_failure_callback",
}


def context_of(dag: SerializedDag, run: RunInfo, state: str) -> dict[str, Any]:
    """What a DAG callback receives (plain JSON; the child turns dates back into datetimes)."""
    return {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "run_type": run.run_type,
        "logical_date": run.logical_date.isoformat(),
        "ds": run.logical_date.strftime("%Y-%m-%d"),
        "data_interval_start": run.data_interval_start.isoformat(),
        "data_interval_end": run.data_interval_end.isoformat(),
        "params": {**dag["params"], **run.conf},
        "state": state,
        "reason": "success" if state == states.RUN_SUCCESS else "task_failure",
    }


class DagCallbacks:
    """Starts the callbacks of ended runs in child processes and keeps track of them."""

    def __init__(self, dags_folder: Path, timeout: float) -> None:
        self.dags_folder = dags_folder
        self.timeout = timeout
        self.running: set[asyncio.Task[int | None]] = set()

    def fire(self, dag: SerializedDag, run: RunInfo, state: str) -> None:
        """Start the callback of `state` if the run's DAG version has one."""
        name = BY_STATE.get(state)
        if name is None or name not in dag.get("callbacks", ()):
            return
        request = {
            "dags_folder": str(self.dags_folder),
            "path": str(self.dags_folder / dag["fileloc"]),
            "dag_id": run.dag_id,
            "callback": name,
            "context": context_of(dag, run, state),
        }
        what = f"{name} of {run.dag_id}/{run.run_id}"
        task = asyncio.ensure_future(self._run(request, what))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _run(self, request: dict[str, Any], what: str) -> int | None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "miniflow.parsing.dag_callback",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(
                proc.communicate(json.dumps(request).encode()), self.timeout
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            log.warning("%s did not finish within %gs: killed", what, self.timeout)
            return None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        text = out.decode(errors="replace").strip()
        if proc.returncode == 0:
            log.info("%s ran%s", what, f": {text}" if text else "")
        else:
            log.warning("%s failed (exit %s): %s", what, proc.returncode, text)
        return proc.returncode

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` for the callbacks started so far; kill what is left."""
        if not self.running:
            return
        pending = set(self.running)
        _, left = await asyncio.wait(pending, timeout=timeout)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
