"""Render the templates of DAGs with function macros or filters in a child process.

Such a DAG's callables stay in its file and the scheduler never imports DAG files
(see `miniflow.parsing`), so for the tries of one claim batch whose DAG needs it
(`templates.needs_dag_file`), the scheduler starts one `python -m
miniflow.parsing.render_child` per DAG that imports the file and renders them all. It
is bounded by a timeout (killed past it). A template error fails that try with its
message, as in-process rendering does; a file that cannot be imported, a crashed child
or a timeout fails every try of the batch with the reason. Other DAGs never pay for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miniflow.authoring.mapping import apply_map_args
from miniflow.authoring.serialized import SerializedDag
from miniflow.authoring.templates import RenderedFields
from miniflow.authoring.xcom import XComData
from miniflow.scheduler.child_process import run_module
from miniflow.scheduler.specs import context_inputs
from miniflow.store.records import RunInfo


@dataclass(frozen=True, slots=True)
class RenderItem:
    """One try to render: its run's DAG version and run, and what its templates see."""

    dag: SerializedDag
    run: RunInfo
    task_id: str
    try_number: int
    map_index: int
    map_args: dict[str, Any] | None
    xcom: XComData | None


Rendered = RenderedFields | str
"""A try's rendered fields, or the error text that fails it."""


def encode_xcom(data: XComData | None) -> dict[str, Any] | None:
    """`XComData` as JSON (its keys are tuples); `render_child.decode_xcom` reverses it."""
    if data is None:
        return None
    return {
        "results": [[t, i, v] for (t, i), v in data.results.items()],
        "values": [[t, i, k, v] for (t, i, k), v in data.values.items()],
    }


def _item_json(item: RenderItem) -> dict[str, Any]:
    inputs = context_inputs(item.dag, item.run, item.task_id, item.try_number, item.map_index)
    for key in ("logical_date", "data_interval_start", "data_interval_end"):
        inputs[key] = inputs[key].isoformat()
    return {
        "task": apply_map_args(item.dag["tasks"][item.task_id], item.map_args),
        "context": inputs,
        "xcom": encode_xcom(item.xcom),
    }


class ChildRenderer:
    """Renders batches of tries in child processes that import their DAG files."""

    def __init__(self, dags_folder: Path, timeout: float) -> None:
        self.dags_folder = dags_folder
        self.timeout = timeout

    async def render(self, items: Sequence[RenderItem]) -> list[Rendered]:
        """Each item's fields or error, in order: one child per DAG, run concurrently."""
        groups: dict[tuple[str, str], list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault((item.dag["dag_id"], item.dag["fileloc"]), []).append(index)
        out: list[Rendered] = [""] * len(items)

        async def one_dag(dag_id: str, fileloc: str, indexes: list[int]) -> None:
            results = await self._run(dag_id, fileloc, [items[i] for i in indexes])
            for i, result in zip(indexes, results, strict=True):
                out[i] = result

        await asyncio.gather(*(one_dag(d, f, ix) for (d, f), ix in groups.items()))
        return out

    async def _run(self, dag_id: str, fileloc: str, items: list[RenderItem]) -> list[Rendered]:
        path = self.dags_folder / fileloc
        request = {
            "dags_folder": str(self.dags_folder),
            "path": str(path),
            "dag_id": dag_id,
            "items": [_item_json(item) for item in items],
        }
        why = f"rendering the templates of DAG {dag_id!r} imports {fileloc} (its macros/filters)"
        done = await run_module("miniflow.parsing.render_child", request, self.timeout)
        if done is None:
            return [f"{why}: it did not finish within {self.timeout:g}s"] * len(items)
        out = done.out
        text = done.err.decode(errors="replace").strip()[-4000:]
        if done.returncode != 0:
            return [f"{why}, which failed (exit {done.returncode}):\n{text}"] * len(items)
        try:
            results = json.loads(out)["results"]
        except (ValueError, KeyError, TypeError):
            return [f"{why}, which gave no answer:\n{text}"] * len(items)
        return [
            RenderedFields(**r["fields"]) if "fields" in r else str(r["error"]) for r in results
        ]
