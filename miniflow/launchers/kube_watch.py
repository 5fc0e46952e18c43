"""One pod watch per namespace, and the translation of pod status into observations.

Status reaches miniflow only through this watch: never one poll per pod. A
`NamespaceWatch` lists the managed pods (label selector), remembers the list's
``resourceVersion`` and watches from it with bookmarks. When the stream ends
cleanly after the full server timeout it resumes from the last version it saw
(bookmarks keep that version fresh); a stream that ends early was dropped and
is treated like a failure. On 410 Gone, an ERROR event, a malformed event, a
dropped or broken stream or an API error it backs off (not after a 410),
relists and hands the full list to `on_relist`, so the owner can reconcile
what changed while nobody was watching (including pods that vanished), and
then resumes; `live` says whether the owner's view is current (listed, and
watching since). `refresh()` asks for such a relist now (the stream in progress
is abandoned and the watch resumes from the new list), which is how the
owner takes a fresh look without racing the stream: lists and events are
only ever applied by the watch's own task, in order. The owner (the
launcher) holds the per-pod state and deduplicates; this module keeps no
per-pod state of its own, and it does not guard against bugs in the owner's
callbacks: an exception other than a `MiniflowError` ends `run()`, and the
owner supervises it (restarting it relists first).

`observe` is a pure function from a pod dict to a `PodView`: phase, whether
the main container has started, its exit (code, reason, message, finish
time) and, while the pod is pending, why (the waiting reason of a container,
or the scheduler's reason) and whether that reason can never heal. It must
stay pure so it can be tested on recorded pod JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from miniflow.errors import MiniflowError
from miniflow.launchers import pods, stats
from miniflow.launchers.base import AttemptKey
from miniflow.launchers.kube_client import KubeClient, RetryPolicy, WatchExpired, with_retries

log = logging.getLogger(__name__)

Pod = dict[str, Any]

# Pod-level reasons that explain an exit better than the container's "Error".
POD_EXIT_REASONS = frozenset({"DeadlineExceeded", "Evicted", "Preempting", "Shutdown"})
# Waiting reasons of a container that is merely on its way (not an error of its own).
ON_THE_WAY = frozenset({"ContainerCreating", "PodInitializing"})
# Pending reasons no amount of waiting fixes: the pod fails at once, without
# waiting for `pending_timeout`. A CreateContainerConfigError only qualifies for
# the kubelet's runAsNonRoot verdicts on the image (a missing Secret may appear).
HOPELESS_REASONS = frozenset({"InvalidImageName"})
_HOPELESS_CONFIG = re.compile(
    r"runAsNonRoot and image will run as root|cannot verify user is non-root"
)


@dataclass(frozen=True, slots=True)
class PodView:
    """What miniflow cares about in one pod's status."""

    name: str
    namespace: str
    uid: str | None  # tells a pod from a later one of the same name
    key: AttemptKey | None  # from the annotations; None = not a pod miniflow made
    phase: str
    started: bool  # the main container is or was running
    terminal: bool  # the main container (or the pod) has finished
    exit_code: int | None
    reason: str | None
    message: str | None
    finished_at: datetime | None  # when the container (else the pod) finished, if said
    deleting: bool  # a deletion is under way (deletionTimestamp set)
    pending_reason: str | None  # while pending: why (None = nothing said yet)
    pending_message: str | None
    hopeless: bool  # pending for a reason that cannot heal: fail now
    # the main container's `state.terminated.message` as written (a `push_result` Pod
    # task's result), whatever the pod's own reason says
    termination_message: str | None = None

    @property
    def pending(self) -> bool:
        """Not started and not finished: waiting to be scheduled, pulled, created..."""
        return not self.started and not self.terminal


def _main_status(pod: Pod) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == pods.MAIN_CONTAINER:
            return dict(status)
    return dict(statuses[0]) if statuses else {}


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _pod_finished_at(status: dict[str, Any]) -> datetime | None:
    """The pod's last condition change: when it became terminal, for a pod whose
    container never reported a finish time."""
    stamps = [_timestamp(c.get("lastTransitionTime")) for c in status.get("conditions") or []]
    known = [s for s in stamps if s is not None]
    return max(known) if known else None


def _pending_why(status: dict[str, Any], main: dict[str, Any]) -> tuple[str | None, str | None]:
    """(reason, message) of a pod that has not started: an init container's error,
    else the main container's waiting reason, else the scheduler's verdict."""
    for init in status.get("initContainerStatuses") or []:
        waiting = (init.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in ON_THE_WAY:
            return str(waiting["reason"]), waiting.get("message")
    waiting = (main.get("state") or {}).get("waiting") or {}
    if waiting.get("reason"):
        return str(waiting["reason"]), waiting.get("message")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("reason") or "Unschedulable"), condition.get("message")
    return None, None


@dataclass(frozen=True, slots=True)
class Listed:
    """One pod of a list, as a relist hands it to the owner: read (`observe`) as its
    page arrives, so a relist of 10,000 pods never holds them all as dicts."""

    name: str
    view: PodView | None  # None: its status could not be read (skipped, not lost)


def read_listed(pod: Pod) -> Listed:
    name = str((pod.get("metadata") or {}).get("name", ""))
    try:
        return Listed(name, observe(pod))
    except Exception:
        # One unreadable pod must not stop every other pod's status: skip it (it is
        # not lost either), and say why with the traceback.
        namespace = (pod.get("metadata") or {}).get("namespace", "")
        log.exception("cannot read the status of pod %s/%s; skipping it", namespace, name)
        return Listed(name, None)


def observe(pod: Pod) -> PodView:
    """Translate a pod (as the API serves it) into a `PodView`."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    container = _main_status(pod)
    state = container.get("state") or {}
    terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated")

    # A sidecar added through pod_override may keep the pod Running after the
    # main container ended: the main container decides.
    terminal = phase in ("Succeeded", "Failed") or bool(state.get("terminated"))
    started = (
        phase == "Running" or "running" in state or bool(terminated and terminated.get("startedAt"))
    )
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    finished_at: datetime | None = None
    termination_message: str | None = None
    if terminal:
        if terminated:
            raw = terminated.get("message")
            termination_message = raw if isinstance(raw, str) else None
            exit_code = int(terminated["exitCode"]) if "exitCode" in terminated else None
            reason = terminated.get("reason")
            message = terminated.get("message")
            finished_at = _timestamp(terminated.get("finishedAt"))
        pod_reason = status.get("reason")
        if pod_reason in POD_EXIT_REASONS or (pod_reason and not reason):
            reason = str(pod_reason)
            message = status.get("message") or message
        if reason is None:
            reason = "Completed" if phase == "Succeeded" else "Error"
        finished_at = finished_at or _pod_finished_at(status)

    pending_reason: str | None = None
    pending_message: str | None = None
    if not terminal and not started:
        pending_reason, pending_message = _pending_why(status, container)
    hopeless = pending_reason in HOPELESS_REASONS or (
        pending_reason == "CreateContainerConfigError"
        and bool(_HOPELESS_CONFIG.search(pending_message or ""))
    )
    return PodView(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        uid=str(meta["uid"]) if meta.get("uid") else None,
        key=pods.key_from_annotations(meta.get("annotations")),
        phase=phase,
        started=started,
        terminal=terminal,
        exit_code=exit_code,
        reason=reason,
        message=message,
        finished_at=finished_at,
        deleting=bool(meta.get("deletionTimestamp")),
        pending_reason=pending_reason,
        pending_message=pending_message,
        hopeless=hopeless,
        termination_message=termination_message,
    )


class NamespaceWatch:
    """List + watch of the managed pods of one namespace, forever, until cancelled.

    ``selector`` narrows "managed" (default: every pod miniflow manages), e.g. to
    one scheduler's own pods; a pod whose labels stop matching it is, for this
    watch, deleted (the API server sends DELETED), and one that starts matching
    is added.

    Callbacks are called on the event loop, in order, never concurrently:
    ``on_event(type, pod)`` for ADDED/MODIFIED/DELETED; ``before_list()``
    just before every (re)list request, returning a marker that is passed to
    ``on_relist(namespace, listed, marker)`` with the complete current set (so
    the owner can tell pods it learnt about during the list from lost ones).
    """

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        *,
        on_event: Callable[[str, Pod], None],
        on_relist: Callable[[str, list[Listed], int], None],
        before_list: Callable[[], int],
        retry: RetryPolicy,
        watch_timeout: int = 300,
        selector: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.namespace = namespace
        self.selector = selector or pods.selector()
        self.synced = asyncio.Event()  # set after the first successful list
        self.live = False  # the owner's view is current: listed, and watching since
        self.relists = 0
        self.progress_at = time.monotonic()
        """When the watch last made progress (an event, a list, a turn of its loop): the
        scheduler's `/healthz` takes a watch silent for longer than its period as stuck."""
        self._client = client
        self._on_event = on_event
        self._on_relist = on_relist
        self._before_list = before_list
        self._retry = retry
        self._watch_timeout = watch_timeout
        self._sleep = sleep
        self._refresh_waiters: list[asyncio.Future[None]] = []
        self._refresh_wanted = asyncio.Event()

    async def refresh(self) -> None:
        """Relist now and reconcile (`on_relist`); return once a list requested after
        this call has been applied. Raises the list's error if that list fails."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refresh_waiters.append(waiter)
        self._refresh_wanted.set()
        await waiter

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            # Stopped for good: nobody will relist for these. (After a crash the
            # owner runs `run` again, whose first list answers them.)
            for waiter in self._refresh_waiters:
                waiter.cancel()
            self._refresh_waiters.clear()
            raise
        finally:
            self.live = False  # until the next list, whoever runs it

    async def _run(self) -> None:
        resource_version: str | None = None
        failures = 0
        while True:
            self.progress_at = time.monotonic()
            try:
                if resource_version is None or self._refresh_waiters:
                    resource_version = await self._relist()
                started = asyncio.get_running_loop().time()
                ended = await self._watch_unless_refreshed(resource_version)
                if ended is None:  # a refresh was asked: relist at once
                    continue
                resource_version = ended
                elapsed = asyncio.get_running_loop().time() - started
                if elapsed >= self._watch_timeout - 1:
                    failures = 0
                    continue
                # Ended before the server's timeout: dropped, events may be lost.
                self.live = False
                stats.KUBE.watch_restarts += 1
                failures += 1
                delay = self._retry.delay(min(failures, 10))
                log.info("watch of %s dropped after %.1fs; relisting", self.namespace, elapsed)
                resource_version = None
                await self._sleep(delay)
            except WatchExpired:
                log.info("watch of %s expired (410); relisting", self.namespace)
                self.live = False
                stats.KUBE.watch_restarts += 1
                resource_version = None
            except MiniflowError as exc:
                # Any other failure: the stream may have missed events.
                self.live = False
                stats.KUBE.watch_restarts += 1
                failures += 1
                delay = self._retry.delay(min(failures, 10))
                log.warning(
                    "watch of %s failed (%s); relisting in %.2fs", self.namespace, exc, delay
                )
                resource_version = None
                await self._sleep(delay)

    async def _relist(self) -> str:
        # Only refreshes asked before this list was sent are answered by it.
        waiters, self._refresh_waiters = self._refresh_waiters, []
        self._refresh_wanted.clear()
        try:
            marker = self._before_list()
            items, resource_version = await with_retries(
                lambda: self._client.list_pods(self.namespace, self.selector, keep=read_listed),
                what=f"list pods in {self.namespace}",
                policy=self._retry,
                sleep=self._sleep,
            )
            self.relists += 1
            stats.KUBE.relists += 1
            self.progress_at = time.monotonic()
            self._on_relist(self.namespace, items, marker)
            self.live = True
        except BaseException as exc:
            for waiter in waiters:
                if not waiter.done():
                    if isinstance(exc, Exception):
                        waiter.set_exception(exc)
                    else:
                        waiter.cancel()
            raise
        self.synced.set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return resource_version

    async def _watch_unless_refreshed(self, resource_version: str) -> str | None:
        """`_watch`, abandoned (None) as soon as a refresh is asked."""
        if self._refresh_waiters:
            return None
        watching = asyncio.ensure_future(self._watch(resource_version))
        wanted = asyncio.ensure_future(self._refresh_wanted.wait())
        try:
            await asyncio.wait({watching, wanted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wanted.cancel()
            if not watching.done():
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
        if watching.cancelled():
            return None
        return watching.result()

    async def _watch(self, resource_version: str) -> str:
        """Watch until the server ends the stream; returns the last version seen."""
        stream = self._client.watch_pods(
            self.namespace, self.selector, resource_version, self._watch_timeout
        )
        # aclosing: an abandoned stream releases its connection now, not at garbage collection.
        async with contextlib.aclosing(stream):
            async for event in stream:
                self.progress_at = time.monotonic()
                obj = event["object"]
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    resource_version = str(version)
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self._on_event(str(event["type"]), obj)
        return resource_version
