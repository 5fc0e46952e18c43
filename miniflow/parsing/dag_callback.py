"""The child process that runs one DAG or task callback: `python -m miniflow.parsing.dag_callback`.

The scheduler never imports user code (see `miniflow.parsing`), so when a run
ends and its DAG has an `on_success_callback` / `on_failure_callback`, the
scheduler starts this module in a fresh interpreter with one JSON object on
stdin: `{"dags_folder", "path", "dag_id", "callback", "context"}`. It imports the DAG file,
finds the DAG and calls each callable with the context (dates as datetimes).
With a `task_id` the request is a Bash or Pod task's callback: the callables are the
task's (its own or from `default_args`), called with the context a `@task`'s callbacks
get (`templates.build_context` from the request's `context`, plus `state` and
`exception`), also bound for `get_current_context()`.
Exit 0: every callable returned; 1: one raised (traceback on stderr); 2: the
file or DAG could not be loaded. The parent bounds it with a timeout and only
logs the outcome: nothing here writes any state.
"""

from __future__ import annotations

import json
import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

DATES = ("logical_date", "data_interval_start", "data_interval_end")
"""Context keys sent as ISO-8601 strings and given to callbacks as datetimes."""


def run(request: dict[str, Any]) -> int:
    from miniflow.authoring.loader import import_dag_file

    path, dag_id, name = Path(request["path"]), request["dag_id"], request["callback"]
    folder = str(Path(request["dags_folder"]).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)  # top-level modules of the DAGs folder import, as in parsing
    context = dict(request["context"])
    for key in DATES:
        if isinstance(context.get(key), str):
            context[key] = datetime.fromisoformat(context[key])
    task_id = request.get("task_id")
    try:
        dags = import_dag_file(path)
    except BaseException:  # user code: report anything it raises
        print(f"importing {path} failed:\n{traceback.format_exc()}", file=sys.stderr)
        return 2
    dag = next((d for d in dags if d.dag_id == dag_id), None)
    if dag is None:
        print(f"{path} no longer defines DAG {dag_id!r}", file=sys.stderr)
        return 2
    if task_id is None:
        return _call(dag.callbacks.get(name, ()), context, f"{name} of DAG {dag_id!r}")
    task = dag.tasks.get(task_id)
    if task is None:
        print(f"DAG {dag_id!r} in {path} no longer has task {task_id!r}", file=sys.stderr)
        return 2
    callables = task.effective_settings().get(name) or ()
    return _call(callables, task_context(context), f"{name} of task {task_id!r}")


def task_context(given: dict[str, Any]) -> dict[str, Any]:
    """A task callback's context from the request's JSON (see `dag_callbacks.task_context_of`)."""
    from miniflow.authoring.context import TaskInstanceInfo
    from miniflow.authoring.templates import build_context

    inputs = {k: v for k, v in given.items() if k not in ("state", "exception")}
    context = build_context(**inputs)
    context["ti"] = context["task_instance"] = TaskInstanceInfo(
        given["dag_id"], given["run_id"], given["task_id"], given["try_number"], given["map_index"]
    )
    return {**context, "state": given["state"], "exception": given["exception"]}


def _call(callables: Any, context: dict[str, Any], what: str) -> int:
    from miniflow.authoring import context as task_context_mod

    failed = 0
    for callback in callables:
        given = dict(context)  # each callback its own copy
        try:
            if "task_id" in given:  # a task's: `get_current_context()` works as in a @task
                with task_context_mod.bound(given):
                    callback(given)
            else:
                callback(given)
        except BaseException:
            failed += 1
            print(f"{what} failed:\n{traceback.format_exc()}", file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    return run(json.loads(sys.stdin.read()))


if __name__ == "__main__":
    sys.exit(main())
