"""`KubernetesLauncher`: one pod per attempt, status from one watch per namespace.

Request budget of a task on the happy path: create + log read + delete = 3
requests; everything else comes from the shared namespace watch
(`kube_watch.NamespaceWatch`), never from polling a pod.

Design decisions:

- **Idempotent launch.** Pod names are deterministic per attempt
  (`pods.pod_name`), so a create answered 409 means the attempt is already
  running: it is adopted (``LaunchResult(adopted=True)``), never duplicated. A
  create retried after a lost answer lands in the same branch.
- **Handles** are the pod name, or ``"<namespace>/<name>"`` when the pod is
  not in the default namespace (``/`` never occurs in a pod name), so
  `kill`/`adopt`/`read_logs` know where to look after a restart.
- **What the launcher tracks.** Every pod the watch sees with miniflow's
  label and a readable key in its annotations, including pods launched before
  a restart: adoption is simply "the relist found it". Events are
  deduplicated per pod: at most one `AttemptStarted` and one `AttemptExited`,
  however often the API repeats a state.
- **Exit handling order.** Mark the pod exited (dedup), read the log tail
  (only if the container ever ran), put the `AttemptExited` event with the
  tail, and only then delete the pod per the cleanup policy: logs survive
  cleanup.
- **Cleanup policies.** ``"on_success"`` deletes pods that exited 0 and
  leaves failed ones for inspection (the sanity loop or a human removes
  them); ``"always"`` deletes every pod, failed ones after
  ``keep_failed_for`` seconds; ``"never"`` deletes nothing.
- **Stuck pods.** A pod pending with an image-pull/config error or
  unschedulable for longer than ``pending_timeout`` is deleted and reported
  exited with that reason (``exit_code=None``, the waiting message).
- **Disappearances.** A pod deleted before it terminated is reported
  "Deleted" (the kill reason if miniflow killed it); a tracked pod missing
  from a relist is reported "Lost".

Exit reasons: the container's ``terminated.reason`` (Completed, Error,
OOMKilled, ...), the pod's ``status.reason`` (DeadlineExceeded, Evicted),
ErrImagePull / ImagePullBackOff / CreateContainerConfigError /
InvalidImageName / Unschedulable (stuck), Deleted, Lost, or the ``reason``
given to `kill`.

Launching, killing and adopting live here; following each pod to its end (the
dedup, exit handling, cleanup and stuck pods above) lives in `kube_tracker`.
This module never touches the database and never imports kubernetes_asyncio
(that is `kube_client`'s job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from miniflow.errors import MiniflowError, PermanentError, RetryableError
from miniflow.launchers import pods
from miniflow.launchers.base import (
    AliveAttempt,
    AttemptKey,
    LauncherEvent,
    LaunchResult,
    TaskSpec,
)
from miniflow.launchers.kube_client import (
    AlreadyExists,
    KubeApiError,
    KubeClient,
    KubeConnectionError,
    PodNotFound,
    RetryPolicy,
    with_retries,
)
from miniflow.launchers.kube_tracker import CleanupPolicy, PodTracker, Tracked
from miniflow.launchers.kube_watch import NamespaceWatch

log = logging.getLogger(__name__)


@dataclass
class _Watching:
    watch: NamespaceWatch
    task: asyncio.Task[None]


class KubernetesLauncher:
    """Runs each attempt as a pod; see the module docstring."""

    name = "kubernetes"
    worker_kinds: frozenset[str] = frozenset({"bash", "python"})

    def __init__(
        self,
        *,
        defaults: pods.PodDefaults,
        kubeconfig: str | None = None,
        context: str | None = None,
        max_concurrent_creates: int = 32,
        cleanup: CleanupPolicy = "on_success",
        keep_failed_for: float = 0.0,
        log_tail_lines: int = 100,
        pending_timeout: float = 300.0,
        delete_grace_period: int = 30,
        watch_timeout: int = 300,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        start_timeout: float = 30.0,
    ) -> None:
        if cleanup not in ("on_success", "always", "never"):
            raise ValueError(f"cleanup must be on_success, always or never, not {cleanup!r}")
        self.defaults = defaults
        self.cleanup: CleanupPolicy = cleanup
        self.keep_failed_for = keep_failed_for
        self.log_tail_lines = log_tail_lines
        self.pending_timeout = pending_timeout
        self.start_timeout = start_timeout
        self.delete_grace_period = delete_grace_period
        self.watch_timeout = watch_timeout
        self.retry = retry or RetryPolicy()
        self._kubeconfig = kubeconfig
        self._context = context
        self._max_concurrent = max_concurrent_creates
        self._events: asyncio.Queue[LauncherEvent] = asyncio.Queue()
        self._client: KubeClient | None = None
        self._watches: dict[str, _Watching] = {}
        self._tracker = PodTracker(
            events=self._events,
            settings=self,
            client=self._client_or_fail,
            handle=self._handle,
            clock=clock,
            max_concurrent_io=max_concurrent_creates,
        )
        self._tracked = self._tracker.tracked  # every known pod, by (namespace, name)
        self._sweeper: asyncio.Task[None] | None = None
        self._create_slots = asyncio.Semaphore(max_concurrent_creates)

    # ------------------------------------------------------------------ protocol

    @property
    def events(self) -> asyncio.Queue[LauncherEvent]:
        return self._events

    async def start(self) -> None:
        """Connect, start the default namespace's watch and wait for its first list."""
        self._client = await KubeClient.connect(
            kubeconfig=self._kubeconfig,
            context=self._context,
            max_connections=self._max_concurrent + 16,
        )
        watching = self._ensure_watch(self.defaults.namespace)
        self._sweeper = asyncio.create_task(
            self._tracker.sweep_stuck(), name="miniflow-kube-sweeper"
        )
        await self._wait_synced(watching)

    async def close(self) -> None:
        tasks = [w.task for w in self._watches.values()]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for task in tasks:
            task.cancel()
        # Let in-flight exit handling (log read, event) finish briefly; then stop.
        if self._tracker.background:
            _, pending = await asyncio.wait(list(self._tracker.background), timeout=5.0)
            for task in pending:
                task.cancel()
            tasks.extend(pending)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watches.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def launch(self, specs: Sequence[TaskSpec]) -> list[LaunchResult]:
        return list(await asyncio.gather(*(self._launch_one(spec) for spec in specs)))

    async def kill(
        self, key: AttemptKey, handle: str | None, *, reason: str, force: bool = False
    ) -> None:
        namespace, name = self._locate(key, handle)
        tracked = self._tracked.get((namespace, name)) or self._tracker.track(key, namespace, name)
        if tracked.exited:
            return
        tracked.kill_reason = reason
        try:
            grace = 0 if force else self.delete_grace_period
            await self._tracker.delete(namespace, name, grace=grace)
        except PodNotFound:
            self._tracked.pop((namespace, name), None)
            self._tracker.exit_without_pod(tracked, reason, "pod not found when killing it")
        except MiniflowError as exc:
            log.warning("kill of %s/%s (%s) failed: %s", namespace, name, key, exc)
            raise

    async def adopt(self, attempts: Sequence[tuple[AttemptKey, str | None]]) -> None:
        for key, handle in attempts:
            namespace, name = self._locate(key, handle)
            await self._wait_synced(self._ensure_watch(namespace))
            tracked = self._tracked.get((namespace, name))
            if tracked is None:
                lost = Tracked(key, name, namespace, self._handle(namespace, name), seq=0)
                self._tracker.exit_without_pod(lost, "Lost", "no pod found for this attempt")

    async def acknowledge(self, keys: Sequence[AttemptKey]) -> None:
        pass

    async def alive(self) -> list[AliveAttempt]:
        return [
            AliveAttempt(
                key=t.key,
                handle=t.handle,
                info={"namespace": t.namespace, "pod": t.name, "phase": t.phase},
            )
            for t in self._tracked.values()
            if not t.exited
        ]

    def read_logs(
        self,
        key: AttemptKey,
        handle: str | None,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
    ) -> AsyncIterator[str]:
        namespace, name = self._locate(key, handle)
        return self._client_or_fail().stream_log(
            name, namespace, tail_lines=tail_lines, follow=follow, container=pods.MAIN_CONTAINER
        )

    # ------------------------------------------------------------------ launching

    async def _launch_one(self, spec: TaskSpec) -> LaunchResult:
        key = spec.key
        try:
            manifest = pods.build_manifest(spec, self.defaults)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return LaunchResult(key, None, error=f"invalid pod settings: {exc}")
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        handle = self._handle(namespace, name)
        client = self._client_or_fail()
        self._ensure_watch(namespace)
        try:
            async with self._create_slots:
                created = await with_retries(
                    lambda: client.create_pod(namespace, manifest),
                    what=f"create pod {namespace}/{name} ({key})",
                    policy=self.retry,
                )
        except AlreadyExists:
            log.info("pod %s/%s already exists: adopting %s", namespace, name, key)
            if (namespace, name) not in self._tracked:
                self._tracker.track(key, namespace, name)
            return LaunchResult(key, handle, adopted=True)
        except RetryableError as exc:
            return LaunchResult(key, None, error=str(exc), retryable=True)
        except KubeApiError as exc:
            return LaunchResult(key, None, error=exc.message or str(exc))
        except PermanentError as exc:
            return LaunchResult(key, None, error=str(exc))
        except Exception as exc:  # never raise for one spec; this is a bug, say so
            log.exception("unexpected error launching %s", key)
            return LaunchResult(key, None, error=f"unexpected error: {exc!r}")
        self._tracker.apply(created)
        return LaunchResult(key, handle)

    # ------------------------------------------------------------------ watching

    def _ensure_watch(self, namespace: str) -> _Watching:
        watching = self._watches.get(namespace)
        if watching is None:
            watch = NamespaceWatch(
                self._client_or_fail(),
                namespace,
                on_event=self._tracker.on_event,
                on_relist=self._tracker.on_relist,
                before_list=self._tracker.next_seq,
                retry=self.retry,
                watch_timeout=self.watch_timeout,
            )
            task = asyncio.create_task(watch.run(), name=f"miniflow-kube-watch-{namespace}")
            watching = self._watches[namespace] = _Watching(watch, task)
        return watching

    async def _wait_synced(self, watching: _Watching) -> None:
        """Wait for the first list; an API server that never answers is a clear error."""
        synced = asyncio.create_task(watching.watch.synced.wait())
        done, _ = await asyncio.wait(
            [synced, watching.task], timeout=self.start_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if synced not in done:
            synced.cancel()
            if watching.task in done:
                watching.task.result()  # the watch died: raise why
            host = self._client.host if self._client else "?"
            await self.close()
            raise KubeConnectionError(
                f"the Kubernetes API server at {host} did not answer a pod list in namespace "
                f"{self.defaults.namespace!r} within {self.start_timeout:g}s"
            )

    # ------------------------------------------------------------------ helpers

    def _handle(self, namespace: str, name: str) -> str:
        return name if namespace == self.defaults.namespace else f"{namespace}/{name}"

    def _locate(self, key: AttemptKey, handle: str | None) -> tuple[str, str]:
        if not handle:
            return self.defaults.namespace, pods.pod_name(key)
        namespace, _, name = handle.rpartition("/")
        return namespace or self.defaults.namespace, name

    def _client_or_fail(self) -> KubeClient:
        if self._client is None:
            raise RuntimeError("KubernetesLauncher.start() has not been called")
        return self._client
