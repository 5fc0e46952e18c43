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

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

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
    "lost, orphan, adopted).",
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
ADOPTIONS = Counter(
    "miniflow_adoptions",
    "Tries this scheduler adopted from a scheduler that died or stopped.",
    registry=REGISTRY,
)

SANITY_KINDS = {
    "zombies": "zombie",
    "timeouts": "timeout",
    "queued_timeouts": "queued_timeout",
    "lost": "lost",
    "orphans_killed": "orphan",
    "adopted": "adopted",
}
"""`sanity.Findings` field → the `kind` label."""

for _kind in SANITY_KINDS.values():
    SANITY_FINDINGS.labels(_kind)  # every kind shows from the start, at 0


def exit_reason(reason: str | None, exit_code: int | None) -> str:
    """The `reason` label of an exit: the launcher's reason, else what the code says."""
    if reason:
        return reason
    return "Completed" if exit_code == 0 else "Error"
