"""Pod tracking for `KubernetesLauncher`: observed pod states in, attempt events out.

The namespace watch (`kube_watch`) reports what the API server says about
pods; a `PodTracker` folds each state into one `Tracked` entry per pod and
emits what is new. Kept apart from the launcher so launching (create, kill,
adopt) and ending (exit events, log tail, acknowledgement, cleanup, stuck
pods) each read on their own. The rules it implements are described in
`kubernetes`' module docstring: per-pod deduplication, the exit handling
order (log tail, event, acknowledgement, then cleanup: logs survive cleanup
and the pod survives until its exit is committed), the cleanup policies and
retention, stuck pods and disappearances.

Two kinds of work run in the background. `sweep` is one long-lived loop (the
launcher supervises it): it fails pods pending too long (only in namespaces
whose watch is live, so never on a view an API outage left stale) and
deletes kept pods whose retention is over, or whose delete failed before.
Each exit, stuck pod and cleanup is a short task of its own; those are not
restarted, so each makes sure of its one essential effect (an exit always
gets its event; a failed delete is left for the sweep to retry, and a stuck
pod is reported once its delete went through).

This module never touches the database and never imports kubernetes_asyncio
(that is `kube_client`'s job).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from miniflow.errors import MiniflowError
from miniflow.launchers import pods
from miniflow.launchers.base import AttemptExited, AttemptKey, AttemptStarted, LauncherEvent
from miniflow.launchers.kube_client import KubeClient, PodNotFound, RetryPolicy, with_retries
from miniflow.launchers.kube_watch import Listed, Pod, PodView, observe

# The launcher's logger: these messages are the launcher's, wherever the code lives.
log = logging.getLogger("miniflow.launchers.kubernetes")

CleanupPolicy = Literal["on_success", "always", "never"]


class ExitSettings(Protocol):
    """The launcher settings the tracker reads (live, so a changed setting applies)."""

    cleanup: CleanupPolicy
    keep_failed_for: float
    log_tail_lines: int
    pending_timeout: float
    retry: RetryPolicy


@dataclass(slots=True)
class Tracked:
    """Per-pod state; lives until the pod is gone."""

    key: AttemptKey
    name: str
    namespace: str
    handle: str
    seq: int  # tracking order, to tell pods created during a relist from lost ones
    uid: str | None = None  # of the pod this entry follows, once seen
    phase: str = "Pending"
    started: bool = False
    exited: bool = False  # the exit is decided (dedup); its event is on its way
    acknowledged: bool = False  # the scheduler committed the exit: cleanup may start
    gone: bool = False  # the pod no longer exists
    cleaning: bool = False  # a cleanup delete is in flight (or done)
    doomed: bool = False  # stuck: deleted whatever the policy, retried until it is gone
    stuck_exit: tuple[str, str | None] | None = None  # (reason, message), reported once gone
    succeeded: bool = False
    finished_at: datetime | None = None  # retention counts from here
    pending_since: float | None = None  # tracker clock; None while not pending
    pending_reason: str | None = None
    pending_message: str | None = None
    kill_reason: str | None = None


def now() -> datetime:
    return datetime.now(UTC)


class PodTracker:
    """Every miniflow pod the launcher knows of, and the events of its life."""

    def __init__(
        self,
        *,
        events: asyncio.Queue[LauncherEvent],
        settings: ExitSettings,
        client: Callable[[], KubeClient],
        handle: Callable[[str, str], str],
        clock: Callable[[], float],
        fresh: Callable[[str], bool],
        max_concurrent_io: int,
    ) -> None:
        self.events = events
        self.settings = settings
        self._client = client
        self._handle = handle
        self._clock = clock
        self._fresh = fresh
        self.tracked: dict[tuple[str, str], Tracked] = {}
        # The owner label value of the launcher's pods; None: it follows every miniflow pod.
        self.owner: str | None = None
        self._unacknowledged: dict[AttemptKey, Tracked] = {}
        self._seq = itertools.count(1)
        self.background: set[asyncio.Task[None]] = set()
        self._io_slots = asyncio.Semaphore(max_concurrent_io)

    def next_seq(self) -> int:
        """The next tracking number (a watch takes one before each list)."""
        return next(self._seq)

    def track(self, key: AttemptKey, namespace: str, name: str) -> Tracked:
        tracked = Tracked(key, name, namespace, self._handle(namespace, name), self.next_seq())
        self.tracked[(namespace, name)] = tracked
        return tracked

    def forget(self, namespace: str, name: str) -> Tracked | None:
        """Drop the entry of a pod that no longer exists."""
        tracked = self.tracked.pop((namespace, name), None)
        if tracked is not None:
            tracked.gone = True
            self._report_stuck(tracked)
        return tracked

    # ------------------------------------------------------------------ observing

    def on_event(self, event_type: str, pod: Pod) -> None:
        view = observe(pod)
        if view.key is None:
            return
        if event_type == "DELETED":
            current = self.tracked.get((view.namespace, view.name))
            if (
                current is not None
                and None not in (current.uid, view.uid)
                and current.uid != view.uid
            ):
                return  # an earlier pod of that name; this entry follows its successor
            tracked = self.forget(view.namespace, view.name)
            if tracked is not None and not tracked.exited:
                if view.terminal:
                    self._vanished(
                        tracked, functools.partial(self._begin_exit, tracked, view, pod_gone=True)
                    )
                else:
                    reason = tracked.kill_reason or "Deleted"
                    self._vanished(
                        tracked,
                        functools.partial(
                            self.exit_without_pod, tracked, reason, "pod deleted before it finished"
                        ),
                    )
            return
        self.apply_view(view)

    def on_relist(self, namespace: str, listed: list[Listed], marker: int) -> None:
        present = set()
        for pod in listed:
            present.add(pod.name)
            if pod.view is not None and pod.view.key is not None:
                self.apply_view(pod.view)
        for (ns, name), tracked in list(self.tracked.items()):
            if ns == namespace and name not in present and tracked.seq < marker:
                self.forget(ns, name)
                if not tracked.exited:
                    reason = tracked.kill_reason or "Lost"
                    self._vanished(
                        tracked,
                        functools.partial(
                            self.exit_without_pod,
                            tracked,
                            reason,
                            "pod disappeared while not watched",
                        ),
                    )

    def apply(self, pod: Pod) -> None:
        """Fold one observed pod state into its tracking entry; emit what is new."""
        self.apply_view(observe(pod))

    def apply_view(self, view: PodView) -> None:
        if view.key is None:
            return
        tracked = self.tracked.get((view.namespace, view.name))
        if tracked is not None and None not in (tracked.uid, view.uid) and tracked.uid != view.uid:
            # The pod was replaced by one of the same name (the same try launched again
            # after its first pod never ran): the old one is gone.
            self.forget(view.namespace, view.name)
            if not tracked.exited:
                self.exit_without_pod(tracked, tracked.kill_reason or "Lost", "pod replaced")
            tracked = None
        if tracked is None:
            tracked = self.track(view.key, view.namespace, view.name)
        tracked.uid = tracked.uid or view.uid
        tracked.phase = view.phase
        if tracked.exited:
            return
        if view.started and not tracked.started:
            tracked.started = True
            self.events.put_nowait(AttemptStarted(tracked.key, tracked.handle, now()))
        if view.terminal:
            self._begin_exit(tracked, view, pod_gone=False)
        elif view.pending and not view.deleting:
            if tracked.pending_since is None:
                tracked.pending_since = self._clock()
            tracked.pending_reason = view.pending_reason
            tracked.pending_message = view.pending_message
            if view.hopeless:
                self._fail_stuck(tracked, waited=False)
        else:
            tracked.pending_since = None

    # ------------------------------------------------------------------ exits

    def _begin_exit(self, tracked: Tracked, view: PodView, *, pod_gone: bool) -> None:
        tracked.exited = True  # dedup now, before any await
        tracked.succeeded = view.exit_code == 0
        tracked.finished_at = view.finished_at or now()
        if view.started and not tracked.started:
            tracked.started = True
            self.events.put_nowait(AttemptStarted(tracked.key, tracked.handle, now()))
        self._spawn(self._finish(tracked, view, pod_gone=pod_gone))

    async def _finish(self, tracked: Tracked, view: PodView, *, pod_gone: bool) -> None:
        """Log tail first, then the event; the pod stays until `acknowledge`."""
        log_tail: str | None = None
        try:
            if view.started and not pod_gone and self.settings.log_tail_lines > 0:
                log_tail = await self._read_tail(tracked)
        except MiniflowError as exc:
            log.warning("log tail of %s unavailable: %s", tracked.key, exc)
        except Exception:  # the exit must be reported whatever went wrong here
            log.exception("reading the log tail of %s failed", tracked.key)
        reason, message = view.reason, view.message
        if tracked.kill_reason is not None:
            message = f"{view.reason}: {message}" if message else view.reason
            reason = tracked.kill_reason
        if not pod_gone:
            self._unacknowledged[tracked.key] = tracked
        self.events.put_nowait(
            AttemptExited(
                tracked.key,
                tracked.handle,
                view.exit_code,
                reason,
                now(),
                log_tail=log_tail,
                message=message,
                termination_message=view.termination_message,
            )
        )

    async def _read_tail(self, tracked: Tracked) -> str:
        async with self._io_slots:
            return await with_retries(
                lambda: self._client().read_log(
                    tracked.name,
                    tracked.namespace,
                    tail_lines=self.settings.log_tail_lines,
                    container=pods.MAIN_CONTAINER,
                ),
                what=f"read log of {tracked.namespace}/{tracked.name}",
                policy=self.settings.retry,
            )

    def _vanished(self, tracked: Tracked, report: Callable[[], None]) -> None:
        """A pod left the watch's view before its exit was decided: `report` it, at once
        if miniflow deleted it or the watch sees every miniflow pod; else (the watch
        selects one owner's pods) once a GET shows it is really gone, since a pod
        re-labelled to another scheduler leaves the view exactly like a deleted one."""
        if self.owner is None or tracked.kill_reason is not None:
            report()
            return
        tracked.exited = True  # decided here: reported below, or handed over
        self._spawn(self._report_unless_handed_over(tracked, report))

    async def _report_unless_handed_over(
        self, tracked: Tracked, report: Callable[[], None]
    ) -> None:
        try:
            async with self._io_slots:
                pod = await with_retries(
                    lambda: self._client().get_pod(tracked.name, tracked.namespace),
                    what=f"get pod {tracked.namespace}/{tracked.name}",
                    policy=self.settings.retry,
                )
        except PodNotFound:
            pod = None
        except MiniflowError as exc:
            log.warning("cannot tell whether pod of %s still exists: %s", tracked.key, exc)
            pod = None
        if pod is not None:
            uid = (pod.get("metadata") or {}).get("uid")
            owner = pods.owner_of(pod)
            if uid == tracked.uid and owner != self.owner:
                log.warning(
                    "pod of %s was handed over to scheduler %s: no longer following it",
                    tracked.key,
                    owner,
                )
                return
        report()

    def exit_without_pod(self, tracked: Tracked, reason: str, message: str) -> None:
        """Report the attempt ended with no pod left to read (exit code unknown)."""
        tracked.exited = True
        self.events.put_nowait(
            AttemptExited(tracked.key, tracked.handle, None, reason, now(), message=message)
        )

    def acknowledge(self, keys: Sequence[AttemptKey]) -> None:
        """The scheduler committed these exits: their pods may now be cleaned up."""
        wall = now()
        for key in keys:
            tracked = self._unacknowledged.pop(key, None)
            if tracked is None:
                continue
            tracked.acknowledged = True
            if self._cleanup_due(tracked, wall):
                self._start_cleanup(tracked)

    def disown(self, keys: Sequence[AttemptKey]) -> None:
        """Forget these attempts' pods without cleaning them up: another scheduler owns
        them now (an `adopt` tracks one again, should it come back)."""
        wanted = set(keys)
        for place, tracked in list(self.tracked.items()):
            if tracked.key in wanted:
                del self.tracked[place]
        for key in wanted:
            self._unacknowledged.pop(key, None)

    # ------------------------------------------------------------------ cleanup

    def _cleanup_due(self, tracked: Tracked, wall: datetime) -> bool:
        """Whether this pod should be deleted now (a kept exit: never before it was
        acknowledged; a stuck pod: whenever its delete has not gone through yet)."""
        if tracked.gone or tracked.cleaning:
            return False
        if tracked.doomed:
            return True
        if (
            not tracked.acknowledged
            or tracked.kill_reason is not None  # the kill deletes it
            or self.settings.cleanup == "never"
        ):
            return False
        if tracked.succeeded:
            return True
        finished = tracked.finished_at or wall
        return (wall - finished).total_seconds() >= self.settings.keep_failed_for

    def _start_cleanup(self, tracked: Tracked) -> None:
        tracked.cleaning = True
        self._spawn(self._cleanup(tracked))

    async def _cleanup(self, tracked: Tracked) -> None:
        """Delete the pod; on failure leave it to the sweep (`cleaning` is reset)."""
        tracked.cleaning = True
        try:
            grace = 0 if tracked.doomed else None  # a stuck pod runs nothing worth waiting for
            async with self._io_slots:
                await self.delete(tracked.namespace, tracked.name, grace=grace)
        except PodNotFound:
            tracked.gone = True
        except MiniflowError as exc:
            tracked.cleaning = False
            log.warning("delete of pod %s/%s failed: %s", tracked.namespace, tracked.name, exc)
            return
        except BaseException:
            tracked.cleaning = False
            raise
        self._report_stuck(tracked)

    # ------------------------------------------------------------------ sweeping

    async def sweep(self) -> None:
        """Forever: fail pods pending too long, delete kept pods whose time has come."""
        while True:
            await asyncio.sleep(self._sweep_interval())
            self.sweep_once()

    def _sweep_interval(self) -> float:
        spans = [self.settings.pending_timeout]
        if self.settings.cleanup != "never" and self.settings.keep_failed_for > 0:
            spans.append(self.settings.keep_failed_for)
        return min(max(min(spans) / 5, 0.05), 5.0)

    def sweep_once(self) -> None:
        current, wall = self._clock(), now()
        for tracked in list(self.tracked.values()):
            since = tracked.pending_since
            if (
                not tracked.exited
                and since is not None
                and current - since >= self.settings.pending_timeout
                # Judged on what the watch sees now: a pod seen pending before an API
                # outage may well be running, or finished, by now.
                and self._fresh(tracked.namespace)
            ):
                self._fail_stuck(tracked, waited=True)
            elif self._cleanup_due(tracked, wall):
                self._start_cleanup(tracked)

    def _fail_stuck(self, tracked: Tracked, *, waited: bool) -> None:
        tracked.exited = True
        self._spawn(self._kill_stuck(tracked, waited=waited))

    async def _kill_stuck(self, tracked: Tracked, *, waited: bool) -> None:
        """Delete a pod that will not start; report it (reason, waiting message) once gone.

        Deleted without waiting for an acknowledgement, and reported only when
        the delete went through (the sweep retries a failed one): a pod left
        behind could still start and run a try the scheduler counts as failed.
        """
        reason = tracked.pending_reason or "Pending"
        message = tracked.pending_message
        if waited:
            waited_for = f"still pending after {self.settings.pending_timeout:g}s"
            message = f"{message} ({waited_for})" if message else waited_for
        log.warning("pod of %s will not start (%s: %s): deleting", tracked.key, reason, message)
        tracked.doomed = True
        tracked.stuck_exit = (reason, message)
        await self._cleanup(tracked)

    def _report_stuck(self, tracked: Tracked) -> None:
        if tracked.stuck_exit is not None:
            reason, message = tracked.stuck_exit
            tracked.stuck_exit = None
            self.events.put_nowait(
                AttemptExited(tracked.key, tracked.handle, None, reason, now(), message=message)
            )

    # ------------------------------------------------------------------ deleting

    async def delete(self, namespace: str, name: str, *, grace: int | None = None) -> None:
        """Delete the pod (with retries); raises `PodNotFound` or the API error."""
        client = self._client()
        await with_retries(
            lambda: client.delete_pod(name, namespace, grace_period_seconds=grace),
            what=f"delete pod {namespace}/{name}",
            policy=self.settings.retry,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())
