"""A DAG's dependency graph as server-rendered SVG, in layers (no script, no library).

Tasks are placed in columns by their longest path from a root (so every edge
points right), and ordered in a column by where their neighbours sit (barycentre
sweeps, left to right then right to left, a few times: few crossings for the
usual fan-out / fan-in shapes, and cheap at a few hundred tasks). Every node has
the same size and its own slot, so labels never overlap; a long task id is cut
in the middle, keeping its start and its end (ids of one group or one generated
series differ at the end), and the whole id is in the node's tooltip. A node is
coloured by its state in the newest run and links to that try's page.
"""

from __future__ import annotations

from collections import defaultdict
from html import escape
from urllib.parse import quote

from markupsafe import Markup

from miniflow.store.browse import TaskSpec

NODE_W, NODE_H, COL_GAP, ROW_GAP, PAD = 170, 26, 56, 10, 8
LABEL_CHARS = 22
SWEEPS = 4
"""Barycentre passes in each direction."""

FILL = {
    "none": "#ffffff",
    "scheduled": "tan",
    "queued": "gray",
    "running": "lime",
    "success": "green",
    "failed": "red",
    "up_for_retry": "gold",
    "up_for_reschedule": "turquoise",
    "upstream_failed": "orange",
    "skipped": "hotpink",
}
DARK_TEXT = {"none", "running", "up_for_retry", "scheduled"}


def _depths(specs: list[TaskSpec]) -> dict[str, int]:
    upstream = {t.task_id: [u for u in t.upstream] for t in specs}
    depth: dict[str, int] = {}
    for start in upstream:
        stack = [start]
        while stack:
            tid = stack[-1]
            pending = [u for u in upstream[tid] if u not in depth and u in upstream]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            depth[tid] = 1 + max((depth[u] for u in upstream[tid] if u in depth), default=-1)
    return depth


def label(task_id: str) -> str:
    """The task id, cut in the middle to fit its node (start and end kept)."""
    if len(task_id) <= LABEL_CHARS:
        return task_id
    tail = (LABEL_CHARS - 1) // 2
    return task_id[: LABEL_CHARS - 1 - tail] + "…" + task_id[-tail:]


def _order(columns: dict[int, list[str]], upstream: dict[str, list[str]]) -> dict[str, float]:
    """Each task's row in its column, after barycentre sweeps both ways."""
    downstream: dict[str, list[str]] = defaultdict(list)
    for tid, ups in upstream.items():
        for up in ups:
            downstream[up].append(tid)
    row: dict[str, float] = {}
    for ids in columns.values():
        for i, tid in enumerate(ids):
            row[tid] = i

    def sweep(order: list[int], neighbours: dict[str, list[str]]) -> None:
        for col in order:
            ids = columns[col]
            keys = {}
            for i, tid in enumerate(ids):
                near = [row[n] for n in neighbours.get(tid, ()) if n in row]
                keys[tid] = (sum(near) / len(near) if near else row[tid], i)
            ids.sort(key=keys.__getitem__)
            for i, tid in enumerate(ids):
                row[tid] = i

    cols = sorted(columns)
    for _ in range(SWEEPS):
        sweep(cols[1:], {t: list(u) for t, u in upstream.items()})
        sweep(cols[-2::-1], downstream)
    sweep(cols[1:], {t: list(u) for t, u in upstream.items()})
    return row


def svg(specs: list[TaskSpec], states: dict[str, str], link_prefix: str | None) -> Markup:
    """`states`: task_id -> state in the newest run; `link_prefix`: its tasks' URL prefix."""
    if not specs:
        return Markup("")
    depth = _depths(specs)
    columns: dict[int, list[str]] = defaultdict(list)
    for t in specs:
        columns[depth[t.task_id]].append(t.task_id)
    upstream = {t.task_id: list(t.upstream) for t in specs}
    row = _order(columns, upstream)
    tallest = max(len(ids) for ids in columns.values())
    width = PAD * 2 + len(columns) * NODE_W + (len(columns) - 1) * COL_GAP
    height = PAD * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP

    def place(tid: str) -> tuple[float, float]:
        col_len = len(columns[depth[tid]])
        offset = (tallest - col_len) * (NODE_H + ROW_GAP) / 2  # centre short columns
        x = PAD + depth[tid] * (NODE_W + COL_GAP)
        y = PAD + offset + row[tid] * (NODE_H + ROW_GAP)
        return x, y

    out = [
        f'<svg class="graph" id="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">'
    ]
    for t in specs:
        x2, y2 = place(t.task_id)
        for up in t.upstream:
            if up not in row:
                continue
            x1, y1 = place(up)
            sx, sy, ex, ey = x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2
            mid = (sx + ex) / 2
            out.append(
                f'<path class="edge" d="M{sx:.0f},{sy:.0f} C{mid:.0f},{sy:.0f} '
                f'{mid:.0f},{ey:.0f} {ex:.0f},{ey:.0f}"/>'
            )
    for t in specs:
        x, y = place(t.task_id)
        state = states.get(t.task_id, "none")
        colour = "#1f2328" if state in DARK_TEXT else "#ffffff"
        node = (
            f'<g class="node" data-task="{escape(t.task_id)}" data-state="{state}">'
            f"<title>{escape(t.task_id)} ({t.kind}): {state}</title>"
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="5" '
            f'fill="{FILL.get(state, "#ffffff")}" stroke="#8c959f"/>'
            f'<text x="{x + 9:.0f}" y="{y + NODE_H / 2 + 4:.0f}" fill="{colour}">'
            f"{escape(label(t.task_id))}</text></g>"
        )
        if link_prefix is not None and t.task_id in states:
            node = f'<a href="{link_prefix}{quote(t.task_id, safe="")}">{node}</a>'
        out.append(node)
    out.append("</svg>")
    return Markup("".join(out))
