"""The child process that renders templates with a DAG's functions: `python -m
miniflow.parsing.render_child`.

A DAG with functions among its `user_defined_macros`, or with `user_defined_filters`,
keeps those callables in its file, and the scheduler never imports DAG files. So the
scheduler renders such a DAG's Bash / Pod fields (for the tries of one claim batch) by
starting this module in a fresh interpreter with one JSON object on stdin:
`{"dags_folder", "path", "dag_id", "items": [{"task", "context", "xcom"}]}` — each item
a task as serialized (mapped arguments applied), the inputs of `templates.build_context`
(dates as ISO strings) and the XCom its templates may pull. It imports the file once,
renders every item with the DAG's macros and filters and prints
`{"results": [{"fields": {...}} | {"error": "..."}]}` (one per item, in order).
Exit 0: results printed; 2: the file or DAG could not be loaded (the reason on stderr).
The parent bounds it with a timeout; nothing here writes any state.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

DATES = ("logical_date", "data_interval_start", "data_interval_end")


def decode_xcom(given: dict[str, Any] | None) -> Any:
    """The `XComData` the parent encoded (`miniflow.scheduler.child_render.encode_xcom`)."""
    from miniflow.authoring.xcom import XComData

    if given is None:
        return None
    return XComData(
        results={(t, i): v for t, i, v in given["results"]},
        values={(t, i, k): v for t, i, k, v in given["values"]},
    )


def render_one(dag: Any, item: dict[str, Any]) -> dict[str, Any]:
    """One item's rendered fields, or its template error."""
    from miniflow.authoring.context import TaskInstanceInfo
    from miniflow.authoring.templates import build_context, render_with_dag
    from miniflow.authoring.xcom import template_xcom
    from miniflow.errors import TemplateError

    inputs = dict(item["context"])
    for key in DATES:
        inputs[key] = datetime.fromisoformat(inputs[key])
    context = build_context(**inputs)
    context["ti"] = context["task_instance"] = TaskInstanceInfo(
        inputs["dag_id"],
        inputs["run_id"],
        inputs["task_id"],
        inputs["try_number"],
        inputs["map_index"],
        xcom=template_xcom(item["task"], decode_xcom(item.get("xcom"))),
    )
    try:
        rendered = render_with_dag(dag, item["task"], context)
    except TemplateError as exc:
        return {"error": str(exc)}
    return {"fields": dataclasses.asdict(rendered)}


def run(request: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    from miniflow import airflow_compat
    from miniflow.authoring.loader import import_dag_file

    path, dag_id = Path(request["path"]), request["dag_id"]
    folder = str(Path(request["dags_folder"]).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)  # top-level modules of the DAGs folder import, as in parsing
    if path.is_file() and airflow_compat.mentions_airflow(path):
        airflow_compat.activate()  # this child only, as the parse child does
    try:
        dags = import_dag_file(path)
    except BaseException:  # user code: report anything it raises
        print(f"importing {path} failed:\n{traceback.format_exc()}", file=sys.stderr)
        return 2, None
    dag = next((d for d in dags if d.dag_id == dag_id), None)
    if dag is None:
        print(f"{path} no longer defines DAG {dag_id!r}", file=sys.stderr)
        return 2, None
    return 0, {"results": [render_one(dag, item) for item in request["items"]]}


def main() -> int:
    request = json.loads(sys.stdin.read())
    answer = sys.stdout
    sys.stdout = sys.stderr  # what the DAG file or a macro prints must not garble the answer
    code, out = run(request)
    if out is not None:
        answer.write(json.dumps(out))
        answer.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
