"""Pod tracking for `KubernetesLauncher`: observed pod states in, attempt events out.

The namespace watch (`kube_watch`) reports what the API server says about
pods; a `PodTracker` folds each state into one `Tracked` entry per pod and
emits what is new. Kept apart from the launcher so launching (create, kill,
adopt) and ending (exit events, log tail, cleanup, stuck pods) each read on
their own. The rules it implements are described in `kubernetes`' module
docstring: per-pod deduplication, the exit handling order (log tail, event,
then cleanup, so logs survive cleanup), the cleanup policies, stuck pods and
disappearances.

This module never touches the database and never imports kubernetes_asyncio
(that is `kube_client`'s job).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from miniflow.errors import MiniflowError
from miniflow.launchers import pods
from miniflow.launchers.base import AttemptExited, AttemptKey, AttemptStarted, LauncherEvent
from miniflow.launchers.kube_client import KubeClient, PodNotFound, RetryPolicy, with_retries
from miniflow.launchers.kube_watch import Pod, PodView, observe

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
    """Per-pod dedup state; lives until the pod is gone."""

    key: AttemptKey
    name: str
    namespace: str
    handle: str
    seq: int  # tracking order, to tell pods created during a relist from lost ones
    phase: str = "Pending"
    started: bool = False
    exited: bool = False
    stuck_since: float | None = None
    stuck_reason: str | None = None
    stuck_message: str | None = None
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
        max_concurrent_io: int,
    ) -> None:
        self.events = events
        self.settings = settings
        self._client = client
        self._handle = handle
        self._clock = clock
        self.tracked: dict[tuple[str, str], Tracked] = {}
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

    # ------------------------------------------------------------------ observing

    def on_event(self, event_type: str, pod: Pod) -> None:
        view = observe(pod)
        if view.key is None:
            return
        ident = (view.namespace, view.name)
        if event_type == "DELETED":
            tracked = self.tracked.pop(ident, None)
            if tracked is not None and not tracked.exited:
                if view.terminal:
                    self._begin_exit(tracked, view, pod_gone=True)
                else:
                    reason = tracked.kill_reason or "Deleted"
                    self.exit_without_pod(tracked, reason, "pod deleted before it finished")
            return
        self.apply(pod, view)

    def on_relist(self, namespace: str, items: list[Pod], marker: int) -> None:
        present = set()
        for pod in items:
            view = observe(pod)
            if view.key is not None:
                present.add(view.name)
                self.apply(pod, view)
        for ident, tracked in list(self.tracked.items()):
            if ident[0] == namespace and ident[1] not in present and tracked.seq < marker:
                del self.tracked[ident]
                if not tracked.exited:
                    reason = tracked.kill_reason or "Lost"
                    self.exit_without_pod(tracked, reason, "pod disappeared while not watched")

    def apply(self, pod: Pod, view: PodView | None = None) -> None:
        """Fold one observed pod state into its tracking entry; emit what is new."""
        view = view or observe(pod)
        if view.key is None:
            return
        tracked = self.tracked.get((view.namespace, view.name))
        if tracked is None:
            tracked = self.track(view.key, view.namespace, view.name)
        tracked.phase = view.phase
        if tracked.exited:
            return
        if view.started and not tracked.started:
            tracked.started = True
            self.events.put_nowait(AttemptStarted(tracked.key, tracked.handle, now()))
        if view.terminal:
            self._begin_exit(tracked, view, pod_gone=False)
        elif view.stuck_reason is not None:
            if tracked.stuck_since is None:
                tracked.stuck_since = self._clock()
            tracked.stuck_reason = view.stuck_reason
            tracked.stuck_message = view.stuck_message
        else:
            tracked.stuck_since = None

    # ------------------------------------------------------------------ exits

    def _begin_exit(self, tracked: Tracked, view: PodView, *, pod_gone: bool) -> None:
        tracked.exited = True  # dedup now, before any await
        if view.started and not tracked.started:
            tracked.started = True
            self.events.put_nowait(AttemptStarted(tracked.key, tracked.handle, now()))
        self._spawn(self._finish(tracked, view, pod_gone=pod_gone))

    async def _finish(self, tracked: Tracked, view: PodView, *, pod_gone: bool) -> None:
        """Log tail first, then the event, then cleanup (see `kubernetes`' docstring)."""
        settings = self.settings
        async with self._io_slots:
            log_tail: str | None = None
            message = view.message
            if view.started and not pod_gone and settings.log_tail_lines > 0:
                try:
                    log_tail = await with_retries(
                        lambda: self._client().read_log(
                            tracked.name,
                            tracked.namespace,
                            tail_lines=settings.log_tail_lines,
                            container=pods.MAIN_CONTAINER,
                        ),
                        what=f"read log of {tracked.namespace}/{tracked.name}",
                        policy=settings.retry,
                    )
                except MiniflowError as exc:
                    log.warning("log tail of %s unavailable: %s", tracked.key, exc)
            reason = view.reason
            if tracked.kill_reason is not None:
                message = f"{view.reason}: {message}" if message else view.reason
                reason = tracked.kill_reason
            self.events.put_nowait(
                AttemptExited(
                    tracked.key,
                    tracked.handle,
                    view.exit_code,
                    reason,
                    now(),
                    log_tail=log_tail,
                    message=message,
                )
            )
            if pod_gone or tracked.kill_reason is not None or settings.cleanup == "never":
                return
            succeeded = view.exit_code == 0
            if settings.cleanup == "on_success" and not succeeded:
                return
            delay = 0.0 if succeeded else settings.keep_failed_for
        if delay > 0:
            await asyncio.sleep(delay)
        await self._delete_quietly(tracked)

    def exit_without_pod(self, tracked: Tracked, reason: str, message: str) -> None:
        """Report the attempt ended with no pod left to read (exit code unknown)."""
        tracked.exited = True
        self.events.put_nowait(
            AttemptExited(tracked.key, tracked.handle, None, reason, now(), message=message)
        )

    async def sweep_stuck(self) -> None:
        """Kill pods stuck pending past `pending_timeout` (checked a few times per timeout)."""
        interval = min(max(self.settings.pending_timeout / 5, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            current = self._clock()
            for tracked in list(self.tracked.values()):
                since = tracked.stuck_since
                if (
                    tracked.exited
                    or since is None
                    or current - since < self.settings.pending_timeout
                ):
                    continue
                tracked.exited = True
                self._spawn(self._kill_stuck(tracked))

    async def _kill_stuck(self, tracked: Tracked) -> None:
        reason = tracked.stuck_reason or "Pending"
        log.warning(
            "pod of %s stuck %s for %ss: deleting",
            tracked.key,
            reason,
            self.settings.pending_timeout,
        )
        async with self._io_slots:
            await self._delete_quietly(tracked, grace=0)
        self.events.put_nowait(
            AttemptExited(
                tracked.key, tracked.handle, None, reason, now(), message=tracked.stuck_message
            )
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

    async def _delete_quietly(self, tracked: Tracked, *, grace: int | None = None) -> None:
        try:
            await self.delete(tracked.namespace, tracked.name, grace=grace)
        except PodNotFound:
            pass
        except MiniflowError as exc:  # the sanity loop deletes leftovers later
            log.warning("cleanup of pod %s/%s failed: %s", tracked.namespace, tracked.name, exc)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())
