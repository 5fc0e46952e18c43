"""DAG-level callbacks when a run ends, and the task callbacks of Bash and Pod tasks.

DAG callbacks: `on_success_callback` / `on_failure_callback` when a run ends. Task
callbacks of Bash and Pod tasks (a `@task`'s worker runs its own): the callback of the
state a try ended in, once the scheduler has committed that end; the child imports the
DAG file and calls the task's callbacks with the context a `@task`'s callbacks get.
A scheduler that dies after the commit and before the child finishes does not start it
again: at most once, never before the outcome is in the database.

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
import logging
from pathlib import Path
from typing import Any

from miniflow.authoring.serialized import SerializedDag
from miniflow.launchers.base import AttemptKey
from miniflow.scheduler.child_process import run_module
from miniflow.store import states
from miniflow.store.records import RunInfo

log = logging.getLogger("miniflow.scheduler.callbacks")

BY_STATE = {
    states.RUN_SUCCESS: "on_success_callback",
    states.RUN_FAILED: "on_failure_callback",
}

TASK_BY_STATE = {
    states.SUCCESS: "on_success_callback",
    states.FAILED: "on_failure_callback",
    states.UP_FOR_RETRY: "on_retry_callback",
}
"""The task callback a try's end runs (a skipped task runs none, as in Airflow)."""


def task_context_of(
    dag: SerializedDag, run: RunInfo, key: AttemptKey, state: str, error: str | None
) -> dict[str, Any]:
    """What the child needs to build a task callback's context (plain JSON): the inputs
    of `templates.build_context`, plus `state` and `exception`."""
    return {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "task_id": key.task_id,
        "try_number": key.try_number,
        "map_index": key.map_index,
        "logical_date": run.logical_date.isoformat(),
        "data_interval_start": run.data_interval_start.isoformat(),
        "data_interval_end": run.data_interval_end.isoformat(),
        "params": {**dag["params"], **run.conf},
        "run_type": run.run_type,
        "conf": run.conf,
        "user_macros": dag.get("user_defined_macros"),
        "state": state,
        "exception": error,
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
        self._start(request, f"{name} of {run.dag_id}/{run.run_id}")

    def fire_task(
        self, dag: SerializedDag, run: RunInfo, key: AttemptKey, state: str, error: str | None
    ) -> None:
        """Start the callback of the state a Bash / Pod try ended in, if its task has one.

        Call only once the end is committed: the callback must see the final state."""
        name = TASK_BY_STATE.get(state)
        task = dag["tasks"].get(key.task_id)
        if name is None or task is None or name not in task.get("callbacks", ()):
            return
        request = {
            "dags_folder": str(self.dags_folder),
            "path": str(self.dags_folder / dag["fileloc"]),
            "dag_id": run.dag_id,
            "task_id": key.task_id,
            "callback": name,
            "context": task_context_of(dag, run, key, state, error),
        }
        self._start(request, f"{name} of {key}")

    def _start(self, request: dict[str, Any], what: str) -> None:
        task = asyncio.ensure_future(self._run(request, what))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _run(self, request: dict[str, Any], what: str) -> int | None:
        done = await run_module(
            "miniflow.parsing.dag_callback", request, self.timeout, merge_stderr=True
        )
        if done is None:
            log.warning("%s did not finish within %gs: killed", what, self.timeout)
            return None
        text = done.out.decode(errors="replace").strip()
        if done.returncode == 0:
            log.info("%s ran%s", what, f": {text}" if text else "")
        else:
            log.warning("%s failed (exit %s): %s", what, done.returncode, text)
        return done.returncode

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
