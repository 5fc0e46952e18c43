"""The `Scheduler`: one `tick()` does a round of every loop; the daemon ticks forever.

Each round: record launcher events (started / exited), create due runs and
start queued ones, decide which waiting tasks are ready in the runs that
changed, move due retries back to scheduled, then claim scheduled tasks within
the limits and hand them to the launcher in one batch. Every database write
goes through `miniflow.store`; the scheduler never builds a query. Between
rounds the daemon sleeps until a launcher event arrives or the next periodic
duty is due, so an idle scheduler does no work and a busy one never waits for
a poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import miniflow
from miniflow.authoring import lookups
from miniflow.authoring.serialized import SerializedDag
from miniflow.errors import SchedulerAlreadyRunning
from miniflow.launchers.base import (
    AttemptExited,
    AttemptKey,
    AttemptStarted,
    Launcher,
    LauncherEvent,
)
from miniflow.scheduler import (
    claims,
    host_processes,
    liveness,
    mapping,
    metrics,
    readiness,
    run_creation,
)
from miniflow.scheduler import events as event_recorder
from miniflow.scheduler.child_render import ChildRenderer
from miniflow.scheduler.clock import Clock, SystemClock
from miniflow.scheduler.dag_callbacks import DagCallbacks
from miniflow.scheduler.dagcache import CachedDag, DagCache
from miniflow.scheduler.flights import Flights, RoundDeps
from miniflow.scheduler.parse_loop import DagParser
from miniflow.scheduler.round_records import InFlight, TickStats
from miniflow.scheduler.run_views import RunView, RunViews
from miniflow.scheduler.sanity import Findings, FindingsRecord, SanityLoop
from miniflow.scheduler.settings import SchedulerSettings as SchedulerSettings
from miniflow.scheduler.turns import TurnRule
from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import fencing as store_fencing
from miniflow.store import instances as store_instances
from miniflow.store import mapping as store_mapping
from miniflow.store import runs as store_runs
from miniflow.store import states, wakeup
from miniflow.store import task_instances as store_tis
from miniflow.store.config_values import DatabaseBackend
from miniflow.store.records import RunInfo
from miniflow.store.sanity_lock import SanityLock

log = logging.getLogger("miniflow.scheduler")

MAX_DB_BACKOFF = 30.0
"""Longest pause between scheduler rounds while the database is failing."""
LEFTOVERS_WITHIN = 24 * 3600.0
"""A dead instance's leftover pods are looked for only if it heartbeat this recently."""


_DEPS_FIELDS = frozenset({"sessions", "launcher", "settings", "dags", "clock"})
"""Scheduler attributes that `RoundDeps` carries (kept in step by `__setattr__`)."""

_UNRUN = frozenset({states.SKIPPED, states.UPSTREAM_FAILED})


@dataclass(slots=True)
class _Due:
    parse: datetime | None = None
    runs: datetime | None = None
    sweep: datetime | None = None
    sanity: datetime | None = None
    instance: datetime | None = None
    dirty: set[int] = field(default_factory=set)  # runs to read in full
    exited: set[int] = field(default_factory=set)  # task instances whose try ended
    exited_keys: set[tuple[str, str, str, int]] = field(default_factory=set)  # same, untracked
    ended: dict[int, store_tis.TIState] = field(default_factory=dict)  # same, rows as recorded
    # The next due retry, poke or relaunch back-off (None: none), while `retry_known`:
    # until something may have made a new one (see `forget_retries`).
    retry: datetime | None = None
    retry_known: bool = False
    run_ended: bool = False  # a run ended: a queued one may start now
    turn_back: datetime | None = None  # handed the claim turn on: claim again if not taken


def new_scheduler_id(*, peer: bool) -> str:
    """A fresh instance id: host, pid and a random suffix (a pid is reused after a restart)."""
    prefix = "" if peer else store_instances.NON_PEER_PREFIX
    return f"{prefix}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _process_may_live(instance: store_instances.Instance) -> bool:
    """False when the instance ran on this host and its process is gone (killed, crashed):
    no need to wait for its heartbeat to go stale."""
    return host_processes.may_live(instance.hostname, instance.pid, instance.started_at)


def _count_committed(stats: TickStats) -> None:
    """Count what the round's transaction just committed (once: the counts are taken)."""
    for state, n in stats.finished.items():
        metrics.TASK_INSTANCES_FINISHED.labels(state).inc(n)
    for reason, n in stats.exits.items():
        metrics.ATTEMPT_EXITS.labels(reason).inc(n)
    stats.finished.clear()
    stats.exits.clear()


class Scheduler:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        launcher: Launcher,
        dags_folder: Path | None,
        settings: SchedulerSettings | None = None,
        clock: Clock | None = None,
        parse_timeout: float = 30.0,
        scheduler_id: str | None = None,
    ) -> None:
        self.engine = engine
        metrics.instrument(engine)  # statement latency, by kind
        self.sessions: async_sessionmaker[AsyncSession] = store_engine.sessionmaker(engine)
        self.launcher = launcher
        self.settings = settings or SchedulerSettings()
        self.clock = clock or SystemClock()
        self.parser = (
            DagParser(
                dags_folder, timeout=parse_timeout, reparse_interval=self.settings.reparse_interval
            )
            if dags_folder
            else None
        )
        self.dags = DagCache()
        self.dag_callbacks = (
            DagCallbacks(dags_folder, self.settings.callback_timeout) if dags_folder else None
        )
        self._ended: list[tuple[SerializedDag, RunInfo, str]] = []
        """Runs this round ended, for their DAG callbacks once the round has committed."""
        self._task_ends: list[event_recorder.TaskEnd] = []
        """Bash / Pod tries this round ended with a callback to run once it has committed."""
        self.scheduler_id = scheduler_id or new_scheduler_id(peer=self.settings.peer)
        self.sanity_lock = SanityLock(engine, self.scheduler_id)
        self._taken_over: set[str] = set()
        """Dead instances whose leftover pods this one took over (once each)."""
        self.live_peers = 1
        """Live peer schedulers, this one included, as of the last instance heartbeat."""
        self.woken = asyncio.Event()
        """Set by a wake-up listener (`miniflow.store.wakeup`): another process wrote work."""
        self.turn_given = asyncio.Event()
        """Set by a wake-up listener: a peer handed this instance the claim turn."""
        self.peer_left = asyncio.Event()
        """Set by a wake-up listener: a peer stopped, its tries are to adopt."""
        self.run_views = RunViews()
        self._pending: list[LauncherEvent] = []
        self.flights = Flights()
        self.deps = RoundDeps(
            sessions=self.sessions,
            launcher=launcher,
            settings=self.settings,
            dags=self.dags,
            clock=self.clock,
            scheduler_id=self.scheduler_id,
            flights=self.flights,
            mark_dirty=self.mark_dirty,
            take_started=self._take_started,
            renderer=ChildRenderer(dags_folder, parse_timeout) if dags_folder else None,
        )
        self._due = _Due()
        self._only_run_pk: int | None = None
        self._turn_until: datetime | None = None
        """The end of the claim turn this instance holds (`TurnRule.held_until`)."""
        self._foreign: set[AttemptKey] = set()
        self._stopping = asyncio.Event()
        self.sanity = SanityLoop()
        self.last_findings = Findings()
        self.findings_record = FindingsRecord()
        self.liveness = liveness.Liveness(self.settings.stall_timeout)
        """What `/healthz` judges: each loop's last progress (followed once started)."""
        self.started = False
        """`start()` completed: the launcher has its first view (a watch listed) and what
        dead schedulers left is adopted (`/readyz`)."""
        self._keeper: asyncio.Task[None] | None = None

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the launcher and adopt what a previous scheduler left behind.

        That is every try still queued or running, and every attempt whose exit was
        never recorded although its task moved on (a worker recorded its outcome, then
        the scheduler died before the process's exit): the launcher reports each one's
        exit from its evidence, so no attempt row stays open.
        """
        # `{{ var.value.x }}` / `{{ conn.x }}` in templates this scheduler renders.
        lookups.register_backend(
            DatabaseBackend(self.engine.url.render_as_string(hide_password=False))
        )
        if self.settings.register:
            await self._register()
            self._keeper = asyncio.create_task(self._keep_heartbeating())
        try:
            self.launcher.set_owner(self.scheduler_id)
            await self.launcher.start()
            adopt, dead = await self._take_over_the_dead() if self.settings.peer else ([], set())
        except BaseException:
            if self.settings.register:  # a scheduler that never started must not look alive
                await self._stop_keeper()
                async with store_engine.transaction(self.sessions) as session:
                    await store_instances.end(session, self.scheduler_id, self.clock.now())
            raise
        if adopt:
            log.info("adopting %d tries left in flight by a previous scheduler", len(adopt))
            await self.launcher.adopt(adopt)
            metrics.ADOPTIONS.inc(len(adopt))
        if self.settings.peer:
            # "": pods and processes launched before launchers recorded their owner.
            await self._take_over_leftovers(dead | {""})
        self._follow_loops()
        self.started = True

    def _follow_loops(self) -> None:
        """From now on the loops of a round are due: `liveness` follows them."""
        settings = self.settings
        # A failing round waits up to MAX_DB_BACKOFF before the next one.
        every_round = max(settings.idle_wait, MAX_DB_BACKOFF)
        self.liveness.expect(liveness.ROUND, every_round)
        self.liveness.expect(liveness.EVENTS, every_round)
        self.liveness.expect(liveness.SANITY, settings.sanity.interval)
        if self.parser is not None:
            self.liveness.expect(liveness.PARSE, settings.parse_interval)
        if settings.register:
            self.liveness.expect(liveness.HEARTBEAT, settings.instance_heartbeat)

    async def adopt_from_the_dead(self) -> int:
        """Adopt the tries of schedulers that died since, then their leftover pods (the
        sanity lock holder calls this; a stop said goodbye, so no heartbeat wait then)."""
        adopt, dead = await self._take_over_the_dead(registered_only=True)
        if adopt:
            log.warning("adopting %d tries of a scheduler that stopped", len(adopt))
            await self.launcher.adopt(adopt)
            metrics.ADOPTIONS.inc(len(adopt))
        await self._take_over_leftovers(dead)
        return len(adopt)

    async def _take_over_leftovers(self, dead: set[str]) -> None:
        """Once per dead instance: what it left that no open try accounts for (kept
        pods, exits it never acknowledged) becomes this instance's to report and clean."""
        leftovers = sorted(dead - self._taken_over)
        if leftovers:
            taken = await self.launcher.take_over(leftovers)
            self._taken_over.update(leftovers)
            if taken:
                names = ", ".join(o or "(no owner)" for o in leftovers)
                log.warning("took over %d leftovers of %s", taken, names)

    async def _take_over_the_dead(
        self, *, registered_only: bool = False
    ) -> tuple[list[tuple[AttemptKey, str | None]], set[str]]:
        """Become the owner of every try in flight whose owner is not a live scheduler.

        That is every try still queued or running, and every attempt whose exit was never
        recorded although its task moved on (a worker recorded its outcome, then the
        scheduler died before the process's exit), unless a live peer owns it. Ownership
        moves with a conditional update, so two schedulers never adopt the same try.
        `registered_only` (while running): only from instances that registered and then
        died, never from an owner that never registered. Returns the tries to adopt, and
        the dead instances that died recently (their leftover pods are worth a look).
        """
        now = self.clock.now()
        timeout = self.settings.instance_timeout
        async with store_engine.transaction(self.sessions) as session:
            instances = await store_instances.list_all(session)
            live = {i.id for i in instances if i.alive(now, timeout) and _process_may_live(i)}
            live.discard(self.scheduler_id)
            registered = {i.id for i in instances}
            recent = now - timedelta(seconds=LEFTOVERS_WITHIN)
            dead = {
                i.id
                for i in instances
                if i.id not in live and i.id != self.scheduler_id and i.heartbeat_at > recent
            }
            # Newly dead: a frozen one may hold locks this transaction would wait on.
            await store_fencing.cut_off(
                self.engine,
                [i.id for i in instances if i.id in dead and i.ended_at is None],
            )
            # Declared dead: a frozen instance that comes back learns it from its next
            # heartbeat (and finds its tries owned by others).
            await store_instances.end_stale(
                session, dead, before=now - timedelta(seconds=timeout), now=now
            )
            if registered_only:
                if not (registered - live - {self.scheduler_id}) & set(
                    await store_attempts.open_by_scheduler(session)
                ):
                    return [], dead  # the usual round: no dead scheduler owns anything

            def adoptable(owner: str | None) -> bool:
                if owner in live:
                    return False
                return not registered_only or (owner in registered and owner != self.scheduler_id)

            owners = await store_attempts.owners(session)
            rows = await store_tis.in_flight(session)
            open_attempts = await store_attempts.open_keys(session)
            wanted: dict[AttemptKey, tuple[int, str | None]] = {}
            flights: dict[AttemptKey, InFlight] = {}
            for row in rows:
                key = AttemptKey(row.dag_id, row.run_id, row.task_id, row.try_number, row.map_index)
                owner = owners.get((row.id, row.try_number))
                if key in self.inflight or not adoptable(owner):
                    continue
                wanted[key] = (row.id, row.handle)
                flights[key] = InFlight(row.id, row.run_pk, row.kind, row.max_tries)
            for a in open_attempts:
                key = AttemptKey(a.dag_id, a.run_id, a.task_id, a.try_number, a.map_index)
                if key in self.inflight or key in wanted or not adoptable(a.scheduler_id):
                    continue
                if a.scheduler_id == self.scheduler_id:
                    continue  # ours, its exit on its way
                wanted[key] = (a.ti_id, a.handle)
            taken = await store_attempts.take_over(
                session,
                [
                    (ti_id, key.try_number, owners.get((ti_id, key.try_number)))
                    for key, (ti_id, _) in wanted.items()
                    if (ti_id, key.try_number) in owners
                ],
                self.scheduler_id,
            )
        adopt: list[tuple[AttemptKey, str | None]] = []
        for key, (ti_id, handle) in wanted.items():
            if (ti_id, key.try_number) in owners and (ti_id, key.try_number) not in taken:
                continue  # another scheduler adopted it first
            if key in flights:
                self.inflight[key] = flights[key]
            adopt.append((key, handle))
        return adopt, dead

    async def close(self) -> None:
        if self.dag_callbacks is not None:
            await self.dag_callbacks.drain(self.settings.callback_timeout)
        await self.launcher.close()
        await self.sanity_lock.release()
        await self._stop_keeper()
        if self.settings.register:
            async with store_engine.transaction(self.sessions) as session:
                await store_instances.end(session, self.scheduler_id, self.clock.now())
                # Its tries run on, unfollowed, until a peer adopts them: now, not at
                # that peer's next sanity round.
                await wakeup.announce(session, wakeup.LEFT_TOPIC)

    async def _keep_heartbeating(self) -> None:
        """Heartbeat between rounds as well, from registration on: a start-up (the launcher,
        adoption) or one round (the first parse) can outlast the instance timeout on a
        loaded machine, and peers then took a working scheduler for dead, adopting its
        tries and following its processes. Once rounds run, only while they progress: a
        round stuck for longer than the stall timeout stops these heartbeats, and peers
        adopt its tries. During `start()` nothing judges progress yet: a start-up that
        hangs keeps heartbeating. The round's own heartbeat is the one that learns of a
        fence (and rejoins)."""
        interval = self.settings.instance_heartbeat
        while True:
            await asyncio.sleep(interval)
            if any(s.name == liveness.ROUND for s in self.liveness.stale()):
                continue
            try:
                async with store_engine.transaction(self.sessions) as session:
                    await store_instances.heartbeat(session, self.scheduler_id, self.clock.now())
            except Exception as exc:  # the rounds report the database; try again later
                log.debug("background heartbeat failed: %s", exc)

    async def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _register(self) -> None:
        """Register this instance; on SQLite, refuse to start beside a live one."""
        now = self.clock.now()
        async with store_engine.transaction(self.sessions) as session:
            if self.engine.dialect.name == "sqlite" and self.settings.peer:
                live = [
                    i
                    for i in await store_instances.list_all(session)
                    if i.peer
                    and i.alive(now, self.settings.instance_timeout)
                    and _process_may_live(i)
                ]
                if live:
                    other = live[0]
                    raise SchedulerAlreadyRunning(
                        f"another scheduler is running on this SQLite database (host "
                        f"{other.hostname}, pid {other.pid}, started "
                        f"{other.started_at:%Y-%m-%d %H:%M:%S} UTC): SQLite supports one "
                        "scheduler; stop it first, or use PostgreSQL to run several"
                    )
            await store_instances.register(
                session,
                id=self.scheduler_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                version=miniflow.__version__,
                now=now,
            )
            await self._count_live_peers(session, now)
        self._due.instance = now + timedelta(seconds=self.settings.instance_heartbeat)

    async def _heartbeat_instance(self) -> None:
        now = self.clock.now()
        if not self.settings.register or (
            self._due.instance is not None and now < self._due.instance
        ):
            return
        self._due.instance = now + timedelta(seconds=self.settings.instance_heartbeat)
        record = self.findings_record.pending()
        async with store_engine.transaction(self.sessions) as session:
            alive = await store_instances.heartbeat(
                session, self.scheduler_id, now, sanity=record[1] if record else None
            )
            await self._count_live_peers(session, now)
        if not alive:
            await self._rejoin(now)  # written with the next heartbeat
        elif record is not None:
            self.findings_record.written(record[0])
        self.liveness.beat(liveness.HEARTBEAT)

    async def _count_live_peers(self, session: AsyncSession, now: datetime) -> None:
        if self.settings.peer:
            self.live_peers = await store_instances.count_live_peers(
                session, now, self.settings.instance_timeout
            )
            metrics.LIVE_SCHEDULERS.set(self.live_peers)

    async def _rejoin(self, now: datetime) -> None:
        """A peer took this instance for dead (it was paused, or cut off from the database)
        and adopted its tries: forget those, and heartbeat again as the same instance."""
        async with store_engine.transaction(self.sessions) as session:
            by_row = {(f.ti_id, k.try_number): k for k, f in self.inflight.items()}
            gone = await store_attempts.owned_elsewhere(session, list(by_row), self.scheduler_id)
            await store_instances.rejoin(session, self.scheduler_id, now)
        for row in gone:
            del self.inflight[by_row[row]]
        await self.launcher.disown([by_row[row] for row in gone])
        log.error(
            "this scheduler (%s) was taken for dead by a peer, which adopted %d of its tries; "
            "left them to it, rejoining",
            self.scheduler_id,
            len(gone),
        )

    async def hold_sanity_lock(self) -> bool:
        """Whether this instance does this round's duties that cross owners."""
        if not self.settings.peer:
            return False
        now = self.clock.now()
        async with store_engine.transaction(self.sessions) as session:
            instances = await store_instances.list_all(session)
        live = [i.id for i in instances if i.alive(now, self.settings.instance_timeout)]
        return await self.sanity_lock.hold([*live, self.scheduler_id])

    def stop(self) -> None:
        self._stopping.set()

    def __setattr__(self, name: str, value: Any) -> None:
        # The round's modules see the scheduler's collaborators through `deps`: replacing
        # one (the daemon sets parallelism 0 to stop claiming; tests swap a launcher)
        # replaces it there too.
        super().__setattr__(name, value)
        if name in _DEPS_FIELDS and "deps" in self.__dict__:
            super().__setattr__("deps", dataclasses.replace(self.deps, **{name: value}))

    @property
    def inflight(self) -> dict[AttemptKey, InFlight]:
        """The tries this instance launched or adopted and has not seen end."""
        return self.flights.tries

    @property
    def kill_reasons(self) -> dict[AttemptKey, str]:
        return self.flights.kill_reasons

    @property
    def only_run_pk(self) -> int | None:
        """The one run this scheduler may touch (`dags test`), or None for all."""
        return self._only_run_pk

    def mark_dirty(self, run_pk: int) -> None:
        """Re-evaluate readiness of this run next round."""
        self._due.dirty.add(run_pk)
        self.forget_retries()  # a decision outside readiness: a retry, a relaunch...

    def forget_retries(self) -> None:
        """A retry, a sensor's next poke or a relaunch's back-off may have been written:
        the next round promotes what is due, and the next wait asks when the next is due.

        Until then neither is asked: a round whose tries all ended for good (a chain
        of tasks that succeed) spends no statement on retries."""
        self._due.retry_known = False

    async def run_forever(self) -> None:
        """The daemon: tick, then wait for an event or the next periodic duty.

        No exception in a round stops the daemon: the failed round is rolled back
        (its launcher events are kept for the next one) and retried with back-off.
        Database and network errors are expected (an outage) and logged in one line;
        anything else is a bug, logged with its traceback.
        """
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                stats = await self.tick()
                idle = None if stats.busy else await self._idle_timeout()
            except Exception as exc:
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                log.error(
                    "scheduler round failed (%s: %s); retrying in %.0fs",
                    type(exc).__name__,
                    reason[0] if reason else "",
                    backoff,
                    exc_info=not isinstance(exc, (SQLAlchemyError, OSError, TimeoutError)),
                )
                self.liveness.excuse()  # failing, not stuck: readiness tells why
                await self._sleep_unless_stopped(backoff)
                backoff = min(backoff * 2, MAX_DB_BACKOFF)
                continue
            backoff = 1.0
            if idle is not None:
                await self._wait(idle)

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def run_until_done(
        self, dag_id: str, run_id: str, *, timeout: float | None = None
    ) -> str:
        """Tick until the run finishes; returns its final state (`dags test`, tests)."""
        async with asyncio.timeout(timeout):
            looked = None  # when the run's state was last read
            while True:
                stats = await self.tick()
                # Read the run's state first, when a round ended it, and at least every
                # idle wait (a run ended by someone else: `runs mark-failed`).
                stale = looked is None or time.monotonic() - looked >= self.settings.idle_wait
                if stale or (dag_id, run_id) in stats.runs_ended:
                    looked = time.monotonic()
                    async with store_engine.transaction(self.sessions) as session:
                        run = await store_runs.get_run(session, dag_id, run_id)
                    if run.state in states.RUN_FINISHED:
                        await self._settle(dag_id, run_id)
                        return run.state
                if not stats.busy:
                    await self._wait(await self._idle_timeout())

    async def _idle_timeout(self) -> float:
        """Sleep no longer than until the next retry is due (retry delays below idle_wait)."""
        if not self._due.retry_known:
            async with store_engine.transaction(self.sessions) as session:
                self._due.retry = await store_tis.next_retry_due(session)
            self._due.retry_known = True
        due = self._due.retry
        if self._due.turn_back is not None:
            due = self._due.turn_back if due is None else min(due, self._due.turn_back)
        if due is None:
            return self.settings.idle_wait
        return min(self.settings.idle_wait, max(0.0, (due - self.clock.now()).total_seconds()))

    async def _settle(self, dag_id: str, run_id: str, *, limit: float = 10.0) -> None:
        """Wait (bounded) for the exits of the run's last tries.

        A worker records its own success, so a run can finish before its last
        process or pod has exited; closing attempts needs that exit.
        """
        try:
            async with asyncio.timeout(limit):
                while any(k.dag_id == dag_id and k.run_id == run_id for k in self.inflight):
                    await self._wait(self.settings.idle_wait)
                    await self.tick()
        except TimeoutError:
            log.warning(
                "run %s/%s finished; some attempts have not reported an exit", dag_id, run_id
            )

    async def _wait(self, timeout: float) -> None:
        """Sleep until a launcher event arrives (kept for the next tick), another process
        announces work (`woken`: one announced during a round ends the next wait at
        once) or `timeout`. Not at all while events taken from the launcher's queue
        wait for a round (`_take_started` leaves them in `_pending`)."""
        if self._pending:
            return
        queue: asyncio.Queue[LauncherEvent] = self.launcher.events
        stop = asyncio.ensure_future(self._stopping.wait())
        woken = asyncio.ensure_future(self.woken.wait())
        turn = asyncio.ensure_future(self.turn_given.wait())
        left = asyncio.ensure_future(self.peer_left.wait())
        get = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait(
                {stop, woken, turn, left, get},
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop.cancel()
            woken.cancel()
            turn.cancel()
            left.cancel()
            self.turn_given.clear()  # only a claim is due: no run check, no sweep
            if self.peer_left.is_set():
                self.peer_left.clear()
                self._due.sanity = None  # the sanity round adopts a stopped peer's tries
            if self.woken.is_set():
                self.woken.clear()
                # Another process made work (a run, a clear, an unpause): look for it in
                # the next round instead of at the periodic checks.
                self._due.runs = None
                self._due.sweep = None
                self.forget_retries()
            if get.done() and not get.cancelled():
                self._pending.append(get.result())
            else:
                get.cancel()

    # --- one round ------------------------------------------------------------------------------

    async def tick(self) -> TickStats:
        started = time.perf_counter()
        stats = await self._tick()
        metrics.ROUND_DURATION.labels("tick").observe(time.perf_counter() - started)
        metrics.TRIES_IN_FLIGHT.set(len(self.inflight))
        self.liveness.enter(None)
        self.liveness.beat(liveness.ROUND)
        return stats

    async def _tick(self) -> TickStats:
        stats = TickStats()
        self.liveness.enter(liveness.HEARTBEAT)
        await self._heartbeat_instance()  # first: a paused instance learns it was fenced out
        now = self.clock.now()
        if self.parser is not None and (self._due.parse is None or now >= self._due.parse):
            self.liveness.enter(liveness.PARSE)
            started = time.perf_counter()
            changed = await self.parser.parse_once(self.sessions, now)
            metrics.ROUND_DURATION.labels("parse").observe(time.perf_counter() - started)
            self.liveness.beat(liveness.PARSE)
            self.dags.invalidate(changed if self._due.parse is not None else None)
            self._due.parse = now + timedelta(seconds=self.settings.parse_interval)
            if changed:
                self._due.runs = None
        await self._resolve_only_run()
        batch = self._take_events()
        # One transaction for the round: the events recorded, readiness downstream of
        # them and the claims they made possible. On Postgres every transaction is a few
        # round trips, and a chain of tasks pays them once per link.
        self.liveness.enter(liveness.EVENTS)
        try:
            async with store_engine.transaction(self.sessions) as session:
                await self._record_events(session, batch, stats)
                now = self.clock.now()
                await self._create_and_start_runs(session, now, stats, events=bool(batch))
                await self._advance_runs(session, now, stats)
                self.liveness.enter("claims")
                claimed = await self._claim(session, now, stats)
        except BaseException:
            self._pending[:0] = batch  # rolled back: record these events next round
            self.run_views.clear()  # what they learnt this round is not in the database
            self._due.ended = {}  # nor are the rows the recorder wrote
            self._turn_until = None  # nor a turn it took
            self._ended = []
            self._task_ends = []
            raise
        _count_committed(stats)
        self.liveness.beat(liveness.EVENTS)
        ended, self._ended = self._ended, []
        task_ends, self._task_ends = self._task_ends, []
        stats.runs_ended = [(run.dag_id, run.run_id) for _, run, _ in ended]
        if self.dag_callbacks is not None:
            for end in task_ends:
                self.dag_callbacks.fire_task(end.dag, end.run, end.key, end.state, end.error)
            for dag, run, final in ended:
                self.dag_callbacks.fire(dag, run, final)
        # Before the launch: a try launched again under the same key (it never started)
        # must not find its spent launch's evidence.
        await self._retire_evidence(batch)
        await self._launch(claimed, stats)
        _count_committed(stats)
        await self._sanity_round(stats)
        # What this round left for the next one: events taken but not recorded, runs to
        # read in full, ends of tries decided outside the round's readiness.
        stats.follow_up = bool(
            self._pending
            or self._due.dirty
            or self._due.exited
            or self._due.exited_keys
            or self._due.ended
            or self._due.run_ended
        )
        return stats

    async def _retire_evidence(self, batch: list[LauncherEvent]) -> None:
        """The round's exits are committed: only now may the launcher drop their evidence
        (not of tries a peer adopted: that evidence is the new owner's)."""
        exited = [
            e.key for e in batch if isinstance(e, AttemptExited) and e.key not in self._foreign
        ]
        disowned, self._foreign = list(self._foreign), set()
        if disowned:
            await self.launcher.disown(disowned)
        if exited:
            await self.launcher.acknowledge(exited)

    async def _sanity_round(self, stats: TickStats) -> None:
        now = self.clock.now()
        if self._due.sanity is not None and now < self._due.sanity:
            return
        self._due.sanity = now + timedelta(seconds=self.settings.sanity.interval)
        self.liveness.enter(liveness.SANITY)
        started = time.perf_counter()
        self.last_findings = await self.sanity.round(self, now)
        self.forget_retries()  # its failures may be retries
        self.findings_record.add(self.last_findings, now)
        metrics.SANITY_LOCK_HELD.set(1 if self.last_findings.holder else 0)
        metrics.ROUND_DURATION.labels("sanity").observe(time.perf_counter() - started)
        self.liveness.beat(liveness.SANITY)
        for name, kind in metrics.SANITY_KINDS.items():
            found: int = getattr(self.last_findings, name)
            if found:
                metrics.SANITY_FINDINGS.labels(kind).inc(found)
        stats.changed += self.last_findings.total

    async def _resolve_only_run(self) -> None:
        only = self.settings.only_run
        if only is None or self._only_run_pk is not None:
            return
        async with store_engine.transaction(self.sessions) as session:
            self._only_run_pk = (await store_runs.get_run(session, *only)).id

    def _take_started(self, keys: Collection[AttemptKey]) -> list[AttemptStarted]:
        """The launcher's start events of `keys` (tries just launched) already queued; the
        launcher's other events wait for the next round, in their order."""
        if not keys:
            return []
        queue: asyncio.Queue[LauncherEvent] = self.launcher.events
        while not queue.empty():
            self._pending.append(queue.get_nowait())
        taken: list[AttemptStarted] = []
        rest: list[LauncherEvent] = []
        for event in self._pending:
            if isinstance(event, AttemptStarted) and event.key in keys:
                taken.append(event)
            else:
                rest.append(event)
        self._pending = rest
        return taken

    def _take_events(self) -> list[LauncherEvent]:
        queue: asyncio.Queue[LauncherEvent] = self.launcher.events
        batch, self._pending = self._pending, []
        while not queue.empty():
            batch.append(queue.get_nowait())
        return batch

    async def _record_events(
        self, session: AsyncSession, batch: list[LauncherEvent], stats: TickStats
    ) -> None:
        if not batch:
            return
        stats.events = len(batch)
        exits = [e.key for e in batch if isinstance(e, AttemptExited)]
        known = {key: self.inflight[key] for key in exits if key in self.inflight}
        recorded = await event_recorder.record(self.deps, session, batch, self.clock.now())
        stats.finished += recorded.finished
        stats.exits += recorded.exits
        self._task_ends += recorded.callbacks
        self._foreign = recorded.foreign
        touched = recorded.touched
        exits = [k for k in exits if k not in recorded.foreign]  # a peer's now: not ours
        known = {k: f for k, f in known.items() if k not in recorded.foreign}
        # Readiness reads these tasks (by id, or by key for tries this scheduler was not
        # tracking), not their whole runs. The recorder names runs only: if it touched
        # more runs than the exits name, read those runs in full.
        self._due.ended.update(recorded.states)
        if len(recorded.states) < len(exits) or any(
            row.state not in states.FINISHED for row in recorded.states.values()
        ):
            self.forget_retries()  # a retry, a sensor's reschedule, a relaunch: or unknown
        self._due.exited |= {f.ti_id for f in known.values() if f.ti_id not in recorded.states}
        self._due.exited_keys |= {k.ti_key for k in exits if k not in known}
        if len(touched) > len({(k.dag_id, k.run_id) for k in exits}):
            self._due.dirty.update(touched)

    async def _create_and_start_runs(
        self, session: AsyncSession, now: datetime, stats: TickStats, *, events: bool
    ) -> None:
        """Scheduled runs on the run-check interval; queued runs (manual too) in every
        round but those that only record launcher events (a chain of tasks pays for each
        statement once per link): there, on the run-check interval, after a wake-up
        (`woken`: another process created a run) or after this scheduler ended a run."""
        periodic = self._due.runs is None or now >= self._due.runs
        if periodic:
            self._due.runs = now + timedelta(seconds=self.settings.run_check_interval)
            if self.settings.schedule_runs:
                stats.runs_created = await run_creation.create_due_runs(session, now)
        if periodic or not events or self._due.run_ended:
            self._due.run_ended = False
            started = await run_creation.start_queued_runs(
                session, self.dags, now, self._only_run_pk
            )
            self._due.dirty.update(started)

    async def _advance_runs(self, session: AsyncSession, now: datetime, stats: TickStats) -> None:
        """Readiness downstream of the tasks that changed (whole runs where only the run
        is known to have changed, or the sweep finds a view out of date), then due retries.

        See `run_views`: a round reads the rows of the tasks whose tries ended, not every
        row of their runs; a run is read in full when it starts, when it may be over, and
        when the sweep's per-state counts disagree with what this scheduler believes.
        """
        sweep = self._due.sweep is None or now >= self._due.sweep
        if sweep:
            self._due.sweep = now + timedelta(seconds=self.settings.full_sweep_interval)
        whole, self._due.dirty = self._due.dirty, set()
        exited, self._due.exited = self._due.exited, set()
        exited_keys, self._due.exited_keys = self._due.exited_keys, set()
        # The rows the recorder wrote this round are known; only the others are read.
        recorded, self._due.ended = self._due.ended, {}
        exited -= set(recorded)
        if sweep:
            self.forget_retries()  # the fallback for a retry written where none looked
        due = self._due
        if not due.retry_known or (due.retry is not None and now >= due.retry):
            self.forget_retries()
            # up_for_retry → scheduled changes no decision: only runs without a view need
            # a look.
            whole.update(
                pk
                for pk in await store_tis.promote_due_retries(session, now)
                if self.run_views.get(pk) is None
            )
        changed: dict[int, list[str]] = {}
        rows = list(recorded.values())
        if exited or exited_keys:
            rows += await store_tis.states_of(session, exited, exited_keys)
        # A mapped instance is not a task of the graph: its task's own row changes once all
        # its instances have finished (`store.mapping.settle`), and readiness goes on from it.
        instance_runs = {row.run_pk for row in rows if row.map_index >= 0}
        rows = [row for row in rows if row.map_index < 0]
        if instance_runs:
            rows += await store_mapping.settle(session, instance_runs, now)
        fresh: dict[int, set[str]] = {}  # the tasks whose rows this transaction holds
        for row in rows:
            fresh.setdefault(row.run_pk, set()).add(row.task_id)
            view = self.run_views.get(row.run_pk)
            if view is None:
                whole.add(row.run_pk)
            elif view.set(row.task_id, row.state):
                changed.setdefault(row.run_pk, []).append(row.task_id)
        stats.exit_runs = set(changed)
        if sweep:  # after this round's exits are in the views, so that they compare equal
            whole |= await self._stale_views(session, now)
        if self._only_run_pk is not None:
            whole &= {self._only_run_pk}
            changed = {pk: t for pk, t in changed.items() if pk == self._only_run_pk}
        changes: list[tuple[int, str, str]] = []
        decided: dict[int, tuple[Counter[str], dict[str, str]]] = {}
        decided_fresh: set[int] = set()
        for pk, task_ids in changed.items():
            view = self.run_views.get(pk)
            if view is None or pk in whole:
                continue
            seen = view.counts()
            new = view.advance(task_ids)
            if view.needs_full_look():
                whole.add(pk)  # may be over: decided below on all its rows
            elif new and view.rests_on(new, fresh.get(pk, ())):
                changes += [(view.ids[t], states.NONE, s) for t, s in new.items()]
                decided_fresh.add(pk)
            elif new:
                decided[pk] = (seen, new)
        if decided:
            # Trust a view's decisions only if the run's per-state counts are what the view
            # held when it decided: a change it did not see (a `tasks clear`...) shows.
            found = await store_tis.state_counts_of_running_runs(session, sorted(decided))
            for pk, (seen, new) in decided.items():
                view = self.run_views.get(pk)
                if view is not None and view.agrees(found.get(pk, {}), seen):
                    changes += [(view.ids[t], states.NONE, s) for t, s in new.items()]
                else:
                    whole.add(pk)
        full: list[RunInfo] = []
        cached: dict[int, CachedDag] = {}
        if whole:
            full = await store_runs.running_runs(session, sorted(whole))
            cached = await self.dags.for_runs(session, full)  # each run's own DAG version
            full = [run for run in full if run.id in cached]
        finals = await self._evaluate_whole_runs(session, full, cached, now, changes)
        applied = await store_tis.set_states(session, changes, now, running_runs_only=True)
        stats.changed = applied
        stats.made_ready = applied > 0 and any(new == states.SCHEDULED for *_, new in changes)
        if sweep or any(new == states.MAPPED for _, _, new in changes):
            created, ended = await mapping.expand(self.deps, session, None, now)
            stats.changed += created + len(ended)
            # An empty or impossible expansion ended the task: decide downstream of it.
            self._due.dirty.update(row.run_pk for row in ended)
        if sweep or any(new in _UNRUN for _, _, new in changes):
            stats.changed += await store_mapping.follow_unrun(session)
        if applied == len(changes):
            stats.finished.update(s for _, _, s in changes if s in states.FINISHED)
        else:
            # The database disagreed with a view (a row was not `none` any more): read
            # these runs in full next round rather than trust the views.
            self._due.dirty |= set(decided) | decided_fresh | {run.id for run in full}
        # After the task changes, and only if the run's tasks are still as seen: a clear
        # that committed meanwhile keeps the run going (its task is scheduled next round).
        for run, final, unfinished in finals:
            self.run_views.drop(run.id)
            if await store_runs.set_state(
                session,
                run.id,
                expected=states.RUN_RUNNING,
                state=final,
                now=now,
                seen_unfinished=unfinished,
            ):
                log.info(
                    "run %s/%s finished: %s",
                    run.dag_id,
                    run.run_id,
                    final,
                    extra={"dag_id": run.dag_id, "run_id": run.run_id},
                )
                self.flights.run_infos.drop(run.id)
                self._ended.append((cached[run.id].dag, run, final))
                self._due.run_ended = True
            else:
                self._due.dirty.add(run.id)

    async def _evaluate_whole_runs(
        self,
        session: AsyncSession,
        runs: list[RunInfo],
        cached: dict[int, CachedDag],
        now: datetime,
        changes: list[tuple[int, str, str]],
    ) -> list[tuple[RunInfo, str, list[int]]]:
        """Decide `runs` on all their rows (`readiness.evaluate_run`) and rebuild their
        views; adds to `changes`, returns (run, final state, unfinished ids seen) of the
        runs that are over."""
        if not runs:
            return []
        await store_mapping.settle(session, [r.id for r in runs], now)
        tis = await store_tis.states_for_runs(session, [r.id for r in runs])
        finals: list[tuple[RunInfo, str, list[int]]] = []
        for run in runs:
            entry = cached[run.id]
            rows = tis.get(run.id, [])
            by_task = {ti.task_id: ti for ti in rows}
            new, final = readiness.evaluate_run(
                entry.dag, entry.dag_hash, {ti.task_id: ti.state for ti in rows}
            )
            changes += [(by_task[t].id, states.NONE, s) for t, s in new.items()]
            seen = {t.task_id: new.get(t.task_id, t.state) for t in rows}
            if final is not None:
                unfinished = [by_task[t].id for t, s in seen.items() if s not in states.FINISHED]
                finals.append((run, final, unfinished))
            else:
                self.run_views.put(
                    run.id,
                    RunView(
                        readiness.graph(entry.dag, entry.dag_hash),
                        entry.dag_hash,
                        {t.task_id: t.id for t in rows},
                        seen,
                        now,
                    ),
                )
        return finals

    async def _stale_views(self, session: AsyncSession, now: datetime) -> set[int]:
        """The sweep: running runs whose view is missing, old, or disagrees with the
        database's per-state counts (one grouped count, not every row)."""
        only = None if self._only_run_pk is None else [self._only_run_pk]
        found = await store_tis.state_counts_of_running_runs(session, only)
        self.run_views.keep_only(found)
        return self.run_views.stale(found, now)

    async def _claim(
        self, session: AsyncSession, now: datetime, stats: TickStats
    ) -> claims.Claimed | None:
        # Among live peers, every free slot in its turn (`scheduler.turns`), none in a
        # peer's: an even split of the parallelism made every round peers times smaller.
        # Its own tries in flight hold slots whatever the database says (a worker may have
        # recorded its end before the process exits): all of it in flight, no lock, no
        # statement.
        turns, share = None, self.settings.parallelism - len(self.inflight)
        if self.settings.peer and self.live_peers > 1:
            turns = TurnRule(
                self.scheduler_id, self.settings.claim_turn, held_until=self._turn_until
            )
        claimed = await claims.claim(self.deps, session, share, self._only_run_pk, now, turns=turns)
        self._turn_until = None if turns is None else turns.held_until
        if turns is not None:
            await self._look_past_peers(session, claimed, stats.exit_runs)
            if turns.waiting_on is not None and (stats.made_ready or stats.exits):
                # Tasks this round made ready, and slots its exits freed, are the turn
                # holder's to claim: it may be idle (its own tries running or done),
                # waiting for nothing but this.
                await wakeup.announce(session, wakeup.turn_topic(turns.waiting_on))
        handed_on = turns is not None and turns.handed_on
        self._due.turn_back = (
            now + timedelta(seconds=self.settings.claim_turn) if handed_on else None
        )
        return claimed

    async def _look_past_peers(
        self, session: AsyncSession, claimed: claims.Claimed | None, exit_runs: set[int]
    ) -> None:
        """Read in full, next round, a run whose exits this round recorded where this
        instance now has no try in flight, when the run's rows may make a task ready that
        its view holds blocked.

        A view learns only of the exits of this instance's own tries: among peers, a
        task downstream of tries that several instances ran (a fan-in) never looks ready
        to any one view, and would wait for the sweep. One grouped count says how many
        tasks the view holds open that are not open any more (a peer's finished tries);
        the run is read only if that many could release the least-blocked waiting task
        (`RunView.worth_reading`). Mid-run the turn holder always has tries in flight, and
        a fan-out's join waits on more tasks than have finished unseen, so this is rarely
        more than the count."""
        busy = {flight.run_pk for flight in self.inflight.values()}
        if claimed is not None:
            busy |= {c.run_pk for c in claimed.chosen}
        suspects: dict[int, RunView] = {}
        for pk in exit_runs - busy:
            view = self.run_views.get(pk)
            if view is not None and view.counts()["open"]:
                suspects[pk] = view
        if not suspects:
            return
        found = await store_tis.state_counts_of_running_runs(session, sorted(suspects))
        for pk, view in suspects.items():
            if pk in found and view.worth_reading(found[pk]):
                self._due.dirty.add(pk)

    async def _launch(self, claimed: claims.Claimed | None, stats: TickStats) -> None:
        due = await claims.launch(self.deps, claimed, stats)
        # Tries that failed before they started (a template error): committed by now.
        if self.dag_callbacks is not None:
            for end in due:
                self.dag_callbacks.fire_task(end.dag, end.run, end.key, end.state, end.error)
