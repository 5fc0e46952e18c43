"""Trigger rules: what a waiting task becomes, given its upstream tasks' states.

Pure functions over states, so every rule is tested with a table and the
scheduler only feeds it rows. A decision is one of: wait (None), run
(`scheduled`), `skipped` or `upstream_failed` (both finished, and they
propagate downstream in the same pass because tasks are visited in
topological order).

`evaluate_run` decides a whole run from all its states; `Graph` and
`can_decide` let the scheduler decide only downstream of what changed (see
`scheduler.run_views`): a waiting task's decision can change only when one of
its upstream tasks finishes, and then only if that state alone decides it
(`can_decide`) or if it was the last unfinished upstream.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from miniflow.authoring.serialized import SerializedDag, SerializedTask
from miniflow.store import states

_DONE = states.FINISHED

log = logging.getLogger("miniflow.scheduler.readiness")


def decide(
    rule: str, upstream_states: Sequence[str], setup_states: Sequence[str] = ()
) -> str | None:
    """The new state of a `none` task, or None to keep waiting.

    `setup_states`: for a teardown (`all_done_setup_success`), the states of the setup
    tasks upstream of it at any depth; it runs once all its upstream tasks and those
    setups are done if one setup succeeded (or there is none), else it is skipped.

    The rules and their early decisions are Airflow's (`TriggerRuleDep` with
    `flag_upstream_failed`), so a DAG moved from Airflow branches, joins and cleans
    up the same way: e.g. `all_success` is skipped as soon as one upstream is
    skipped, and `none_failed_min_one_success` joins branches back together.
    """
    if rule == "always" or not upstream_states:
        return states.SCHEDULED
    n = len(upstream_states)
    success = sum(s == states.SUCCESS for s in upstream_states)
    skipped = sum(s == states.SKIPPED for s in upstream_states)
    failed_only = sum(s == states.FAILED for s in upstream_states)
    failed = sum(s in states.FAILED_LIKE for s in upstream_states)
    done = sum(s in _DONE for s in upstream_states)
    all_done = done == n
    if rule == "all_success":
        if failed:
            return states.UPSTREAM_FAILED
        if skipped:
            return states.SKIPPED
        return states.SCHEDULED if success == n else None
    if rule == "all_failed":
        if success or skipped:
            return states.SKIPPED
        return states.SCHEDULED if all_done else None
    if rule == "all_done":
        return states.SCHEDULED if all_done else None
    if rule == "all_skipped":
        if success or failed:
            return states.SKIPPED
        return states.SCHEDULED if all_done else None
    if rule == "all_done_setup_success":
        if not all_done or any(s not in _DONE for s in setup_states):
            return None
        if setup_states and states.SUCCESS not in setup_states:
            return states.SKIPPED
        return states.SCHEDULED
    if rule == "all_done_min_one_success":
        if not all_done:
            return None
        if success:
            return states.SCHEDULED
        return states.SKIPPED if skipped == n else states.UPSTREAM_FAILED
    if rule == "one_success":
        if success:
            return states.SCHEDULED
        if not all_done:
            return None
        return states.SKIPPED if skipped == n else states.UPSTREAM_FAILED
    if rule == "one_failed":
        if failed:
            return states.SCHEDULED
        return states.SKIPPED if all_done else None
    if rule == "one_done":
        # Airflow counts `failed` here, not `upstream_failed`: a task that never ran is
        # not "done" in the sense of having an outcome.
        if success or failed_only:
            return states.SCHEDULED
        return states.SKIPPED if all_done else None
    if rule == "none_failed":
        if failed:
            return states.UPSTREAM_FAILED
        return states.SCHEDULED if all_done else None
    if rule == "none_failed_min_one_success":
        if failed:
            return states.UPSTREAM_FAILED
        if skipped == n:
            return states.SKIPPED
        return states.SCHEDULED if all_done else None
    if rule == "none_skipped":
        if skipped:
            return states.SKIPPED
        return states.SCHEDULED if all_done else None
    raise ValueError(f"unknown trigger rule {rule!r}")


def settle(decision: str | None, instant: bool, mapped: bool = False) -> str | None:
    """`decide`'s decision for a task: an `instant` one (`completes_when_ready`) that may
    run has run; a mapped task that may run is `mapped` (the scheduler expands it in the
    same round).

    Completing an empty task here (not through a launch) is what makes it free, and its
    success propagates further down in the same pass like any finished decision.
    """
    if decision == states.SCHEDULED and instant:
        return states.SUCCESS
    if decision == states.SCHEDULED and mapped:
        return states.MAPPED
    return decision


def completes_when_ready(task: SerializedTask) -> bool:
    """An `empty` task completes as soon as its upstream lets it run, without a try;
    unless `depends_on_past` ties it to the previous run, which only the claim reads:
    such a task is scheduled and the claim completes it when the past allows."""
    return task["kind"] == "empty" and not task.get("depends_on_past")


@lru_cache(maxsize=512)
def _topology(
    dag_key: str, edges: tuple[tuple[str, tuple[str, ...]], ...]
) -> tuple[tuple[str, ...], frozenset[str]]:
    order: list[str] = []
    seen: set[str] = set()
    upstream = dict(edges)

    def visit(task_id: str) -> None:
        if task_id in seen:
            return
        seen.add(task_id)
        for up in upstream.get(task_id, ()):
            visit(up)
        order.append(task_id)

    for task_id, _ in edges:
        visit(task_id)
    has_downstream = {up for _, ups in edges for up in ups}
    leaves = frozenset(t for t, _ in edges if t not in has_downstream)
    return tuple(order), leaves


def topology(dag: SerializedDag, dag_hash: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """(tasks in topological order, leaf tasks), cached per DAG version."""
    edges = tuple((tid, tuple(t["upstream"])) for tid, t in dag["tasks"].items())
    return _topology(f"{dag['dag_id']}:{dag_hash}", edges)


@lru_cache(maxsize=256)
def can_decide(rule: str, upstream_state: str) -> bool:
    """True if one upstream in this state decides a waiting task while others still run.

    Every rule that decides before all upstream tasks are done does so because one of
    them is in some state (a failure for `all_success`, a success for `one_success`...),
    so a task needs a look only when such a state appears or its last upstream finishes.
    """
    return decide(rule, [upstream_state, states.RUNNING]) is not None


@dataclass(frozen=True, slots=True)
class Graph:
    """One DAG version's edges, indexed both ways, and its topological order."""

    order: Mapping[str, int]  # task_id → position in a topological order (iterated in it)
    upstream: Mapping[str, tuple[str, ...]]
    downstream: Mapping[str, tuple[str, ...]]
    rules: Mapping[str, str]
    leaves: frozenset[str]
    instant: frozenset[str]  # tasks that complete when they may run (`completes_when_ready`)
    setups: Mapping[str, tuple[str, ...]]  # teardown → the setup tasks upstream of it
    outcome: frozenset[str]  # the tasks whose states decide the run (`outcome_tasks`)
    teardowns: Mapping[str, tuple[str, ...]]  # setup → the teardowns it is a setup of
    mapped: frozenset[str] = frozenset()  # mapped tasks (expanded when they may run)


def teardown_setups(dag: SerializedDag) -> dict[str, tuple[str, ...]]:
    """Each teardown task → the setup tasks upstream of it at any depth (sorted).

    Airflow looks at direct upstream setups only; miniflow at every setup upstream, so
    `s >> work >> t` with a decorated `@task.setup` s and `@task.teardown` t ties them
    without also writing `s >> t`.
    """
    tasks = dag["tasks"]
    out: dict[str, tuple[str, ...]] = {}
    for task_id, task in tasks.items():
        if not task.get("teardown"):
            continue
        seen: set[str] = set()
        todo = list(task["upstream"])
        while todo:
            up = todo.pop()
            if up in seen or up not in tasks:
                continue
            seen.add(up)
            todo.extend(tasks[up]["upstream"])
        out[task_id] = tuple(sorted(u for u in seen if tasks[u].get("setup")))
    return out


def outcome_tasks(dag: SerializedDag, leaves: frozenset[str]) -> frozenset[str]:
    """The tasks whose states decide a finished run: Airflow's "effective leaves".

    A teardown (without `on_failure_fail_dagrun`) does not count, and a task whose only
    downstream tasks are such teardowns counts as a leaf: so `setup >> work >> teardown`
    fails when work fails, and succeeds when only the teardown failed.
    """
    tasks = dag["tasks"]

    def ignorable(task_id: str) -> bool:
        task = tasks[task_id]
        return bool(task.get("teardown")) and not task.get("on_failure_fail_dagrun")

    if not any(ignorable(t) for t in tasks):
        return leaves
    downstream: dict[str, list[str]] = {}
    for task_id, task in tasks.items():
        for up in task["upstream"]:
            downstream.setdefault(up, []).append(task_id)
    found = frozenset(
        t
        for t in tasks
        if not ignorable(t) and all(ignorable(d) for d in downstream.get(t, ()) if d in tasks)
    )
    return found or leaves  # a DAG of teardowns only: its leaves


_GRAPHS: OrderedDict[tuple[str, str], Graph] = OrderedDict()
MAX_GRAPHS = 256


def graph(dag: SerializedDag, dag_hash: str) -> Graph:
    """The version's `Graph`, cached by (dag_id, content hash): a version never changes."""
    key = (dag["dag_id"], dag_hash)
    found = _GRAPHS.get(key)
    if found is not None:
        _GRAPHS.move_to_end(key)
        return found
    order, leaves = topology(dag, dag_hash)
    tasks = dag["tasks"]
    downstream: dict[str, list[str]] = {}
    for task_id, task in tasks.items():
        for up in task["upstream"]:
            downstream.setdefault(up, []).append(task_id)
    setups = teardown_setups(dag)
    ups = {s for ss in setups.values() for s in ss}
    built = Graph(
        order={task_id: i for i, task_id in enumerate(order)},
        upstream={task_id: tuple(task["upstream"]) for task_id, task in tasks.items()},
        downstream={task_id: tuple(down) for task_id, down in downstream.items()},
        rules={task_id: task["trigger_rule"] for task_id, task in tasks.items()},
        leaves=leaves,
        instant=frozenset(t for t, task in tasks.items() if completes_when_ready(task)),
        setups=setups,
        outcome=outcome_tasks(dag, leaves),
        teardowns={s: tuple(sorted(t for t, ss in setups.items() if s in ss)) for s in ups},
        mapped=frozenset(task_id for task_id, task in tasks.items() if "expand" in task),
    )
    _GRAPHS[key] = built
    while len(_GRAPHS) > MAX_GRAPHS:
        _GRAPHS.popitem(last=False)
    return built


def evaluate_run(
    dag: SerializedDag, dag_hash: str, current: Mapping[str, str]
) -> tuple[dict[str, str], str | None]:
    """New states for waiting tasks, and the run's final state if the run is over.

    `dag` is the run's own version, so its tasks are the run's task instances.
    `current` maps task_id → state; tasks missing from `current` are not created,
    and an upstream the run has no row for does not hold its downstream.

    A run never ends `success` while a task sits in `none`: once nothing is
    scheduled, in flight or waiting for a retry, a task still in `none` can never
    run (one pass in topological order already decided everything decidable, e.g.
    a row the version does not define), so the run ends `failed` instead of
    silently skipping it.
    """
    built = graph(dag, dag_hash)  # cached: `topology` would hash every edge again
    view = dict(current)
    changes: dict[str, str] = {}
    for task_id in built.order:  # in topological order (the mapping's insertion order)
        task = dag["tasks"].get(task_id)  # None: an upstream id the version lacks
        if task is None or view.get(task_id) != states.NONE:
            continue
        decision = settle(
            decide(
                task["trigger_rule"],
                [view[u] for u in task["upstream"] if u in view],
                [view[u] for u in built.setups.get(task_id, ()) if u in view],
            ),
            completes_when_ready(task),
            "expand" in task,
        )
        if decision is not None:
            changes[task_id] = decision
            view[task_id] = decision
    if any(s != states.NONE and s not in _DONE for s in view.values()):
        return changes, None  # something is scheduled, in flight or waiting for a retry
    stuck = sorted(t for t, s in view.items() if s == states.NONE)
    if stuck:
        unknown = [t for t in stuck if t not in dag["tasks"]]
        log.error(
            "DAG %s (version %s): task(s) %s can never run%s; the run fails",
            dag["dag_id"],
            dag_hash[:12],
            ", ".join(stuck),
            f" ({', '.join(unknown)} not in the run's version)" if unknown else "",
        )
        return changes, states.RUN_FAILED
    # Rows of tasks the version does not define (finished ones) don't decide the outcome.
    ok = all(view[t] in (states.SUCCESS, states.SKIPPED) for t in built.outcome if t in view)
    return changes, states.RUN_SUCCESS if ok else states.RUN_FAILED
