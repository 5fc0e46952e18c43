"""The sanity loop: reconcile what the database says runs with what really runs.

Launchers report what they see and workers heartbeat, but a process can freeze,
a pod can vanish, a create can be lost and a scheduler can die between two
writes. Every `sanity_interval` seconds one round compares the tries this
scheduler owns (its in-flight registry) with the launcher's view
(`Launcher.alive()`: what its watch last saw; a fresh look, a new list from the
API server, only to confirm a suspicion) and the database's timestamps, and
decides:

- **zombie** — a running try of a worker kind (the worker writes heartbeats)
  whose last proof of life (heartbeat, else start) is older than
  `zombie_threshold`: failed with reason "heartbeat lost" (retried per the
  task's policy), then its process or pod is killed at once (SIGKILL reaches a
  stopped process). The failure is committed *before* the kill, so a frozen
  worker that resumes finds itself fenced out and records nothing. Tries of
  other kinds have no heartbeat: the launcher seeing their process is their
  proof of life (see "lost").
- **timeout** — a try running longer than its task's `timeout` plus the kill
  grace period (the launcher and the worker enforce the timeout first; this is
  the backstop that does not trust them): failed with reason "timeout", killed.
- **queued too long** — queued longer than `queued_timeout`: failed with that
  reason, killed.
- **lost** — an active try the launcher has not seen in two consecutive rounds:
  the launcher is asked to adopt it, which reports its exit from whatever
  evidence is left, or "Lost"; the event recorder then relaunches a try that
  never started or fails one that did.
- **orphan** — a process or pod the launcher sees that belongs to no live try,
  for two consecutive rounds: killed. (A live try owned by a live peer is left
  alone.)
- **stopped** — a try this scheduler runs whose task instance was failed behind
  its back (a user marked the run failed), still seen running in two
  consecutive rounds: killed. A worker notices on its own (its heartbeat is
  fenced out); a process or pod without a worker has only this.
- **adoption** — tries owned by a scheduler instance that registered and then
  died (its heartbeat stale, or it said goodbye) are taken over: the ownership
  moves with a conditional update, so two survivors never adopt the same try;
  then the launcher takes over what else the dead instance left (kept pods).

With several schedulers, each one judges what it owns — its tries (zombies,
timeouts, queued too long, lost) and what its launcher sees (orphans): each
launcher follows only its own instance's processes or pods, so no two
schedulers ever judge the same one. Adoption crosses owners, so only the holder
of the sanity lock (`miniflow.store.sanity_lock`) does it.

Every decision is logged with its reason and noted on the attempt row. The
loop only decides; the writes go through the store and the kills through the
launcher.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from miniflow.authoring.serialized import SerializedTask
from miniflow.errors import MiniflowError
from miniflow.launchers.base import AliveAttempt, AttemptKey
from miniflow.retries import failure_outcome
from miniflow.store import attempts as store_attempts
from miniflow.store import engine as store_engine
from miniflow.store import states
from miniflow.store import task_instances as store_tis
from miniflow.store.times import rfc3339

if TYPE_CHECKING:
    from miniflow.scheduler.core import Scheduler

log = logging.getLogger("miniflow.scheduler.sanity")

HEARTBEAT_LOST = "heartbeat lost"
TIMEOUT = "timeout"
QUEUED_TIMEOUT = "queued timeout"
STOPPED = "marked failed"
KINDS = {HEARTBEAT_LOST: "zombie", TIMEOUT: "timeout", QUEUED_TIMEOUT: "queued_timeout"}
"""A kill's reason → its kind of finding."""
RECENT_FINDINGS = 20
"""Decisions the health page shows per scheduler (the newest)."""


@dataclass(frozen=True, slots=True)
class SanitySettings:
    """Thresholds of the sanity loop (the daemon takes them from `Config`)."""

    interval: float = 5.0
    """Seconds between rounds."""
    zombie_threshold: float = 30.0
    """Seconds a running worker try may go without a heartbeat."""
    queued_timeout: float = 600.0
    """Seconds a try may stay queued."""
    kill_grace_period: float = 5.0
    """Slack past a task's timeout before the loop kills it itself."""
    reap_orphans: bool = True
    """Kill processes/pods no try owns (off for `dags test`, which shares the cluster)."""


@dataclass(frozen=True, slots=True)
class Kill:
    key: AttemptKey
    handle: str | None
    reason: str
    message: str
    force: bool


@dataclass(slots=True)
class Findings:
    """What one round decided (counts, for logs, tests and metrics)."""

    zombies: int = 0
    timeouts: int = 0
    queued_timeouts: int = 0
    lost: int = 0
    orphans_killed: int = 0
    adopted: int = 0
    stopped: int = 0
    holder: bool = False
    """This instance held the sanity lock in this round."""
    notes: list[tuple[str, str, str]] = field(default_factory=list)
    """(kind, what, why) of each decision, for the health page (`FindingsRecord`)."""

    @property
    def total(self) -> int:
        return (
            self.zombies
            + self.timeouts
            + self.queued_timeouts
            + self.lost
            + self.orphans_killed
            + self.adopted
            + self.stopped
        )


@dataclass(slots=True)
class SanityLoop:
    """The sanity loop's memory between rounds (what was missing or orphaned last time)."""

    missing_since: dict[AttemptKey, datetime] = field(default_factory=dict)
    orphan_since: dict[AttemptKey, datetime] = field(default_factory=dict)
    stopped_since: dict[AttemptKey, datetime] = field(default_factory=dict)

    async def round(self, scheduler: Scheduler, now: datetime) -> Findings:
        findings = Findings()
        holder = await scheduler.hold_sanity_lock()
        findings.holder = holder
        if holder:
            findings.adopted = await scheduler.adopt_from_the_dead()
            if findings.adopted:
                what = f"{findings.adopted} tries"
                findings.notes.append(("adopted", what, "their scheduler died or stopped"))
        # The launcher's current view is enough to notice trouble; a fresh look (a new
        # list from the API server) is asked for only to confirm it, so a healthy round
        # costs no API request.
        seen = await self._view(scheduler, fresh=False)
        if seen is not None and self._suspects(scheduler, {a.key for a in seen}):
            seen = await self._view(scheduler, fresh=True)
        alive = {a.key: a for a in seen or []}
        kills = await self._decide(scheduler, alive, now, findings)
        for kill in kills:
            log.warning("%s: %s — killing it", kill.key, kill.message)
            scheduler.kill_reasons.setdefault(kill.key, kill.reason)
            try:
                await scheduler.launcher.kill(
                    kill.key, kill.handle, reason=kill.reason, force=kill.force
                )
            except Exception:  # the next round sees it again (as an orphan if need be)
                log.exception("could not kill %s", kill.key)
        if seen is None:
            return findings
        await self._lost(scheduler, alive, now, findings)
        await self._stopped(scheduler, alive, now, findings)
        if scheduler.settings.sanity.reap_orphans:
            await self._orphans(scheduler, alive, now, findings)
        if findings.total:
            log.info("sanity round: %s", findings)
        return findings

    async def _view(self, scheduler: Scheduler, *, fresh: bool) -> list[AliveAttempt] | None:
        try:
            return await scheduler.launcher.alive(fresh=fresh)
        except MiniflowError as exc:
            # No view (the API server is away): decide what the database alone shows,
            # but never take "nothing seen" for "everything lost".
            log.warning("sanity round without the launcher's view: %s", exc)
            return None

    def _suspects(self, scheduler: Scheduler, seen: set[AttemptKey]) -> bool:
        """Would this round declare a try lost or an orphan on this view?"""
        missing_again = any(k in self.missing_since for k in scheduler.inflight if k not in seen)
        stray_again = any(k in self.orphan_since for k in seen if k not in scheduler.inflight)
        return missing_again or stray_again

    async def _decide(
        self,
        scheduler: Scheduler,
        alive: dict[AttemptKey, AliveAttempt],
        now: datetime,
        findings: Findings,
    ) -> list[Kill]:
        """Zombies, timeouts and tries queued too long: fail them (committed), then kill."""
        settings = scheduler.settings.sanity
        worker_kinds = scheduler.launcher.worker_kinds
        kills: list[Kill] = []
        async with store_engine.transaction(scheduler.sessions) as session:
            tries = [t for t in await store_tis.active_tries(session) if _owned(scheduler, t)]
            if not tries:
                return []
            versions = await scheduler.dags.for_run_pks(session, {t.run_pk for t in tries})
            outcomes: list[store_tis.Outcome] = []
            notes: list[tuple[int, int, str | None, str]] = []
            for t in tries:
                entry = versions.get(t.run_pk)  # the run's own DAG version
                task = entry.dag["tasks"].get(t.task_id) if entry else None
                verdict = _verdict(t, task, worker_kinds, settings, now)
                if verdict is None:
                    continue
                reason, message, force = verdict
                if reason == HEARTBEAT_LOST:
                    findings.zombies += 1
                elif reason == TIMEOUT:
                    findings.timeouts += 1
                else:
                    findings.queued_timeouts += 1
                outcomes.append(
                    failure_outcome(
                        ti_id=t.id,
                        try_number=t.try_number,
                        max_tries=t.max_tries,
                        task=task,
                        now=now,
                        exit_code=None,
                        error=f"{reason}: {message}",
                        expected=(t.state,),
                    )
                )
                notes.append((t.id, t.try_number, reason, message))
                key = AttemptKey(t.dag_id, t.run_id, t.task_id, t.try_number, t.map_index)
                kills.append(Kill(key, t.handle, reason, message, force))
                scheduler.mark_dirty(t.run_pk)
            changed = await store_tis.finish(session, outcomes, now)
            decided = {o.ti_id: o.state for o in outcomes if o.ti_id in changed}
            await store_attempts.note(
                session, [n for n in notes if n[0] in changed], states=decided
            )
        done = [k for k, o in zip(kills, outcomes, strict=True) if o.ti_id in changed]
        findings.notes += [(KINDS[k.reason], str(k.key), k.message) for k in done]
        return done

    async def _lost(
        self,
        scheduler: Scheduler,
        alive: dict[AttemptKey, AliveAttempt],
        now: datetime,
        findings: Findings,
    ) -> None:
        """In flight here, unseen by the launcher two rounds running: ask it to adopt."""
        missing = [k for k in scheduler.inflight if k not in alive]
        lost = _seen_again(self.missing_since, missing, now)
        if not lost:
            return
        lost = await _still_owned(scheduler, lost)
        if not lost:
            return
        findings.lost += len(lost)
        for key in lost:
            log.warning("%s: the launcher no longer sees it; looking for its evidence", key)
            findings.notes.append(("lost", str(key), "the launcher no longer sees it"))
        handles = await _handles(scheduler, lost)
        await scheduler.launcher.adopt([(k, handles.get(k)) for k in lost])

    async def _stopped(
        self,
        scheduler: Scheduler,
        alive: dict[AttemptKey, AliveAttempt],
        now: datetime,
        findings: Findings,
    ) -> None:
        """Ours, still running, its task instance failed for this try (a user marked the
        run failed): kill it, once seen so in two rounds (a worker that recorded its own
        failure is given that long to exit by itself)."""
        # not those already being killed (a zombie, a timeout: failed, then killed with a
        # grace period): their kill is under way, and they are no finding of this kind
        running = [k for k in scheduler.inflight if k in alive and k not in scheduler.kill_reasons]
        if not running:
            self.stopped_since.clear()
            return
        async with store_engine.transaction(scheduler.sessions) as session:
            rows = await store_tis.find_keys(
                session, [(k.dag_id, k.run_id, k.task_id) for k in running]
            )
        failed = []
        for key in running:
            row = rows.get((key.dag_id, key.run_id, key.task_id))
            if row is not None and row.try_number == key.try_number and row.state == states.FAILED:
                failed.append(key)
        for key in _seen_again(self.stopped_since, failed, now):
            findings.stopped += 1
            log.warning("%s: its task instance is failed (run marked failed?): killing it", key)
            findings.notes.append(("stopped", str(key), "its task instance was failed"))
            scheduler.kill_reasons.setdefault(key, STOPPED)
            try:
                await scheduler.launcher.kill(key, alive[key].handle, reason=STOPPED, force=False)
            except Exception:  # the next round sees it again
                log.exception("could not kill %s", key)

    async def _orphans(
        self,
        scheduler: Scheduler,
        alive: dict[AttemptKey, AliveAttempt],
        now: datetime,
        findings: Findings,
    ) -> None:
        """Seen by the launcher, owned by no try here, two rounds running: adopt or kill."""
        strays = [k for k in alive if k not in scheduler.inflight]
        due = _seen_again(self.orphan_since, strays, now)
        if not due:
            return
        async with store_engine.transaction(scheduler.sessions) as session:
            rows = await store_tis.find_keys(session, [k.ti_key for k in due])
        for key in due:
            row = rows.get(key.ti_key)
            if row is not None and row.try_number == key.try_number and row.state in states.ACTIVE:
                continue  # a live try: a live peer's, or adopted from a dead one (above)
            findings.orphans_killed += 1
            why = "no live try owns it" if row is None else f"its task is {row.state}"
            if row is not None and row.try_number != key.try_number:
                why = f"try {row.try_number} is the current one"
            log.warning("%s: orphan (%s): killing it", key, why)
            findings.notes.append(("orphan", str(key), why))
            try:
                await scheduler.launcher.kill(key, alive[key].handle, reason="orphan", force=False)
            except Exception:
                log.exception("could not kill orphan %s", key)


def _seen_again(
    first_seen: dict[AttemptKey, datetime], keys: list[AttemptKey], now: datetime
) -> list[AttemptKey]:
    """The keys also seen in an earlier round; forgets them, and the keys no longer seen.

    One round is not enough to act on: a process may have ended (or started) between
    the launcher's view and the database's.
    """
    current = set(keys)
    for key in list(first_seen):
        if key not in current:
            del first_seen[key]
    again = [k for k in keys if first_seen.setdefault(k, now) < now]
    for key in again:
        del first_seen[key]
    return again


def _owned(scheduler: Scheduler, t: store_tis.ActiveTry) -> bool:
    return (
        AttemptKey(t.dag_id, t.run_id, t.task_id, t.try_number, t.map_index) in scheduler.inflight
    )


def _verdict(
    t: store_tis.ActiveTry,
    task: SerializedTask | None,
    worker_kinds: frozenset[str],
    settings: SanitySettings,
    now: datetime,
) -> tuple[str, str, bool] | None:
    """(reason, message, force kill) for a try that must end now, or None."""
    if t.state == states.RUNNING and t.kind in worker_kinds:
        proof = t.heartbeat_at or t.started_at
        if proof is not None:
            silent = (now - proof).total_seconds()
            if silent > settings.zombie_threshold:
                return (
                    HEARTBEAT_LOST,
                    f"no heartbeat for {silent:.0f}s (threshold {settings.zombie_threshold:g}s)",
                    True,
                )
    timeout = task["timeout"] if task is not None else None
    if t.state == states.RUNNING and timeout and t.started_at is not None:
        ran = (now - t.started_at).total_seconds()
        if ran > float(timeout) + settings.kill_grace_period:
            return TIMEOUT, f"ran {ran:.0f}s, longer than its timeout of {timeout:g}s", False
    if t.state == states.QUEUED and t.queued_at is not None:
        waited = (now - t.queued_at).total_seconds()
        if waited > settings.queued_timeout:
            return (
                QUEUED_TIMEOUT,
                f"queued for {waited:.0f}s without starting (limit {settings.queued_timeout:g}s)",
                True,
            )
    return None


async def _still_owned(scheduler: Scheduler, keys: list[AttemptKey]) -> list[AttemptKey]:
    """The keys this instance still owns; a peer adopted the others (this instance was
    taken for dead): forgotten here, never adopted back."""
    by_row = {(scheduler.inflight[k].ti_id, k.try_number): k for k in keys}
    async with store_engine.transaction(scheduler.sessions) as session:
        gone = await store_attempts.owned_elsewhere(session, list(by_row), scheduler.scheduler_id)
    for row in gone:
        log.warning("%s: adopted by another scheduler; leaving it to that one", by_row[row])
        scheduler.inflight.pop(by_row[row], None)
    await scheduler.launcher.disown([by_row[row] for row in gone])
    return [k for r, k in by_row.items() if r not in gone]


async def _handles(scheduler: Scheduler, keys: list[AttemptKey]) -> dict[AttemptKey, str | None]:
    async with store_engine.transaction(scheduler.sessions) as session:
        rows = await store_tis.find_keys(session, [k.ti_key for k in keys])
    out: dict[AttemptKey, str | None] = {}
    for key in keys:
        row = rows.get(key.ti_key)
        out[key] = row.handle if row is not None and row.try_number == key.try_number else None
    return out


class FindingsRecord:
    """What this instance's sanity loop found since it started, as stored on its
    `scheduler_instance` row with its heartbeat (the health page reads it): counts by
    kind, and the newest decisions. Written only when something new was found."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.recent: deque[dict[str, str]] = deque(maxlen=RECENT_FINDINGS)
        self._version = 0
        self._written = 0

    def add(self, findings: Findings, now: datetime) -> None:
        if not findings.notes:
            return
        for kind, what, why in findings.notes:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.recent.appendleft({"at": rfc3339(now), "kind": kind, "what": what, "why": why})
        self._version += 1

    def pending(self) -> tuple[int, dict[str, Any]] | None:
        """The record to write, if it changed since the last write (with its version)."""
        if self._version == self._written:
            return None
        return self._version, {"counts": dict(self.counts), "recent": list(self.recent)}

    def written(self, version: int) -> None:
        self._written = max(self._written, version)
