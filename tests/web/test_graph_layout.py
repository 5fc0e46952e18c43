"""The graph stays readable at 200 tasks: layered, no overlapping nodes, distinct labels,
few crossings (the SVG itself, parsed; the browser test screenshots it)."""

from __future__ import annotations

import itertools
import re
import time

from miniflow.store.browse import TaskSpec
from miniflow.web import graph


def stages(n_stages: int = 10, width: int = 20) -> list[TaskSpec]:
    """`n_stages` x `width` tasks, each after two of the previous stage; long ids that
    differ only at their end, as generated series do."""
    specs = []
    for s in range(n_stages):
        for i in range(width):
            ups = []
            if s:
                prev = f"stage_{s - 1:02d}_extract_customer_partition_"
                ups = [f"{prev}{i:02d}", f"{prev}{(i + 7) % width:02d}"]
            name = f"stage_{s:02d}_extract_customer_partition_{i:02d}"
            specs.append(TaskSpec(name, "bash", ups, "all_success", 0, None))
    return specs


def nodes(svg: str) -> dict[str, tuple[float, float, str]]:
    """task id -> (x, y, label) of each node."""
    found = re.findall(
        r'<g class="node" data-task="([^"]+)".*?<rect x="(\d+)" y="(\d+)".*?>([^<]*)</text>', svg
    )
    return {t: (float(x), float(y), label) for t, x, y, label in found}


def crossings(svg_nodes: dict[str, tuple[float, float, str]], specs: list[TaskSpec]) -> int:
    edges = [
        (svg_nodes[u][1], svg_nodes[t.task_id][1], svg_nodes[u][0])
        for t in specs
        for u in t.upstream
    ]
    count = 0
    for (a1, a2, ax), (b1, b2, bx) in itertools.combinations(edges, 2):
        if ax == bx and (a1 - b1) * (a2 - b2) < 0:
            count += 1
    return count


def test_two_hundred_tasks_are_laid_out_readably() -> None:
    specs = stages()
    started = time.perf_counter()
    svg = str(graph.svg(specs, {}, None))
    assert time.perf_counter() - started < 1.0
    placed = nodes(svg)
    assert len(placed) == 200
    # every edge points right: a task sits in a column after all its upstream tasks
    for t in specs:
        for up in t.upstream:
            assert placed[up][0] < placed[t.task_id][0]
    # no two nodes overlap (same size, distinct slots)
    boxes = {(x, y) for x, y, _ in placed.values()}
    assert len(boxes) == 200
    for (x1, y1), (x2, y2) in itertools.combinations(boxes, 2):
        assert abs(x1 - x2) >= graph.NODE_W or abs(y1 - y2) >= graph.NODE_H
    # labels fit their node and still tell the tasks apart (cut in the middle)
    labels = [label for _, _, label in placed.values()]
    assert all(len(label) <= graph.LABEL_CHARS for label in labels)
    assert len(set(labels)) == 200
    assert placed["stage_03_extract_customer_partition_17"][2] == "stage_03_ex…rtition_17"
    # the sweeps untangle edges: far fewer crossings than in the order tasks were written
    written = {t.task_id: (float(t.task_id[6:8]), float(t.task_id[-2:]), "") for t in specs}
    assert crossings(placed, specs) < crossings(written, specs) * 0.75


def test_a_short_id_is_shown_whole_and_titles_keep_the_whole_id() -> None:
    specs = [
        TaskSpec("extract", "bash", [], "all_success", 0, None),
        TaskSpec("a" * 40, "bash", ["extract"], "all_success", 0, None),
    ]
    svg = str(graph.svg(specs, {"extract": "success"}, "/dags/d/runs/r/tasks/"))
    placed = nodes(svg)
    assert placed["extract"][2] == "extract"
    assert f"<title>{'a' * 40} (bash): none</title>" in svg
    assert '<a href="/dags/d/runs/r/tasks/extract">' in svg
