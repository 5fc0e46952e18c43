"""The grid (runs x tasks) as HTML and as JSON, built in plain Python.

A grid of 1,000 tasks x 25 runs is 25,000 cells: through Jinja2 (an escape
and a URL quote per id per cell) it took seconds; here each id is escaped and
quoted once per row or column and a cell is one f-string, well under the
benchmark's 1 s (`benchmarks/web_grid.py`).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from miniflow.store.browse import Grid, RunView
from miniflow.store.times import rfc3339


def dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _q(value: str) -> str:
    return quote(value, safe="")


def _run_head(base: str, run: RunView) -> str:
    title = escape(
        f"{run.run_id}\n{run.state} · {run.run_type}\n"
        f"{rfc3339(run.logical_date, 'seconds')}\nduration {dur(run.duration)}"
    )
    return (
        f'<th><a class="run-head st-{run.state}" href="{base}/runs/{_q(run.run_id)}" '
        f'title="{title}" data-run="{escape(run.run_id)}" data-state="{run.state}"></a></th>'
    )


def html(grid: Grid, dag_id: str) -> Markup:
    """The grid's `<table>`; every cell links to its task's try page."""
    base = f"/dags/{_q(dag_id)}"
    runs = [(r.run_id, f"{base}/runs/{_q(r.run_id)}/tasks/") for r in grid.runs]
    out = ['<table class="grid" id="grid"><thead><tr><th class="task-col"></th>']
    out.extend(_run_head(base, r) for r in grid.runs)
    out.append("</tr></thead><tbody>")
    for task_id in grid.task_ids:
        row = grid.cells.get(task_id, {})
        task_html, task_q = escape(task_id), _q(task_id)
        out.append(f'<tr><th class="task-col">{task_html}</th>')
        for run_id, prefix in runs:
            c = row.get(run_id)
            if c is None:
                out.append("<td></td>")
                continue
            title = f"{task_html}: {c.state}&#10;try {c.try_number} · {dur(c.duration)}"
            if c.reason:
                title += "&#10;" + escape(c.reason)
            out.append(
                f'<td><a class="cell st-{c.state}" data-task="{task_html}" '
                f'data-state="{c.state}" href="{prefix}{task_q}" title="{title}"></a></td>'
            )
        out.append("</tr>")
    out.append("</tbody></table>")
    return Markup("".join(out))


def as_json(grid: Grid) -> bytes:
    """The API's grid, without validating 25,000 cells through pydantic on the way out."""
    runs: list[dict[str, Any]] = []
    for r in grid.runs:
        runs.append(
            {
                "dag_id": r.dag_id,
                "run_id": r.run_id,
                "logical_date": rfc3339(r.logical_date),
                "data_interval_start": rfc3339(r.data_interval_start),
                "data_interval_end": rfc3339(r.data_interval_end),
                "state": r.state,
                "run_type": r.run_type,
                "conf": r.conf,
                "created_at": rfc3339(r.created_at),
                "started_at": rfc3339(r.started_at) if r.started_at else None,
                "ended_at": rfc3339(r.ended_at) if r.ended_at else None,
                "duration": r.duration,
            }
        )
    cells = {
        task: {
            run: {
                "state": c.state,
                "try_number": c.try_number,
                "duration": c.duration,
                "reason": c.reason,
            }
            for run, c in row.items()
        }
        for task, row in grid.cells.items()
    }
    body = {"runs": runs, "task_ids": grid.task_ids, "cells": cells}
    return json.dumps(body, separators=(",", ":")).encode()
