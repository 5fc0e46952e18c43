"""The scheduler's Prometheus metrics, served on `/metrics` by `miniflow.scheduler.ops_server`.

One registry per process, owned here rather than prometheus-client's global one, so
`/metrics` shows miniflow's series only and importing a user's DAG that registers its
own metrics cannot collide with ours. Only the scheduler package records into it: the
store and the worker never import prometheus (the worker runs in slim pods and its
outcome reaches the scheduler anyway, through the database and the exit event).

Names follow Prometheus conventions: `miniflow_` prefix, base units, `_total` on
counters (prometheus-client appends it). Label values are few and fixed (states,
launcher names, exit reasons, finding kinds), never ids.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.launchers import stats as launcher_stats
from miniflow.store import states

# No `<name>_created` series next to each counter: in the text format each is one more
# series per label set that no alert or dashboard of ours reads.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

REGISTRY = CollectorRegistry()

TASK_INSTANCES_FINISHED = Counter(
    "miniflow_task_instances_finished",
    "Task instances that reached a final state (success, failed, upstream_failed, skipped).",
    ["state"],
    registry=REGISTRY,
)
ATTEMPTS_LAUNCHED = Counter(
    "miniflow_attempts_launched",
    "Attempts handed to a launcher that accepted them (a pod created, a process started).",
    ["launcher"],
    registry=REGISTRY,
)
ATTEMPT_EXITS = Counter(
    "miniflow_attempt_exits",
    "Attempts whose end the scheduler recorded, by reason (Completed, Error, OOMKilled, "
    "Lost, heartbeat lost, timeout, ...).",
    ["reason"],
    registry=REGISTRY,
)
ROUND_DURATION = Histogram(
    "miniflow_scheduler_round_duration_seconds",
    "Duration of one round of a scheduler loop (tick: the whole round; parse, sanity: "
    "their part of it).",
    ["loop"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
SANITY_FINDINGS = Counter(
    "miniflow_sanity_findings",
    "What the sanity loop found and acted on, by kind (zombie, timeout, queued_timeout, "
    "lost, orphan, adopted, stopped).",
    ["kind"],
    registry=REGISTRY,
)
TRIES_IN_FLIGHT = Gauge(
    "miniflow_tries_in_flight",
    "Tries this scheduler owns that are queued or running.",
    registry=REGISTRY,
)
LIVE_SCHEDULERS = Gauge(
    "miniflow_scheduler_instances_live",
    "Live scheduler instances (this one included) as of this one's last heartbeat.",
    registry=REGISTRY,
)
SANITY_LOCK_HELD = Gauge(
    "miniflow_scheduler_sanity_lock_held",
    "1 while this scheduler holds the sanity lock (the one that adopts what dead schedulers "
    "left: the leader among several), else 0; as of its last sanity round.",
    registry=REGISTRY,
)
ADOPTIONS = Counter(
    "miniflow_adoptions",
    "Tries this scheduler adopted from a scheduler that died or stopped.",
    registry=REGISTRY,
)

TASK_INSTANCES = Gauge(
    "miniflow_task_instances",
    "Task instances in each state, over the whole database (the same from every scheduler: "
    "aggregate with max, not sum). Refreshed at most every few seconds.",
    ["state"],
    registry=REGISTRY,
)
RUNS = Gauge(
    "miniflow_runs",
    "DAG runs in each state, over the whole database (the same from every scheduler).",
    ["state"],
    registry=REGISTRY,
)
DB_STATEMENT_DURATION = Histogram(
    "miniflow_db_statement_duration_seconds",
    "Duration of the database statements of this scheduler, by kind (select, insert, "
    "update, delete, other).",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
    registry=REGISTRY,
)

TI_STATES = states.TASK_STATES
RUN_STATES = (states.RUN_QUEUED, states.RUN_RUNNING, states.RUN_SUCCESS, states.RUN_FAILED)


_SHOWN: dict[str, set[str]] = {"task_instances": set(TI_STATES), "runs": set(RUN_STATES)}
"""States each gauge has shown: one no longer present goes back to 0 rather than vanish."""


def set_state_counts(task_instances: dict[str, int], runs: dict[str, int]) -> None:
    """The state gauges from fresh counts."""
    for name, gauge, counts in (
        ("task_instances", TASK_INSTANCES, task_instances),
        ("runs", RUNS, runs),
    ):
        shown = _SHOWN[name]
        shown.update(counts)
        for state in shown:
            gauge.labels(state).set(counts.get(state, 0))


class _KubeCollector(Collector):
    """The Kubernetes launcher's counts (`miniflow.launchers.stats`), read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        kube = launcher_stats.KUBE
        errors = CounterMetricFamily(
            "miniflow_kube_api_errors",
            "Error answers of the Kubernetes API, by HTTP status code (`connection`: no answer).",
            labels=["code"],
        )
        for code, n in sorted(kube.api_errors.items()):
            errors.add_metric([code], n)
        yield errors
        yield CounterMetricFamily(
            "miniflow_kube_watch_restarts",
            "Pod watch streams that ended early (dropped, 410 Gone, failed) and were restarted.",
            value=kube.watch_restarts,
        )
        yield CounterMetricFamily(
            "miniflow_kube_relists",
            "Full lists of a namespace's pods (each watch's first list included).",
            value=kube.relists,
        )


REGISTRY.register(_KubeCollector())

_STARTED = "miniflow_statement_started"


def statement_kind(statement: str) -> str:
    """select / insert / update / delete / other: the label, never the SQL itself."""
    word = statement.lstrip().split(None, 1)[0].lower() if statement.strip() else ""
    if word == "with":  # a CTE: what follows decides, but a label this coarse need not know
        return "select"
    return word if word in ("select", "insert", "update", "delete") else "other"


def instrument(engine: AsyncEngine) -> None:
    """Time every statement of `engine` (SQLAlchemy cursor events; once per engine)."""
    sync = engine.sync_engine
    if event.contains(sync, "before_cursor_execute", _before):
        return
    event.listen(sync, "before_cursor_execute", _before)
    event.listen(sync, "after_cursor_execute", _after)
    event.listen(sync, "handle_error", _failed)


def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    conn.info.setdefault(_STARTED, []).append(time.perf_counter())


def _after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    started = conn.info.get(_STARTED)
    if started:
        DB_STATEMENT_DURATION.labels(statement_kind(statement)).observe(
            time.perf_counter() - started.pop()
        )


def _failed(context: Any) -> None:
    """A failed statement has no `after_cursor_execute`: drop its start, time nothing."""
    conn = context.connection
    started = conn.info.get(_STARTED) if conn is not None else None
    if started:
        started.pop()


SANITY_KINDS = {
    "zombies": "zombie",
    "timeouts": "timeout",
    "queued_timeouts": "queued_timeout",
    "lost": "lost",
    "orphans_killed": "orphan",
    "adopted": "adopted",
    "stopped": "stopped",
}
"""`sanity.Findings` field → the `kind` label."""

for _kind in SANITY_KINDS.values():
    SANITY_FINDINGS.labels(_kind)  # every kind shows from the start, at 0


def exit_reason(reason: str | None, exit_code: int | None) -> str:
    """The `reason` label of an exit: the launcher's reason, else what the code says."""
    if reason:
        return reason
    return "Completed" if exit_code == 0 else "Error"
