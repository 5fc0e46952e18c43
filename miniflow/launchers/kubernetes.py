"""`KubernetesLauncher`: one pod per attempt, status from one watch per namespace.

Request budget of a task on the happy path: create + log read + delete = 3
requests; everything else comes from the shared namespace watch
(`kube_watch.NamespaceWatch`), never from polling a pod. `alive()` adds one
list per watched namespace per call, whatever the number of tasks. Each
namespace pods are launched in costs two requests once (`kube_checks`: a
dry-run create and a GET of the database Secret): the default namespace's at
start-up, where a namespace that does not exist, refuses the scheduler's pods
or lacks the Secret stops the launcher with one `NamespaceUnusable`; any other
on its first launch, where it fails that launch instead.

Design decisions:

- **Idempotent launch.** Pod names are deterministic per attempt
  (`pods.pod_name`), so a create answered 409 means the attempt is already
  running: it is adopted (its handle returned, its events followed), never
  duplicated. A create retried after a lost answer lands in the same branch.
- **Handles** are the pod name, or ``"<namespace>/<name>"`` when the pod is
  not in the default namespace (``/`` never occurs in a pod name), so
  `kill`/`adopt`/`read_logs` know where to look after a restart.
- **What the launcher tracks.** Every pod the watch sees with miniflow's
  label and a readable key in its annotations, including pods launched before
  a restart: adoption is simply "the relist found it".
- **Ownership.** `set_owner` (the scheduler's id, before `start`) makes the
  launcher label every pod it creates with ``miniflow/owner`` and watch only
  pods carrying its own value, so schedulers sharing a namespace never read,
  delete or report a peer's pods. Ownership moves only by re-labelling, one
  PATCH per pod: `adopt` of a try whose pod the watch does not show (another
  owner's label, or none), a 409 on create likewise, and `take_over` of what
  dead owners left (conditional on the pod still carrying the dead owner's
  label, so two survivors never both take one). The re-labelled pod is
  followed at once; the watch then sees it ADDED. A pod re-labelled away
  leaves the watch like a deleted one (DELETED, or missing from a relist):
  unless miniflow deleted it, one GET tells a pod handed over (no longer
  followed, nothing reported) from one really gone (reported as before).
  A launcher never told an owner (the launcher driven on its own, as in
  tests) labels nothing and follows every miniflow pod of its namespaces;
  `take_over` is then a no-op. Requests carry the owner in their User-Agent. Events are
  deduplicated per pod: at most one `AttemptStarted` and one `AttemptExited`,
  however often the API repeats a state. A pod is known by its uid: one
  replaced under the same name (a try launched again) is followed afresh.
- **Exit handling order: a durable hand-off.** Mark the pod exited (dedup),
  read the log tail (only if the container ever ran), put the `AttemptExited`
  event with the tail, then keep the pod until the scheduler calls
  `acknowledge` (right after committing that exit); only then does cleanup
  start. A scheduler killed in between finds the pod again: a starting
  launcher reports the exit (and log tail) of every pod it finds finished,
  acknowledged before or not (recording an exit twice is harmless).
- **Cleanup policies and retention.** After acknowledgement, ``"on_success"``
  and ``"always"`` delete pods that exited 0 at once and failed ones once
  ``keep_failed_for`` seconds have passed since the container (else the pod)
  finished, so the retention survives a restart; the two differ only in the
  default `Config` gives ``keep_failed_for`` (3600 and 0). A periodic sweep
  deletes kept pods when their time comes, and retries failed deletes.
  ``"never"`` deletes nothing (such pods are reported again after a restart).
- **Stuck pods.** A pod still pending (not started) ``pending_timeout``
  seconds after the launcher first saw it pending, for any reason (image
  pull, unschedulable, ContainerCreating, PodInitializing, or none given), is
  deleted (grace 0) and, once the delete went through, reported exited with
  that reason (``Pending`` if none) and the waiting message. It is judged
  only while its namespace's watch is live: after an API outage, on the
  relisted state. A reason that cannot heal (InvalidImageName; a
  CreateContainerConfigError saying the image would run as root under
  runAsNonRoot) fails the pod at once.
- **Kills** delete with the grace period ``kill_grace_period`` (also every
  pod's ``terminationGracePeriodSeconds``, so `activeDeadlineSeconds` ends a
  timed-out task after that grace, not Kubernetes' default 30 s); ``force``
  deletes with grace 0.
- **Disappearances.** A pod deleted before it terminated is reported
  "Deleted" (the kill reason if miniflow killed it); a tracked pod missing
  from a relist is reported "Lost". `alive()` takes a fresh look first: it
  makes every watch relist (in the watch's own task, so a list never races
  the stream) and reconciles like any relist, then returns the attempts not
  yet exited.
- **Supervision.** The watches and the sweep are long-lived tasks run under
  `supervise`: an unexpected exception is logged with its traceback and the
  task restarted after a capped exponential back-off (a watch restarts with a
  relist). A status channel never dies silently.

Request budget of ownership: nothing on the happy path; one PATCH per pod
whose owner changes; one GET per pod that leaves the watch without miniflow
having deleted it.

Exit reasons: the container's ``terminated.reason`` (Completed, Error,
OOMKilled, ...), the pod's ``status.reason`` (DeadlineExceeded, Evicted),
the pending reason of a stuck pod (ErrImagePull, ImagePullBackOff,
InvalidImageName, CreateContainerConfigError, Unschedulable,
ContainerCreating, ..., Pending), Deleted, Lost, or the ``reason`` given to
`kill`.

Launching, killing and adopting live here; following each pod to its end (the
dedup, exit handling, acknowledgement, cleanup and stuck pods above) lives in
`kube_tracker`. This module never touches the database and never imports
kubernetes_asyncio (that is `kube_client`'s job).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import miniflow
from miniflow.errors import MiniflowError, PermanentError, RetryableError
from miniflow.launchers import kube_checks, pods
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
from miniflow.launchers.kube_watch import NamespaceWatch, Pod
from miniflow.launchers.supervise import Backoff, supervise

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Leftover:
    """What taking a listed pod over needs of it (not the whole pod: there may be
    thousands)."""

    name: str
    uid: str | None
    owner: str | None

    @classmethod
    def of(cls, pod: Pod) -> _Leftover:
        meta = pod.get("metadata") or {}
        return cls(str(meta.get("name", "")), meta.get("uid"), pods.owner_of(pod))


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
        keep_failed_for: float = 3600.0,
        log_tail_lines: int = 100,
        pending_timeout: float = 300.0,
        kill_grace_period: float = 30.0,
        watch_timeout: int = 300,
        retry: RetryPolicy | None = None,
        restart_backoff: Backoff | None = None,
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
        self.kill_grace_period = kill_grace_period
        self.watch_timeout = watch_timeout
        self.retry = retry or RetryPolicy()
        self.restart_backoff = restart_backoff or Backoff(base=0.1, cap=10.0)
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
            fresh=self._watch_is_live,
            max_concurrent_io=max_concurrent_creates,
        )
        self._tracked = self._tracker.tracked  # every known pod, by (namespace, name)
        self._sweeper: asyncio.Task[None] | None = None
        # One check per namespace, shared by concurrent launches; a failed one is forgotten
        # so the next launch there checks again (the namespace or Secret may appear).
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._create_slots = asyncio.Semaphore(max_concurrent_creates)
        self.owner: str | None = None

    @property
    def grace_seconds(self) -> int:
        """`kill_grace_period` as the whole seconds Kubernetes takes (rounded up)."""
        return max(0, math.ceil(self.kill_grace_period))

    # ------------------------------------------------------------------ protocol

    @property
    def events(self) -> asyncio.Queue[LauncherEvent]:
        return self._events

    def set_owner(self, owner: str) -> None:
        """Own (label, select, follow) only the pods of scheduler `owner`; before `start`."""
        if self._client is not None:
            raise RuntimeError("KubernetesLauncher.set_owner() must be called before start()")
        self.owner = owner
        self._tracker.owner = pods.label_value(owner)

    async def start(self) -> None:
        """Connect, start the default namespace's watch and the sweep, wait for the first
        list, then check the default namespace (`kube_checks`)."""
        agent = f"miniflow/{miniflow.__version__}"
        self._client = await KubeClient.connect(
            kubeconfig=self._kubeconfig,
            context=self._context,
            max_connections=self._max_concurrent + 16,
            user_agent=agent if self.owner is None else f"{agent} (scheduler {self.owner})",
        )
        watching = self._ensure_watch(self.defaults.namespace)
        self._sweeper = self._supervised("miniflow-kube-sweeper", self._tracker.sweep)
        try:
            await self._wait_synced(watching)
            try:
                await self._checked(self.defaults.namespace)
            except RetryableError as exc:
                # The API server answered the list: a passing failure of the check is no
                # reason not to start. The first launch there checks again.
                log.warning(
                    "could not check namespace %s now (%s): checking at the first launch",
                    self.defaults.namespace,
                    exc,
                )
        except MiniflowError:
            await self.close()
            raise

    async def close(self) -> None:
        tasks = [w.task for w in self._watches.values()]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
            self._sweeper = None
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
        for check in self._checks.values():
            check.cancel()
        self._checks.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def launch(self, specs: Sequence[TaskSpec]) -> list[LaunchResult]:
        return list(await asyncio.gather(*(self._launch_one(spec) for spec in specs)))

    async def kill(
        self, key: AttemptKey, handle: str | None, *, reason: str, force: bool = False
    ) -> None:
        """Delete the attempt's pod: SIGTERM, SIGKILL after `kill_grace_period`
        (at once with `force`). The exit event carries `reason`."""
        namespace, name = self._locate(key, handle)
        self._ensure_watch(namespace)  # the exit arrives through the watch
        tracked = self._tracked.get((namespace, name)) or self._tracker.track(key, namespace, name)
        if tracked.exited:
            return
        tracked.kill_reason = reason
        grace = 0 if force else self.grace_seconds
        try:
            await self._tracker.delete(namespace, name, grace=grace)
        except PodNotFound:
            self._tracker.forget(namespace, name)
            self._tracker.exit_without_pod(tracked, reason, "pod not found when killing it")
        except MiniflowError as exc:
            log.warning("kill of %s/%s (%s) failed: %s", namespace, name, key, exc)
            raise

    async def adopt(self, attempts: Sequence[tuple[AttemptKey, str | None]]) -> None:
        """Follow each attempt's pod; with an owner, first re-label to it a pod that
        carries another owner's label (or none): one PATCH per such pod."""
        located = [(key, *self._locate(key, handle)) for key, handle in attempts]
        for namespace in dict.fromkeys(ns for _, ns, _ in located):
            await self._wait_synced(self._ensure_watch(namespace))
        await asyncio.gather(*(self._adopt_one(*one) for one in located))

    async def _adopt_one(self, key: AttemptKey, namespace: str, name: str) -> None:
        if (namespace, name) in self._tracked:
            return  # ours already: the watch follows it
        try:
            if await self._claimed(key, namespace, name):
                return
        except MiniflowError as exc:
            # Not re-labelled, so not followed: the sanity loop, missing it, asks again.
            log.warning("could not adopt the pod of %s now: %s", key, exc)
            return
        lost = Tracked(key, name, namespace, self._handle(namespace, name), seq=0)
        self._tracker.exit_without_pod(lost, "Lost", "no pod found for this attempt")

    async def _claimed(self, key: AttemptKey, namespace: str, name: str) -> bool:
        """Whether the pod of `key`, which the watch does not show, exists and is now
        followed: re-labelled to this launcher's owner (one PATCH). Without an owner the
        watch shows every miniflow pod, so a pod it does not show does not exist."""
        if self.owner is None:
            return False
        try:
            return await self._claim(namespace, name, what=f"adopt {key}")
        except PodNotFound:
            return False

    async def take_over(self, owners: Sequence[str]) -> int:
        """Re-label to this launcher's owner every pod of `owners` (schedulers that are
        gone) in the namespaces it watches, one conditional PATCH per pod; returns how
        many. They are then followed like its own: an exit is reported (and the pod
        cleaned up once acknowledged), a pod no try owns is the sanity loop's orphan.
        An empty string in `owners` stands for no owner: pods launched before pods had
        owners (by an older miniflow). Without an owner of its own this launcher already
        follows every pod: nothing to do."""
        if self.owner is None:
            return 0
        dead = {o for o in owners if o and pods.label_value(o) != pods.label_value(self.owner)}
        selectors = [pods.owners_selector(dead)] if dead else []
        if "" in owners:
            selectors.append(pods.unowned_selector())
        client = self._client_or_fail()
        found: list[tuple[str, _Leftover]] = []
        for namespace in list(self._watches):
            for selector in selectors:
                items = await with_retries(
                    functools.partial(self._leftovers, client, namespace, selector),
                    what=f"list pods of gone schedulers in {namespace}",
                    policy=self.retry,
                )
                found.extend((namespace, pod) for pod in items)
        taken = await asyncio.gather(*(self._take(namespace, pod) for namespace, pod in found))
        if found:
            log.info("took over %d of %d pods of gone schedulers", sum(taken), len(found))
        return sum(taken)

    @staticmethod
    async def _leftovers(client: KubeClient, namespace: str, selector: str) -> list[_Leftover]:
        items, _ = await client.list_pods(namespace, selector, keep=_Leftover.of)
        return items

    async def _take(self, namespace: str, pod: _Leftover) -> bool:
        name = pod.name
        try:
            return await self._claim(
                namespace, name, uid=pod.uid, previous=pod.owner, what="take over"
            )
        except KubeApiError as exc:
            # 404: gone meanwhile; 422: re-labelled meanwhile (adopted): not ours to take.
            if exc.status not in (404, 409, 422):
                log.warning("could not take over pod %s/%s: %s", namespace, name, exc)
            return False
        except MiniflowError as exc:
            log.warning("could not take over pod %s/%s: %s", namespace, name, exc)
            return False

    async def _claim(
        self,
        namespace: str,
        name: str,
        *,
        what: str,
        uid: str | None = None,
        previous: str | None = None,
    ) -> bool:
        """Re-label the pod to this launcher's owner and follow it at once (the watch
        then sees it ADDED, which changes nothing). False if it is no pod to follow."""
        assert self.owner is not None
        client = self._client_or_fail()
        ops = pods.owner_patch(self.owner, uid=uid, previous=previous)
        async with self._create_slots:
            patched = await with_retries(
                lambda: client.patch_pod(name, namespace, ops),
                what=f"{what}: re-label pod {namespace}/{name}",
                policy=self.retry,
            )
        self._tracker.apply(patched)
        return (namespace, name) in self._tracked

    async def acknowledge(self, keys: Sequence[AttemptKey]) -> None:
        """These exits are committed: their pods may go, per the cleanup policy."""
        self._tracker.acknowledge(keys)

    async def disown(self, keys: Sequence[AttemptKey]) -> None:
        """Stop following these pods (a peer re-labelled them); never deletes one."""
        self._tracker.disown(keys)

    async def alive(self, *, fresh: bool = True) -> list[AliveAttempt]:
        """Tracked attempts not yet exited; with `fresh`, after one new list per watched
        namespace (reconciled like a relist: a pod that vanished is reported Lost first)."""
        if fresh:
            await asyncio.gather(*(w.watch.refresh() for w in list(self._watches.values())))
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
            manifest = pods.build_manifest(
                spec, self.defaults, grace_period=self.grace_seconds, owner=self.owner
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return LaunchResult(key, None, error=f"invalid pod settings: {exc}")
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        handle = self._handle(namespace, name)
        client = self._client_or_fail()
        self._ensure_watch(namespace)
        try:
            await self._checked(namespace)
            async with self._create_slots:
                created = await with_retries(
                    lambda: client.create_pod(namespace, manifest),
                    what=f"create pod {namespace}/{name} ({key})",
                    policy=self.retry,
                )
        except AlreadyExists:
            log.info("pod %s/%s already exists: adopting %s", namespace, name, key)
            await self._follow_existing(key, namespace, name)
            return LaunchResult(key, handle)
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

    async def _follow_existing(self, key: AttemptKey, namespace: str, name: str) -> None:
        """Follow the pod a create found already there (this try launched before). One
        the watch does not show is re-labelled to this launcher's owner first: the try
        is this scheduler's now, whoever created its pod."""
        if (namespace, name) in self._tracked:
            return
        try:
            if await self._claimed(key, namespace, name):
                return
        except MiniflowError as exc:
            log.warning("could not re-label the existing pod of %s: %s", key, exc)
        # Followed by name: the next list reports it Lost if the watch never shows it.
        self._tracker.track(key, namespace, name)

    async def _checked(self, namespace: str) -> None:
        """Return once `namespace` passed its check; raise what the check raised."""
        check = self._checks.get(namespace)
        if check is None:
            check = self._checks[namespace] = asyncio.create_task(
                kube_checks.check_namespace(
                    self._client_or_fail(),
                    namespace,
                    self.defaults,
                    retry=self.retry,
                    grace_period=self.grace_seconds,
                ),
                name=f"miniflow-kube-check-{namespace}",
            )
        try:
            await asyncio.shield(check)
        except BaseException:
            if check.done() and self._checks.get(namespace) is check:
                del self._checks[namespace]
            raise

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
                selector=pods.selector(self.owner),
            )
            task = self._supervised(f"miniflow-kube-watch-{namespace}", watch.run)
            watching = self._watches[namespace] = _Watching(watch, task)
        return watching

    def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        return asyncio.create_task(supervise(name, loop, backoff=self.restart_backoff), name=name)

    async def _wait_synced(self, watching: _Watching) -> None:
        """Wait for the first list; an API server that never answers is a clear error."""
        try:
            await asyncio.wait_for(watching.watch.synced.wait(), self.start_timeout)
        except TimeoutError:
            host = self._client.host if self._client else "?"
            raise KubeConnectionError(
                f"the Kubernetes API server at {host} did not answer a pod list in namespace "
                f"{watching.watch.namespace!r} within {self.start_timeout:g}s"
            ) from None

    def synced(self) -> bool:
        """Every namespace watch has listed its pods once: the launcher's view is whole."""
        return bool(self._watches) and all(w.watch.synced.is_set() for w in self._watches.values())

    def loop_progress(self) -> dict[str, tuple[float, float]]:
        """Each watch's last progress (monotonic) and how often it is due: the server ends
        a quiet stream after `watch_timeout`, and a failing one is retried within a minute."""
        period = self.watch_timeout + 60.0
        return {
            f"kube watch {namespace}": (w.watch.progress_at, period)
            for namespace, w in self._watches.items()
        }

    def _watch_is_live(self, namespace: str) -> bool:
        watching = self._watches.get(namespace)
        return watching is not None and watching.watch.live

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
