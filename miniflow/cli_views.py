"""Terminal rendering for the CLI (rich tables, trees and the live run view).

Only presentation lives here; the data comes from `miniflow.admin` and the store.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from rich.console import Console, Group
from rich.table import Column, Table
from rich.tree import Tree
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.admin import DagRowView
from miniflow.config import Config
from miniflow.serialized import SerializedDag
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import states
from miniflow.store import task_instances as store_tis
from miniflow.store.models import DagRun, ImportErrorRow, TaskInstance

STATE_STYLE = {
    "success": "green",
    "failed": "red",
    "upstream_failed": "dark_orange",
    "running": "cyan",
    "queued": "blue",
    "scheduled": "blue",
    "up_for_retry": "yellow",
    "skipped": "magenta",
    "none": "dim",
}


PIPE_WIDTH = 200
"""Table width when output is not a terminal (pipes, CI logs): wide enough for ids."""


def make_console() -> Console:
    """A console for the CLI; piped output is wide so ids are not cut or folded."""
    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


def _console(console: Console | None) -> Console:
    return console or make_console()


def _fmt(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def _id(header: str) -> Column:
    """An id column: folded onto more lines when narrow, never cut with an ellipsis."""
    return Column(header, overflow="fold")


def _styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def print_dags(rows: Sequence[DagRowView], console: Console | None = None) -> None:
    table = Table(
        _id("dag_id"), "schedule", "next run at (UTC)", "paused", "tasks", "file", "import error"
    )
    for r in rows:
        table.add_row(
            r.dag_id,
            r.schedule or "-",
            _fmt(r.next_run),
            "yes" if r.is_paused else "no",
            str(r.tasks),
            r.fileloc,
            "[red]yes[/]" if r.has_import_error else "",
        )
    _console(console).print(table)


def print_import_errors(errors: Sequence[ImportErrorRow], console: Console | None = None) -> None:
    out = _console(console)
    if not errors:
        out.print("no import errors")
        return
    for err in errors:
        out.print(f"[bold red]{err.fileloc}[/] ({_fmt(err.at)})")
        out.print(err.error, markup=False, highlight=False)


def parse_line(fileloc: str, dag_ids: Sequence[str], error: str | None) -> str:
    """One line per parsed file: the DAGs it defines, or the last line of its import error."""
    parts = [f"{len(dag_ids)} DAG(s): {', '.join(dag_ids)}"] if dag_ids else []
    if error is not None:
        lines = error.strip().splitlines()
        parts.append(f"import error: {lines[-1] if lines else 'unknown'}")
    return f"{fileloc}: {'; '.join(parts) or 'no DAGs'}"


def print_dag_tree(dag: SerializedDag, console: Console | None = None) -> None:
    """Roots at the top, each task's downstream tasks below it."""
    children: dict[str, list[str]] = {t: [] for t in dag["tasks"]}
    for tid, task in dag["tasks"].items():
        for up in task["upstream"]:
            children[up].append(tid)
    root = Tree(f"[bold]{dag['dag_id']}[/] ({dag['schedule'] or 'manual'})")

    def add(node: Tree, task_id: str, path: tuple[str, ...]) -> None:
        task = dag["tasks"][task_id]
        extra = f" [dim]{task['trigger_rule']}[/]" if task["trigger_rule"] != "all_success" else ""
        branch = node.add(f"{task_id} [dim]({task['kind']})[/]{extra}")
        for child in children[task_id]:
            if child not in path:
                add(branch, child, (*path, child))

    for task_id, task in dag["tasks"].items():
        if not task["upstream"]:
            add(root, task_id, (task_id,))
    _console(console).print(root)


def print_runs(runs: Sequence[DagRun], console: Console | None = None) -> None:
    table = Table(_id("dag_id"), _id("run_id"), "logical date", "type", "state", "started", "ended")
    for r in runs:
        table.add_row(
            r.dag_id,
            r.run_id,
            _fmt(r.logical_date),
            r.run_type,
            _styled(r.state),
            _fmt(r.started_at),
            _fmt(r.ended_at),
        )
    _console(console).print(table)


def _duration(ti: TaskInstance) -> str:
    if ti.started_at and ti.ended_at:
        return f"{(ti.ended_at - ti.started_at).total_seconds():.2f}s"
    return "-"


def print_task_instances(tis: Sequence[TaskInstance], console: Console | None = None) -> None:
    table = Table(_id("task_id"), "state", "try", "duration", "exit code", "reason / error")
    for ti in tis:
        reason = (ti.error or "").strip().splitlines()[-1] if ti.error else ""
        table.add_row(
            ti.task_id,
            _styled(ti.state),
            str(ti.try_number),
            _duration(ti),
            "-" if ti.exit_code is None else str(ti.exit_code),
            reason[:100],
        )
    _console(console).print(table)


async def runs_panel(engine: AsyncEngine, watched: Sequence[tuple[str, str]]) -> Table:
    """The live view: recent runs with per-state task counts."""
    sessions = store_engine.sessionmaker(engine)
    async with store_engine.transaction(sessions) as session:
        runs = await store_runs.list_runs(session, None, limit=max(12, len(watched)))
        tis = await store_tis.states_for_runs(session, [r.id for r in runs])
    table = Table(_id("dag_id"), _id("run_id"), "state", "tasks", title="runs (Ctrl-C to stop)")
    for run in runs:
        counts = Counter(ti.state for ti in tis.get(run.id, []))
        summary = "  ".join(f"{_styled(s)} {n}" for s, n in sorted(counts.items()))
        table.add_row(run.dag_id, run.run_id, _styled(run.state), summary)
    return table


async def follow_run(config: Config, dag_id: str, run_id: str) -> str:
    """`dags trigger --wait`: a live progress view until the run ends; returns its state."""
    from rich.live import Live

    from miniflow import runtime

    console = make_console()
    async with runtime.open_engine(config) as engine:
        sessions = store_engine.sessionmaker(engine)
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                async with store_engine.transaction(sessions) as session:
                    run = await store_runs.get_run(session, dag_id, run_id)
                    tis = await store_tis.list_for_run(session, dag_id, run_id)
                counts = Counter(ti.state for ti in tis)
                done = sum(counts[s] for s in states.FINISHED)
                line = "  ".join(f"{_styled(s)} {n}" for s, n in sorted(counts.items()))
                live.update(
                    Group(f"{dag_id} {run_id}: {_styled(run.state)}  {done}/{len(tis)} done", line)
                )
                if run.state in states.RUN_FINISHED:
                    break
                await asyncio.sleep(0.25)
        print_task_instances(tis, console=console)
        return run.state
