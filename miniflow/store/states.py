"""Task-instance and run states, and which ones count as finished."""

from __future__ import annotations

NONE = "none"
SCHEDULED = "scheduled"
QUEUED = "queued"
RUNNING = "running"
SUCCESS = "success"
FAILED = "failed"
UP_FOR_RETRY = "up_for_retry"
UPSTREAM_FAILED = "upstream_failed"
SKIPPED = "skipped"
# A sensor between pokes (`@task.sensor(mode="reschedule")`): no process, no slot; due again
# at `next_retry_at`.
UP_FOR_RESCHEDULE = "up_for_reschedule"
# A mapped task's own row (map_index -1) once it may run: its mapped instances (rows with
# map_index 0..n-1) run instead; it ends with their combined outcome (`store.mapping`).
MAPPED = "mapped"

TASK_STATES = (
    NONE,
    SCHEDULED,
    QUEUED,
    RUNNING,
    SUCCESS,
    FAILED,
    UP_FOR_RETRY,
    UPSTREAM_FAILED,
    SKIPPED,
    UP_FOR_RESCHEDULE,
    MAPPED,
)
"""Every state a task instance can be in."""

FINISHED = frozenset({SUCCESS, FAILED, UPSTREAM_FAILED, SKIPPED})
ACTIVE = frozenset({QUEUED, RUNNING})  # holding a parallelism slot
FAILED_LIKE = frozenset({FAILED, UPSTREAM_FAILED})

RUN_QUEUED = "queued"
RUN_RUNNING = "running"
RUN_SUCCESS = "success"
RUN_FAILED = "failed"
RUN_FINISHED = frozenset({RUN_SUCCESS, RUN_FAILED})

RUN_TYPE_SCHEDULED = "scheduled"
RUN_TYPE_MANUAL = "manual"
RUN_TYPE_TEST = "test"  # `miniflow dags test`: a later test of the same date replaces it
