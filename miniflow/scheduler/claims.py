"""Claim scheduled task instances within the limits and hand them to the launcher.

One round claims a batch (priority first, then the oldest run; `FOR UPDATE SKIP
LOCKED` on Postgres so several schedulers never claim the same row; an advisory
lock around the count and the claim so limits hold across schedulers; DAGs and
pools at their limit are left out of the next candidate window so they cannot
starve others), renders each spec, launches the batch, and records what could
not start. The claim is part of the round's transaction (`claim`); launching
happens after it commits (`launch`): a scheduler that dies in between leaves queued
tries that the next one adopts (reported Lost, relaunched without using a retry).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.mapping import apply_map_args
from miniflow.authoring.templates import needs_dag_file
from miniflow.authoring.xcom import XComData, XComError, check_value, uses_xcom
from miniflow.errors import TemplateError
from miniflow.launchers.base import AttemptKey, LaunchResult, TaskSpec
from miniflow.retries import failure_outcome
from miniflow.scheduler import metrics, relaunch
from miniflow.scheduler.child_render import Rendered, RenderItem
from miniflow.scheduler.dagcache import CachedDag
from miniflow.scheduler.events import TaskEnd, callbacks_due
from miniflow.scheduler.flights import RoundDeps
from miniflow.scheduler.round_records import InFlight, RunInfoCache, TickStats
from miniflow.scheduler.specs import build_spec, render_fields
from miniflow.scheduler.turns import Turn, TurnRule
from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import instances as store_instances
from miniflow.store import mapping as store_mapping
from miniflow.store import past_runs, states, wakeup
from miniflow.store import pools as store_pools
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from miniflow.store import xcom as store_xcom

LAUNCH_FAILED = "LaunchFailed"
"""The reason on the attempt of a try that never started (template error, refused launch)."""

log = logging.getLogger("miniflow.scheduler")


@dataclass(slots=True)
class Claimed:
    """Tries claimed in a round's transaction, to launch once it has committed."""

    chosen: list[store_tis.Candidate]
    claimed: dict[int, int]
    """{task instance id: try number}"""
    cached: dict[int, CachedDag]
    xcoms: dict[int, XComData]
    made_at: float = field(default_factory=time.monotonic)
    """When they were claimed (monotonic): see `_still_ours`."""


async def claim(
    deps: RoundDeps,
    session: AsyncSession,
    share: int,
    only_run_pk: int | None,
    now: datetime,
    *,
    turns: TurnRule | None = None,
) -> Claimed | None:
    """Claim at most `share` more tries (this instance's part of the parallelism) of the
    run `only_run_pk` (`dags test`) or of every run, in the caller's transaction (the
    round's: one commit records the exits and the claims they made possible). Among
    live peers (`turns`), less or nothing unless it is this instance's turn.

    Nothing is launched here: `launch` does that after the commit."""
    if share <= 0:
        return None  # its share is in flight: no statement, no lock
    await store_tis.serialize_claims(session)
    first: list[store_tis.Candidate] | None = None
    if turns is None:
        # Alone: the counts come with the first window, whose size cannot wait for them
        # (`share` bounds the room; a window larger than the room only reads more rows).
        found = await store_tis.counts_and_candidates(session, _window(share), now)
        if found is None:
            return None
        (total, by_dag, by_pool), first = found
    else:
        total, by_dag, by_pool = await store_tis.active_counts(session)
    room = deps.settings.parallelism - total
    if room <= 0:
        return None
    if turns is not None:
        share = await _turn_share(deps, session, turns, share, room, now)
    free = min(room, share)
    if free <= 0:
        return None
    limits = _Limits(dict(by_dag), dict(by_pool))
    chosen: list[store_tis.Candidate] = []
    cached: dict[int, CachedDag] = {}
    for _ in range(MAX_CANDIDATE_QUERIES):
        if first is not None:
            candidates, first = first, None
        else:
            candidates = await store_tis.scheduled_candidates(
                session,
                limit=_window(free - len(chosen)),
                now=now,
                skip_dags=limits.full_dags,
                skip_pools=limits.full_pools,
                skip_ids=[c.id for c in chosen] + limits.held_ids,
            )
        if only_run_pk is not None:
            candidates = [c for c in candidates if c.run_pk == only_run_pk]
        if not candidates:
            break
        cached.update(await deps.dags.for_run_pks(session, {c.run_pk for c in candidates}))
        candidates, held_by_past = await _past_allows(session, candidates, cached)
        limits.held_ids.extend(held_by_past)
        candidates = await _complete_empty(deps, session, candidates, now)
        if limits.slots is None and any(c.pool is not None for c in candidates):
            limits.slots = await store_pools.slots(session)
        if limits.mapped_used is None and any(c.map_index >= 0 for c in candidates):
            limits.mapped_used = await store_mapping.active_mapped(session)
        newly_full = limits.pick(candidates, free - len(chosen), cached, chosen)
        newly_full |= bool(held_by_past)  # a new window may find tasks that can run
        if len(chosen) >= free or not newly_full:
            break  # full, or nothing was held back by a limit: no one else is waiting
    if not chosen:
        return None
    claimed = await store_attempts.claim(
        session,
        [(c.id, c.dag_id, c.run_id, c.task_id, c.map_index) for c in chosen],
        launcher=deps.launcher.name,
        scheduler_id=deps.scheduler_id,
        now=now,
    )
    chosen = [c for c in chosen if c.id in claimed]
    missing = deps.flights.run_infos.missing(c.run_pk for c in chosen)
    if missing:
        deps.flights.run_infos.add(await store_runs.running_runs(session, missing))
    xcoms = await _xcom_for_templates(session, chosen, cached, deps.flights.run_infos)
    return Claimed(chosen, claimed, cached, xcoms)


def _window(wanted: int) -> int:
    """Candidates to read for `wanted` free slots: more, for those a limit holds back."""
    return wanted * 2 + 16


async def launch(deps: RoundDeps, claims: Claimed | None, stats: TickStats) -> list[TaskEnd]:
    """Launch what `claim` claimed (its transaction committed), then record in one small
    transaction the handles, the starts the launcher already reported (a local process
    is let go in `launch` itself: recording its start here spares the scheduler a round
    per task) and what could not start.

    Returns the tries that failed before they started whose callbacks are due (committed)."""
    if claims is None:
        return []
    chosen, claimed, cached, xcoms = claims.chosen, claims.claimed, claims.cached, claims.xcoms
    by_child = await _render_in_children(deps, chosen, cached, claimed, xcoms)
    specs: list[TaskSpec] = []
    failures: list[_LaunchFailure] = []
    pushes: list[_Pushes] = []
    for c in chosen:
        entry = cached[c.run_pk]
        task = entry.dag["tasks"].get(c.task_id)
        key = AttemptKey(c.dag_id, c.run_id, c.task_id, claimed[c.id], c.map_index)
        deps.flights.tries[key] = InFlight(c.id, c.run_pk, c.kind, task["retries"] if task else 0)
        if task is None:
            failures.append(_LaunchFailure(c, claimed[c.id], "task is no longer defined"))
            continue
        run = deps.flights.run_infos.get(c.run_pk)
        if run is None:  # ended between the candidate query and the read of runs
            failures.append(_LaunchFailure(c, claimed[c.id], "the run is no longer running"))
            continue
        rendered = by_child.get(c.id)
        if isinstance(rendered, str):  # a template error, or the child's failure
            failures.append(_LaunchFailure(c, claimed[c.id], rendered))
            continue
        try:
            if rendered is None:
                rendered = render_fields(
                    entry.dag,
                    run,
                    c.task_id,
                    claimed[c.id],
                    map_index=c.map_index,
                    map_args=c.map_args,
                    xcom=xcoms.get(c.run_pk),
                )
            spec = build_spec(
                entry.dag,
                run,
                c.task_id,
                claimed[c.id],
                map_index=c.map_index,
                map_args=c.map_args,
                rendered=rendered,
            )
        except TemplateError as exc:
            failures.append(_LaunchFailure(c, claimed[c.id], str(exc)))
            continue
        if rendered.pushes:
            pushes.append(_Pushes(c, claimed[c.id], spec, rendered.pushes))
        else:
            specs.append(spec)
    if pushes:
        specs += await _store_template_pushes(deps, pushes, deps.clock.now(), failures)
    if specs and time.monotonic() - claims.made_at > deps.settings.instance_timeout / 4:
        specs = await _still_ours(deps, specs)
    results = await deps.launcher.launch(specs) if specs else []
    if any(r.paused for r in results):
        results = await _after_a_pause(deps, specs, results)
    handles: list[tuple[int, int, str]] = []
    for result in results:
        flight = deps.flights.tries.get(result.key)
        if flight is None:
            continue
        if result.handle is not None:
            handles.append((flight.ti_id, result.key.try_number, result.handle))
        elif result.error is not None:
            failures.append(
                _LaunchFailure(
                    _candidate_of(result.key, flight),
                    result.key.try_number,
                    result.error,
                    result.retryable,
                )
            )
    stats.launched = len(handles)
    metrics.ATTEMPTS_LAUNCHED.labels(deps.launcher.name).inc(len(handles))
    # Handles are written right after the launch: a scheduler that dies later leaves
    # tries its successor finds by their handles. Their starts need no fence (events'
    # `_fence`): this instance claimed them moments ago, and a start is no outcome.
    flights = deps.flights.tries
    started = [
        (flights[e.key].ti_id, e.key.try_number, e.handle, e.at)
        for e in deps.take_started({r.key for r in results if r.handle is not None})
        if e.key in flights
    ]
    known = {(ti_id, try_number) for ti_id, try_number, _, _ in started}
    handles = [h for h in handles if (h[0], h[1]) not in known]
    due: list[TaskEnd] = []
    if started and not (failures or handles):
        async with store_engine.one_statement(deps.sessions) as session:
            await store_attempts.record_started(session, started)  # the handle too
    elif failures or handles or started:
        async with store_engine.transaction(deps.sessions) as session:
            await store_attempts.record_started(session, started)
            await store_attempts.set_handles(session, handles)
            if failures:
                due = await fail_before_start(deps, session, failures, stats)
    if failures:
        stats.changed += len(failures)
    return due


async def _turn_share(
    deps: RoundDeps, session: AsyncSession, rule: TurnRule, share: int, room: int, now: datetime
) -> int:
    """What this instance may claim now among live peers (`scheduler.turns`)."""
    if rule.held_until is not None and now < rule.held_until:
        return share  # its own turn, which no peer may take before it is over: no query
    found, newcomers = await store_instances.claim_turns(
        session, now, deps.settings.instance_timeout
    )
    turn = rule.decide(found, now, newcomers)
    if turn is Turn.WAIT:
        return 0
    if turn is Turn.HAND_ON:  # the next holder may be idle: wake it
        await wakeup.announce(session, wakeup.turn_topic(rule.following(found, newcomers)))
        rule.handed_on = True
        return 0
    if turn is Turn.TAKE:
        await store_instances.take_turn(session, deps.scheduler_id, now)
        rule.held_until = now + timedelta(seconds=rule.length)
    return share


async def _still_ours(deps: RoundDeps, specs: list[TaskSpec]) -> list[TaskSpec]:
    """The specs whose attempts this instance still owns, open. A scheduler paused (or
    starved of CPU) between its claim's commit and the launch may have been taken for
    dead meanwhile: a peer then adopted these tries and may have relaunched them under
    the same try number; launching them here too would run a Bash or Pod task twice (a
    worker's own claim guards only Python tasks). Asked only after such a gap, so a
    round pays no statement for it."""
    flights = deps.flights.tries
    keys = [(flights[s.key].ti_id, s.key.try_number) for s in specs if s.key in flights]
    async with store_engine.transaction(deps.sessions) as session:
        mine = await store_attempts.open_and_owned(session, keys, deps.scheduler_id)
    kept: list[TaskSpec] = []
    for spec in specs:
        flight = flights.get(spec.key)
        if flight is not None and (flight.ti_id, spec.key.try_number) in mine:
            kept.append(spec)
            continue
        flights.pop(spec.key, None)
        log.warning(
            "%s: claimed before a pause, adopted by another scheduler meanwhile: not launched",
            spec.key,
        )
    return kept


async def _after_a_pause(
    deps: RoundDeps, specs: list[TaskSpec], results: list[LaunchResult]
) -> list[LaunchResult]:
    """The launcher found itself paused between deciding some launches and making them:
    launch those still this instance's again (a fresh decision), drop the others."""
    paused = {r.key for r in results if r.paused}
    again = await _still_ours(
        deps, [dataclasses.replace(s, decided_at=time.time()) for s in specs if s.key in paused]
    )
    relaunched = await deps.launcher.launch(again) if again else []
    return [r for r in results if not r.paused] + relaunched


_PAST_OK = frozenset({states.SUCCESS, states.SKIPPED})


async def _past_allows(
    session: AsyncSession,
    candidates: Sequence[store_tis.Candidate],
    cached: Mapping[int, CachedDag],
) -> tuple[list[store_tis.Candidate], list[int]]:
    """The candidates `depends_on_past` lets run, and the ids of those it holds: the same
    task (same map index) of the previous run has not succeeded or been skipped, or with
    `wait_for_downstream` its direct downstream tasks there have not. No previous run, or
    no instance of the task in it (a task added since), holds nothing (Airflow's rules)."""
    allowed: list[store_tis.Candidate] = []
    held: list[int] = []
    for c in candidates:
        entry = cached.get(c.run_pk)
        task = entry.dag["tasks"].get(c.task_id) if entry is not None else None
        if entry is None or task is None or not task.get("depends_on_past"):
            allowed.append(c)
            continue
        downstream = (
            [t for t, d in entry.dag["tasks"].items() if c.task_id in d["upstream"]]
            if task.get("wait_for_downstream")
            else []
        )
        found = await past_runs.previous_states(session, c.run_pk, [c.task_id, *downstream])
        own = None if found is None else found.get((c.task_id, c.map_index))
        if found is None or own is None:
            allowed.append(c)
            continue
        after = [s for (t, _), s in found.items() if t in downstream]
        missing = set(downstream) - {t for (t, _) in found}
        if own not in _PAST_OK or missing or any(s not in _PAST_OK for s in after):
            held.append(c.id)
        else:
            allowed.append(c)
    return allowed, held


async def _complete_empty(
    deps: RoundDeps,
    session: AsyncSession,
    candidates: Sequence[store_tis.Candidate],
    now: datetime,
) -> list[store_tis.Candidate]:
    """Complete the `empty` candidates the past let run (`readiness.completes_when_ready`
    left them scheduled for this check) without a try, as readiness completes the others;
    the rest, to launch. Their runs are read in full next round: their downstream."""
    empty = [c for c in candidates if c.kind == "empty"]
    if not empty:
        return list(candidates)
    await store_tis.set_states(
        session,
        [(c.id, states.SCHEDULED, states.SUCCESS) for c in empty],
        now,
        running_runs_only=True,
    )
    for run_pk in {c.run_pk for c in empty}:
        deps.mark_dirty(run_pk)
    return [c for c in candidates if c.kind != "empty"]


@dataclass(frozen=True, slots=True)
class _Pushes:
    """A try whose Bash templates pushed XCom (`{{ ti.xcom_push(...) }}`)."""

    candidate: store_tis.Candidate
    try_number: int
    spec: TaskSpec
    values: dict[str, Any]


async def _store_template_pushes(
    deps: RoundDeps, tries: Sequence[_Pushes], now: datetime, failures: list[_LaunchFailure]
) -> list[TaskSpec]:
    """Store what the tries' templates pushed, before they are launched (their commands
    may rely on it being there, as Airflow's rendering guarantees); the specs to launch.
    A value that is not JSON, or too large, fails its try before it starts."""
    ready: list[TaskSpec] = []
    async with store_engine.transaction(deps.sessions) as session:
        for item in tries:
            task_id = item.candidate.task_id
            try:
                values = {
                    key: check_value(
                        value,
                        deps.settings.max_result_bytes,
                        f"task {task_id!r}: xcom {key!r} pushed by a template",
                    )
                    for key, value in item.values.items()
                }
            except XComError as exc:
                failures.append(_LaunchFailure(item.candidate, item.try_number, str(exc)))
                continue
            for key, value in values.items():
                await store_xcom.push(session, item.candidate.id, key, value, now)
            ready.append(item.spec)
    return ready


async def _render_in_children(
    deps: RoundDeps,
    chosen: Sequence[store_tis.Candidate],
    cached: Mapping[int, CachedDag],
    claimed: Mapping[int, int],
    xcoms: Mapping[int, XComData],
) -> dict[int, Rendered]:
    """The fields (or error) of the chosen tries whose DAG has function macros or filters,
    rendered by children that import the DAG files (`child_render`); by task instance id."""
    picked: list[tuple[int, RenderItem]] = []
    for c in chosen:
        dag = cached[c.run_pk].dag
        run = deps.flights.run_infos.get(c.run_pk)
        if not needs_dag_file(dag) or c.task_id not in dag["tasks"] or run is None:
            continue
        item = RenderItem(
            dag, run, c.task_id, claimed[c.id], c.map_index, c.map_args, xcoms.get(c.run_pk)
        )
        picked.append((c.id, item))
    if not picked:
        return {}
    if deps.renderer is None:  # no DAGs folder: nothing can import the file
        why = "this scheduler has no DAGs folder to import the DAG's macros/filters from"
        return {ti_id: why for ti_id, _ in picked}
    rendered = await deps.renderer.render([item for _, item in picked])
    return {ti_id: r for (ti_id, _), r in zip(picked, rendered, strict=True)}


async def _xcom_for_templates(
    session: AsyncSession,
    chosen: Sequence[store_tis.Candidate],
    cached: Mapping[int, CachedDag],
    runs: RunInfoCache,
) -> dict[int, XComData]:
    """The XCom of the runs whose chosen tasks' templates pull it (read once per run)."""
    wanted: set[int] = set()
    for c in chosen:
        task = cached[c.run_pk].dag["tasks"].get(c.task_id)
        if task is not None and uses_xcom(apply_map_args(task, c.map_args)):
            wanted.add(c.run_pk)
    found = {pk: runs.get(pk) for pk in wanted}
    return {
        pk: await store_xcom.load(session, run.dag_id, run.run_id)
        for pk, run in found.items()
        if run is not None
    }


async def fail_before_start(
    deps: RoundDeps,
    session: AsyncSession,
    failures: Sequence[_LaunchFailure],
    stats: TickStats,
) -> list[TaskEnd]:
    """Tries that never started: a template error or a refused launch (counted in
    `stats` as exits with reason LaunchFailed, and by final state where they have one).
    Returns those whose task callbacks are due once the transaction has committed.

    A launch refused for a transient reason (the API server still busy after the
    launcher's own retries) is launched again under the same try, without using
    up one of the task's retries, up to `max_launch_attempts` (`relaunch`).
    """
    now = deps.clock.now()
    outcomes, ends = [], []
    rows = await store_tis.fetch(session, [f.candidate.id for f in failures])
    not_started: list[relaunch.NotStarted] = []
    versions = await deps.dags.for_run_pks(session, {f.candidate.run_pk for f in failures})
    for f in failures:
        c = f.candidate
        entry = versions.get(c.run_pk)
        task = entry.dag["tasks"].get(c.task_id) if entry else None
        row = rows.get(c.id)
        max_tries = row.max_tries if row else 0
        if f.retryable:
            label = f"{c.dag_id}/{c.run_id}/{c.task_id}#{f.try_number}"
            not_started.append(
                relaunch.NotStarted(c.id, f.try_number, max_tries, task, label, f.error)
            )
        else:
            outcomes.append(
                failure_outcome(
                    ti_id=c.id,
                    try_number=f.try_number,
                    max_tries=max_tries,
                    task=task,
                    now=now,
                    exit_code=None,
                    error=f.error,
                )
            )
    decided = await relaunch.relaunch_or_fail(
        session, not_started, cap=deps.settings.max_launch_attempts, now=now
    )
    outcomes += decided.failed
    for outcome in outcomes:
        ends.append(
            store_attempts.AttemptEnd(
                outcome.ti_id,
                outcome.try_number,
                outcome.state,
                None,
                LAUNCH_FAILED,
                outcome.error,
                None,
                now,
            )
        )
    for f in failures:
        c = f.candidate
        deps.flights.tries.pop(
            AttemptKey(c.dag_id, c.run_id, c.task_id, f.try_number, c.map_index), None
        )
        deps.mark_dirty(c.run_pk)
        log.warning(
            "%s/%s/%s try %d did not start: %s",
            c.dag_id,
            c.run_id,
            c.task_id,
            f.try_number,
            f.error,
        )
    changed = await store_tis.finish(session, outcomes, now)
    await store_attempts.close(session, ends)
    stats.exits[LAUNCH_FAILED] += len(ends)
    stats.finished.update(
        o.state for o in outcomes if o.ti_id in changed and o.state in states.FINISHED
    )
    by_id = {f.candidate.id: f.candidate for f in failures}
    ended = [
        (_key(by_id[o.ti_id], o.try_number), by_id[o.ti_id].run_pk, o.state, o.error)
        for o in outcomes
        if o.ti_id in changed
    ]
    return await callbacks_due(deps, session, versions, ended)


def _key(c: store_tis.Candidate, try_number: int) -> AttemptKey:
    return AttemptKey(c.dag_id, c.run_id, c.task_id, try_number, c.map_index)


@dataclass(frozen=True, slots=True)
class _LaunchFailure:
    candidate: store_tis.Candidate
    try_number: int
    error: str
    retryable: bool = False


def _candidate_of(key: AttemptKey, flight: InFlight) -> store_tis.Candidate:
    return store_tis.Candidate(
        flight.ti_id,
        flight.run_pk,
        key.dag_id,
        key.run_id,
        key.task_id,
        flight.kind,
        key.try_number,
        0,
        None,
        key.map_index,
    )


MAX_CANDIDATE_QUERIES = 4
"""Candidate windows one claim may look at while limits hold candidates back."""


@dataclass(slots=True)
class _Limits:
    """Per-DAG and per-pool use while one claim picks, and who is at the limit."""

    dag_used: dict[str, int]
    pool_used: dict[str, int]
    slots: dict[str, int] | None = None
    """Pool sizes, read once a candidate in a pool shows up."""
    full_dags: set[str] = field(default_factory=set)
    full_pools: set[str] = field(default_factory=set)
    # (dag_id, task_id) → its mapped instances queued or running (read once a candidate is
    # a mapped instance), for `max_active_mapped`; ids held back by it, left out of the
    # next candidate window
    mapped_used: dict[tuple[str, str], int] | None = None
    held_ids: list[int] = field(default_factory=list)

    def pick(
        self,
        candidates: Sequence[store_tis.Candidate],
        free: int,
        cached: Mapping[int, CachedDag],
        chosen: list[store_tis.Candidate],
    ) -> bool:
        """Append to `chosen`, in order, what the limits allow (at most `free`); returns
        whether a DAG or pool newly held a candidate back (then a new window may find
        tasks of others)."""
        held_back = False
        taken = 0
        for c in candidates:
            if taken >= free:
                break
            entry = cached.get(c.run_pk)
            if entry is None:
                continue
            task = entry.dag["tasks"].get(c.task_id)
            cap = task.get("max_active_mapped") if task is not None else None
            mapped_key = (c.dag_id, c.task_id)
            if c.map_index >= 0 and cap is not None and self.mapped_used is not None:
                if self.mapped_used.get(mapped_key, 0) >= cap:
                    self.held_ids.append(c.id)
                    held_back = True
                    continue
            if self.dag_used.get(c.dag_id, 0) >= entry.dag["max_active_tasks"]:
                held_back |= c.dag_id not in self.full_dags
                self.full_dags.add(c.dag_id)
                continue
            slots = self.slots or {}
            if c.pool is not None and c.pool not in slots:
                _warn_unknown_pool(c.pool, c.dag_id, c.task_id)
            elif c.pool is not None and self.pool_used.get(c.pool, 0) >= slots[c.pool]:
                held_back |= c.pool not in self.full_pools
                self.full_pools.add(c.pool)
                continue
            self.dag_used[c.dag_id] = self.dag_used.get(c.dag_id, 0) + 1
            if c.map_index >= 0 and self.mapped_used is not None:
                self.mapped_used[mapped_key] = self.mapped_used.get(mapped_key, 0) + 1
            if c.pool is not None:
                self.pool_used[c.pool] = self.pool_used.get(c.pool, 0) + 1
            chosen.append(c)
            taken += 1
        return held_back


_warned_pools: set[str] = set()


def _warn_unknown_pool(pool: str, dag_id: str, task_id: str) -> None:
    """A pool nobody created does not limit anything; say so once per pool."""
    if pool not in _warned_pools:
        _warned_pools.add(pool)
        log.warning(
            "task %s.%s uses pool %r, which does not exist: not limited "
            "(create it with `miniflow pools set %s SLOTS`)",
            dag_id,
            task_id,
            pool,
            pool,
        )
