"""One pod watch per namespace, and the translation of pod status into observations.

Status reaches miniflow only through this watch: never one poll per pod. A
`NamespaceWatch` lists the managed pods (label selector), remembers the list's
``resourceVersion`` and watches from it with bookmarks. When the stream ends
cleanly after the full server timeout it resumes from the last version it saw
(bookmarks keep that version fresh); a stream that ends early was dropped and
is treated like a failure. On 410 Gone, an ERROR event, a dropped or broken
stream or an API error it backs off (not after a 410), relists
and hands the full list to `on_relist`, so the owner can reconcile what
changed while nobody was watching (including pods that vanished), and then
resumes. The owner (the launcher) holds the per-pod state and deduplicates;
this module keeps no per-pod state of its own.

`observe` is a pure function from a pod dict to a `PodView`: phase, whether
the main container has started, its exit (code, reason, message) and whether
it is stuck pending (image pull errors, unschedulable). It must stay pure so
it can be tested on recorded pod JSON.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from miniflow.errors import MiniflowError
from miniflow.launchers import pods
from miniflow.launchers.base import AttemptKey
from miniflow.launchers.kube_client import KubeClient, RetryPolicy, WatchExpired, with_retries

log = logging.getLogger(__name__)

Pod = dict[str, Any]

# Waiting reasons that will not fix themselves; after `pending_timeout` the
# attempt is killed with this reason.
STUCK_WAITING_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName"}
)
# Pod-level reasons that explain an exit better than the container's "Error".
POD_EXIT_REASONS = frozenset({"DeadlineExceeded", "Evicted", "Preempting", "Shutdown"})


@dataclass(frozen=True, slots=True)
class PodView:
    """What miniflow cares about in one pod's status."""

    name: str
    namespace: str
    key: AttemptKey | None  # from the annotations; None = not a pod miniflow made
    phase: str
    started: bool  # the main container is or was running
    terminal: bool  # the main container (or the pod) has finished
    exit_code: int | None
    reason: str | None
    message: str | None
    stuck_reason: str | None  # set while pending for a reason that will not fix itself
    stuck_message: str | None


def _main_status(pod: Pod) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == pods.MAIN_CONTAINER:
            return dict(status)
    return dict(statuses[0]) if statuses else {}


def observe(pod: Pod) -> PodView:
    """Translate a pod (as the API serves it) into a `PodView`."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    container = _main_status(pod)
    state = container.get("state") or {}
    terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated")
    waiting = state.get("waiting") or {}

    # A sidecar added through pod_override may keep the pod Running after the
    # main container ended: the main container decides.
    terminal = phase in ("Succeeded", "Failed") or bool(state.get("terminated"))
    started = (
        phase == "Running" or "running" in state or bool(terminated and terminated.get("startedAt"))
    )
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    if terminal:
        if terminated:
            exit_code = int(terminated["exitCode"]) if "exitCode" in terminated else None
            reason = terminated.get("reason")
            message = terminated.get("message")
        pod_reason = status.get("reason")
        if pod_reason in POD_EXIT_REASONS or (pod_reason and not reason):
            reason = str(pod_reason)
            message = status.get("message") or message
        if reason is None:
            reason = "Completed" if phase == "Succeeded" else "Error"

    stuck_reason: str | None = None
    stuck_message: str | None = None
    if not terminal and not started:
        if waiting.get("reason") in STUCK_WAITING_REASONS:
            stuck_reason = str(waiting["reason"])
            stuck_message = waiting.get("message")
        else:
            for condition in status.get("conditions") or []:
                if (
                    condition.get("type") == "PodScheduled"
                    and condition.get("status") == "False"
                    and condition.get("reason") == "Unschedulable"
                ):
                    stuck_reason = "Unschedulable"
                    stuck_message = condition.get("message")
    return PodView(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        key=pods.key_from_annotations(meta.get("annotations")),
        phase=phase,
        started=started,
        terminal=terminal,
        exit_code=exit_code,
        reason=reason,
        message=message,
        stuck_reason=stuck_reason,
        stuck_message=stuck_message,
    )


class NamespaceWatch:
    """List + watch of the managed pods of one namespace, forever, until cancelled.

    Callbacks are called on the event loop, in order, never concurrently:
    ``on_event(type, pod)`` for ADDED/MODIFIED/DELETED; ``before_list()``
    just before every (re)list request, returning a marker that is passed to
    ``on_relist(namespace, pods, marker)`` with the complete current set (so
    the owner can tell pods it learnt about during the list from lost ones).
    """

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        *,
        on_event: Callable[[str, Pod], None],
        on_relist: Callable[[str, list[Pod], int], None],
        before_list: Callable[[], int],
        retry: RetryPolicy,
        watch_timeout: int = 300,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.namespace = namespace
        self.synced = asyncio.Event()  # set after the first successful list
        self.relists = 0
        self._client = client
        self._on_event = on_event
        self._on_relist = on_relist
        self._before_list = before_list
        self._retry = retry
        self._watch_timeout = watch_timeout
        self._sleep = sleep

    async def run(self) -> None:
        resource_version: str | None = None
        failures = 0
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._relist()
                started = asyncio.get_running_loop().time()
                resource_version = await self._watch(resource_version)
                elapsed = asyncio.get_running_loop().time() - started
                if elapsed >= self._watch_timeout - 1:
                    failures = 0
                    continue
                # Ended before the server's timeout: dropped, events may be lost.
                failures += 1
                delay = self._retry.delay(min(failures, 10))
                log.info("watch of %s dropped after %.1fs; relisting", self.namespace, elapsed)
                resource_version = None
                await self._sleep(delay)
            except WatchExpired:
                log.info("watch of %s expired (410); relisting", self.namespace)
                resource_version = None
            except MiniflowError as exc:
                # Any other failure: the stream may have missed events.
                failures += 1
                delay = self._retry.delay(min(failures, 10))
                log.warning(
                    "watch of %s failed (%s); relisting in %.2fs", self.namespace, exc, delay
                )
                resource_version = None
                await self._sleep(delay)

    async def _relist(self) -> str:
        marker = self._before_list()
        items, resource_version = await with_retries(
            lambda: self._client.list_pods(self.namespace, pods.selector()),
            what=f"list pods in {self.namespace}",
            policy=self._retry,
            sleep=self._sleep,
        )
        self.relists += 1
        self._on_relist(self.namespace, items, marker)
        self.synced.set()
        return resource_version

    async def _watch(self, resource_version: str) -> str:
        """Watch until the server ends the stream; returns the last version seen."""
        stream = self._client.watch_pods(
            self.namespace, pods.selector(), resource_version, self._watch_timeout
        )
        async for event in stream:
            obj = event.get("object") or {}
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                resource_version = str(version)
            if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                self._on_event(str(event["type"]), obj)
        return resource_version
