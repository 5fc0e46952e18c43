"""Create due scheduled runs from cron timetables and start queued runs.

Runs are created `queued` and started in logical-date order while the DAG is
under `max_active_runs`, so a catchup of a year of dailies never floods the
scheduler: at most `max_active_runs` exist unfinished at once.

A scheduled run is created from the DAG's current version (the `dag` row) and
keeps it; starting a queued run reads the limit from the run's own version.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.schedule import DataInterval, Timetable
from miniflow.authoring.serialized import readable
from miniflow.scheduler.dagcache import DagCache
from miniflow.store import dags as store_dags
from miniflow.store import runs as store_runs
from miniflow.store import states

log = logging.getLogger("miniflow.scheduler.runs")


def scheduled_run_id(logical_date: datetime) -> str:
    return f"scheduled__{logical_date.isoformat()}"


async def create_due_runs(session: AsyncSession, now: datetime) -> int:
    """Create every due scheduled run the limits allow; returns how many."""
    created = 0
    rows = await store_dags.schedulable_dags(session)
    if not rows:
        return 0
    last = await store_runs.last_scheduled_intervals(session)
    active = await store_runs.run_counts(session)
    for row in rows:
        dag = readable(row.serialized)
        try:
            timetable = Timetable.from_serialized(dag)
        except ValueError as exc:
            log.error("DAG %s: bad schedule: %s", row.dag_id, exc)
            continue
        previous = DataInterval(*last[row.dag_id]) if row.dag_id in last else None
        count = active.get(row.dag_id, 0)
        interval = timetable.next_scheduled(previous, now)
        while interval is not None and Timetable.is_due(interval, now):
            if count >= dag["max_active_runs"]:
                break
            try:
                await store_runs.create_run(
                    session,
                    dag=dag,
                    run_id=scheduled_run_id(interval.start),
                    run_type=states.RUN_TYPE_SCHEDULED,
                    logical_date=interval.start,
                    interval=(interval.start, interval.end),
                    conf={},
                    now=now,
                    dag_hash=row.dag_hash,
                )
                created += 1
            except store_runs.RunExists:
                pass  # another scheduler created it first: same run, nothing to do
            count += 1
            interval = timetable.next_scheduled(interval, now)
        start, end = (interval.start, interval.end) if interval else (None, None)
        if (row.next_interval_start, row.next_interval_end) != (start, end):
            await store_dags.set_next_interval(session, row.dag_id, start, end)
    return created


async def start_queued_runs(
    session: AsyncSession, cache: DagCache, now: datetime, only_run_pk: int | None
) -> set[int]:
    """queued → running while each DAG is under max_active_runs; returns started pks."""
    queued = await store_runs.queued_runs(session)
    if only_run_pk is not None:
        queued = [r for r in queued if r.id == only_run_pk]
    if not queued:
        return set()
    # `max_active_runs` is global: two schedulers counting running runs at once would
    # each start one more.
    await store_runs.serialize_run_starts(session)
    versions = await cache.for_runs(session, queued)
    running = {dag_id: n for dag_id, n in (await _running_counts(session)).items()}
    # Pausing is the DAG's state, not its version's: read it from the dag rows.
    paused = await store_dags.paused(session, [r.dag_id for r in queued])
    started: set[int] = set()
    for run in queued:
        entry = versions.get(run.id)
        if entry is None:
            continue
        if run.dag_id in paused and run.run_type == states.RUN_TYPE_SCHEDULED:
            continue
        if running.get(run.dag_id, 0) >= entry.dag["max_active_runs"]:
            continue
        if await store_runs.set_state(
            session, run.id, expected=states.RUN_QUEUED, state=states.RUN_RUNNING, now=now
        ):
            running[run.dag_id] = running.get(run.dag_id, 0) + 1
            started.add(run.id)
    return started


async def _running_counts(session: AsyncSession) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in await store_runs.running_runs(session):
        counts[run.dag_id] = counts.get(run.dag_id, 0) + 1
    return counts
