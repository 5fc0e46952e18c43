"""The child process that runs one DAG-level callback: `python -m miniflow.parsing.dag_callback`.

The scheduler never imports user code (see `miniflow.parsing`), so when a run
ends and its DAG has an `on_success_callback` / `on_failure_callback`, the
scheduler starts this module in a fresh interpreter with one JSON object on
stdin: `{"dags_folder", "path", "dag_id", "callback", "context"}`. It imports the DAG file,
finds the DAG and calls each callable with the context (dates as datetimes).
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
    try:
        dags = import_dag_file(path)
    except BaseException:  # user code: report anything it raises
        print(f"importing {path} failed:\n{traceback.format_exc()}", file=sys.stderr)
        return 2
    dag = next((d for d in dags if d.dag_id == dag_id), None)
    if dag is None:
        print(f"{path} no longer defines DAG {dag_id!r}", file=sys.stderr)
        return 2
    failed = 0
    for callback in dag.callbacks.get(name, ()):
        try:
            callback(dict(context))
        except BaseException:
            failed += 1
            print(f"{name} of DAG {dag_id!r} failed:\n{traceback.format_exc()}", file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    return run(json.loads(sys.stdin.read()))


if __name__ == "__main__":
    sys.exit(main())
