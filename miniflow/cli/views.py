"""Terminal rendering for the CLI (rich tables, trees and the live run view).

Only presentation lives here; the data comes from `miniflow.cli.operations` and the store.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.cells import cell_len
from rich.console import Console, Group
from rich.table import Column, Table
from rich.tree import Tree
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.authoring.serialized import SerializedDag
from miniflow.cli.operations import DagRowView
from miniflow.config import Config
from miniflow.store import engine as store_engine
from miniflow.store import instances as store_instances
from miniflow.store import runs as store_runs
from miniflow.store import states, wakeup
from miniflow.store import task_instances as store_tis
from miniflow.store.instances import Instance
from miniflow.store.records import AttemptRecord, ImportErrorRecord, RunInfo, TaskInstanceRecord

STATE_STYLE = {
    "success": "green",
    "failed": "red",
    "upstream_failed": "dark_orange",
    "running": "cyan",
    "queued": "blue",
    "scheduled": "blue",
    "up_for_retry": "yellow",
    "up_for_reschedule": "yellow",
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
    """An id column: never folded or cut, so ids can be copied into the next command."""
    return Column(header, no_wrap=True)


def _print_table(table: Table, console: Console | None) -> None:
    """Print a table at least as wide as its ids need (wider than a narrow terminal if
    it must: the terminal wraps the line, the id stays whole when copied)."""
    out = _console(console)
    if _surely_fits(table, out.width):  # measuring is a third of printing 100 rows
        out.print(table)
        return
    needed = out.measure(table, options=out.options.update_width(100_000)).minimum
    if needed > out.width:
        out = Console(
            file=out.file,
            width=needed,
            force_terminal=out.is_terminal,
            no_color=out.no_color,
            color_system=out.color_system,  # type: ignore[arg-type]
        )
    out.print(table)


def _surely_fits(table: Table, width: int) -> bool:
    """Whether `table` fits in `width` columns, judged from its cells' lengths without
    measuring it: markup counts as text (an overestimate), wide characters as two cells,
    and each column adds its padding and one border."""
    total = 1
    for column in table.columns:
        cells = [column.header, *column.cells]
        texts = [cell for cell in cells if isinstance(cell, str)]
        if len(texts) != len(cells):
            return False
        total += max(cell_len(line) for text in texts for line in text.split("\n")) + 3
    return total <= width


def print_json(items: Sequence[object]) -> None:
    """`--output json`: a list of objects with the REST API's field names, on stdout."""
    import dataclasses
    import json

    def plain(item: object) -> object:
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return dataclasses.asdict(item)
        return item

    def default(value: object) -> str:
        if isinstance(value, datetime):
            from miniflow.store.times import rfc3339

            return rfc3339(value)
        raise TypeError(f"{type(value).__name__} is not JSON")

    sys.stdout.write(json.dumps([plain(i) for i in items], default=default, indent=2) + "\n")


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
    _print_table(table, console)


def print_import_errors(
    errors: Sequence[ImportErrorRecord], console: Console | None = None
) -> None:
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


MAX_ALSO = 5
"""Other upstream tasks named on a task's line in `dags show` before "and N more"."""


def print_dag_tree(dag: SerializedDag, console: Console | None = None) -> None:
    """Roots at the top, each task once, below its deepest upstream task; a task group is
    one node, its tasks listed under it (as a tree of their own) before what follows it.

    A task with several upstream tasks hangs under one of them (the first of the
    deepest), and its line names the others ("also after ..."): one line per task,
    however many paths lead to it, instead of a tree that repeats shared subtrees.
    """
    root = Tree(f"[bold]{dag['dag_id']}[/] ({dag['schedule'] or 'manual'})")
    _add_level(root, dag, list(dag["tasks"]), None)
    out = _console(console)
    out.print(root)
    params = _param_lines(dag)
    if params:
        out.print("params (dags trigger --conf '{\"key\": value}'):", markup=False)
        for line in params:
            out.print(line, markup=False, highlight=False)


def _group_chain(task: Any) -> list[str]:
    """The task's enclosing groups, outermost first ("a.b" → ["a", "a.b"])."""
    group: str | None = task.get("task_group")
    if not group:
        return []
    parts = group.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _add_level(parent: Tree, dag: SerializedDag, members: list[str], group: str | None) -> None:
    """The tree of `members` (the tasks of `group`, or of the DAG) under `parent`: tasks
    of a subgroup are collapsed into one node, listed under it by a recursive call."""
    tasks = dag["tasks"]
    inside = set(members)

    def node_of(task_id: str) -> str:
        chain = _group_chain(tasks[task_id])
        if group is not None:
            chain = chain[chain.index(group) + 1 :] if group in chain else []
        return f"group:{chain[0]}" if chain else task_id

    nodes: list[str] = []
    content: dict[str, list[str]] = {}
    for tid in members:
        node = node_of(tid)
        if node not in content:
            nodes.append(node)
            content[node] = []
        content[node].append(tid)
    ups: dict[str, set[str]] = {n: set() for n in nodes}
    for node, tids in content.items():
        for tid in tids:
            ups[node] |= {node_of(u) for u in tasks[tid]["upstream"] if u in inside} - {node}
    depth = _node_depths(nodes, ups)
    order = {n: i for i, n in enumerate(nodes)}
    children: dict[str, list[str]] = {n: [] for n in nodes}
    parent_of: dict[str, str] = {}
    for node in nodes:
        placed = [u for u in ups[node] if depth[u] < depth[node]]
        if placed:
            parent_of[node] = min(placed, key=lambda u: (-depth[u], order[u]))
            children[parent_of[node]].append(node)
    stack = [(parent, n) for n in reversed(nodes) if n not in parent_of]
    while stack:
        tree, node = stack.pop()
        if node.startswith("group:"):
            name = node.removeprefix("group:")
            branch = tree.add(f"[bold]{name}[/] [dim](task group)[/]")
            _add_level(branch, dag, content[node], name)
        else:
            above = parent_of.get(node)
            branch = tree.add(_task_label(dag, node, None if above is None else above))
        stack.extend((branch, child) for child in reversed(children[node]))


def _node_depths(nodes: list[str], ups: dict[str, set[str]]) -> dict[str, int]:
    """Longest path from a root to each node; a cycle (a group wired both before and after
    a task) is broken at the edge that closes it, so every node still gets a depth."""
    depth: dict[str, int] = {}
    for start in nodes:
        stack, on_stack = [start], {start}
        while stack:
            node = stack[-1]
            pending = [u for u in ups[node] if u not in depth and u not in on_stack]
            if pending:
                stack.append(pending[0])
                on_stack.add(pending[0])
                continue
            stack.pop()
            on_stack.discard(node)
            depth[node] = 1 + max((depth[u] for u in ups[node] if u in depth), default=-1)
    return depth


def _param_lines(dag: SerializedDag) -> list[str]:
    """One line per param: its default (or "required"), schema and description."""
    specs: dict[str, Any] = dag.get("param_specs", {})
    lines = []
    for key in sorted(set(dag["params"]) | set(specs)):
        spec = specs.get(key)
        value = "required" if key not in dag["params"] else json.dumps(dag["params"][key])
        line = f"  {key} = {value}"
        if spec is not None and spec["schema"]:
            line += f"  {json.dumps(spec['schema'], sort_keys=True)}"
        if spec is not None and spec.get("description"):
            line += f"  — {spec['description']}"
        lines.append(line)
    return lines


def _task_label(dag: SerializedDag, task_id: str, parent: str | None) -> str:
    task = dag["tasks"][task_id]
    mode = task.get("python_mode")
    kind = f"{task['kind']}, {mode.replace('_', '-')}" if mode else task["kind"]
    if task.get("setup"):
        kind += ", setup"
    if task.get("teardown"):
        fails_run = task.get("on_failure_fail_dagrun")
        kind += ", teardown" + (": its failure fails the run" if fails_run else "")
    sensor = task.get("sensor")
    if sensor is not None:
        kind += f", {sensor['mode']} every {sensor['poke_interval']:g}s"
    if task.get("push_result") and task["kind"] == "pod":
        kind += f", result from {task.get('result_file') or '/dev/termination-log'}"
    elif task.get("push_result"):
        kind += ", result: its last output line"
    label = f"{task_id} [dim]({kind})[/]"
    expansion = task.get("expand")
    if expansion is not None:
        label += f" [magenta]{_expansion_text(expansion)}[/]"
    if task["trigger_rule"] not in ("all_success", "all_done_setup_success"):
        label += f" [dim]{task['trigger_rule']}[/]"
    others = [u for u in sorted(task["upstream"]) if u != parent]
    if others:
        named = ", ".join(others[:MAX_ALSO])
        more = f" and {len(others) - MAX_ALSO} more" if len(others) > MAX_ALSO else ""
        label += f" [dim]← also after {named}{more}[/]"
    return label


def _expansion_text(expansion: Mapping[str, Any]) -> str:
    """`mapped over x=[3 items], y=<result of t>` for `dags show`."""

    def source(arg: Mapping[str, Any]) -> str:
        if "ref" in arg:
            return f"<result of {arg['ref']}>"
        value = arg.get("value")
        return f"[{len(value)} items]" if isinstance(value, list) else repr(value)

    if expansion.get("mode") == "kwargs":
        return f"mapped over kwargs {source(expansion.get('source', {}))}"
    args = expansion.get("args", {})
    return "mapped over " + ", ".join(f"{k}={source(v)}" for k, v in args.items())


def print_runs(runs: Sequence[RunInfo], console: Console | None = None) -> None:
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
    _print_table(table, console)


def print_schedulers(
    rows: Sequence[tuple[Instance, int]],
    now: datetime,
    console: Console | None = None,
    *,
    holder: str | None = None,
    silent_after: float = 30.0,
) -> None:
    """`holder`: the instance holding the sanity lock; `silent_after`: seconds without a
    heartbeat after which peers take an instance for dead (`MINIFLOW_SCHEDULER_TIMEOUT`)."""
    table = Table(
        _id("id"), "host", "pid", "version", "started", "heartbeat", "state", "open tries"
    )
    for instance, owned in rows:
        silent = (now - instance.heartbeat_at).total_seconds()
        if instance.ended_at is not None:
            state = "stopped"
        elif silent > silent_after:
            state = "[red]silent[/]"
        else:
            state = "[green]alive[/]"
        if instance.id == holder:
            state += ", sanity lock"
        if not instance.peer:
            state += " (dags test)"
        table.add_row(
            instance.id,
            instance.hostname,
            str(instance.pid),
            instance.version or "-",
            _fmt(instance.started_at),
            f"{silent:.0f}s ago",
            state,
            str(owned),
        )
    _print_table(table, console)


def _duration(ti: TaskInstanceRecord) -> str:
    if ti.started_at and ti.ended_at:
        return f"{(ti.ended_at - ti.started_at).total_seconds():.2f}s"
    return "-"


def print_task_instances(tis: Sequence[TaskInstanceRecord], console: Console | None = None) -> None:
    table = Table(_id("task_id"), "state", "try", "duration", "exit code", "reason / error")
    for ti in tis:
        reason = (ti.error or "").strip().splitlines()[-1] if ti.error else ""
        if ti.state == states.UP_FOR_RESCHEDULE and ti.next_retry_at is not None:
            reason = f"next poke at {_fmt(ti.next_retry_at)}"
        table.add_row(
            ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]",
            _styled(ti.state),
            str(ti.try_number),
            _duration(ti),
            "-" if ti.exit_code is None else str(ti.exit_code),
            reason[:100],
        )
    _print_table(table, console)


def print_attempts(attempts: Sequence[AttemptRecord], console: Console | None = None) -> None:
    """`tasks list --all-tries`: every try of every task, with how and why it ended."""
    table = Table(
        _id("task_id"), "try", "state", "started", "duration", "exit code", "reason / message"
    )
    for a in attempts:
        duration = (
            f"{(a.ended_at - a.started_at).total_seconds():.2f}s"
            if a.started_at and a.ended_at
            else "-"
        )
        message = (a.message or "").strip().splitlines()[-1] if a.message else ""
        why = ": ".join(part for part in (a.reason, message[:100]) if part)
        table.add_row(
            a.task_id if a.map_index < 0 else f"{a.task_id}[{a.map_index}]",
            str(a.try_number),
            _styled(a.state),
            _fmt(a.started_at),
            duration,
            "-" if a.exit_code is None else str(a.exit_code),
            why,
        )
    _print_table(table, console)


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


NO_SCHEDULER_AFTER = 3.0
PROGRESS_INTERVAL = 0.25  # seconds between two looks at a followed run's progress
"""Seconds `dags trigger --wait` waits before it checks that a scheduler is running."""


async def follow_run(
    config: Config, dag_id: str, run_id: str, engine: AsyncEngine | None = None
) -> str:
    """`dags trigger --wait`: a live progress view until the run ends, then the run's
    task instances; returns its state.

    After `NO_SCHEDULER_AFTER` seconds it says once (on stderr) if no scheduler
    heartbeats against the database, and keeps waiting: one may be started yet. Each
    look at the progress counts the run's task instances by state in the database: a
    follower of a large run does not read (and build) every row several times a second
    on the cores its tasks run on.
    """
    from rich.live import Live

    from miniflow.cli import wiring
    from miniflow.scheduler.settings import SchedulerSettings

    console = make_console()
    threshold = SchedulerSettings().instance_timeout
    check_at: float | None = asyncio.get_running_loop().time() + NO_SCHEDULER_AFTER
    async with (
        wiring.using_engine(config, engine) as engine,
        wakeup.Listener(engine) as listener,
    ):
        sessions = store_engine.sessionmaker(engine)
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                async with store_engine.transaction(sessions) as session:
                    run = await store_runs.get_run(session, dag_id, run_id)
                    counts = Counter(await store_tis.state_counts_for_run(session, dag_id, run_id))
                    if check_at is not None and asyncio.get_running_loop().time() >= check_at:
                        check_at = None
                        now = datetime.now(UTC)
                        if not await store_instances.any_alive(session, now, threshold):
                            print(
                                "no scheduler is running against this database (none "
                                f"heartbeat in the last {threshold:g} s); start one with "
                                "`miniflow scheduler`",
                                file=sys.stderr,
                            )
                done = sum(counts[s] for s in states.FINISHED)
                total = sum(counts.values())
                line = "  ".join(f"{_styled(s)} {n}" for s, n in sorted(counts.items()))
                live.update(
                    Group(f"{dag_id} {run_id}: {_styled(run.state)}  {done}/{total} done", line)
                )
                if run.state in states.RUN_FINISHED:
                    break
                await listener.wait(PROGRESS_INTERVAL)  # a run's end is announced: no poll lag
        async with store_engine.transaction(sessions) as session:
            tis = await store_tis.list_for_run(session, dag_id, run_id)
        if not console.is_terminal:
            console.line()  # piped: Live leaves its last line open
        print_task_instances(tis, console=console)
        return run.state
