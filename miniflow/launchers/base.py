"""The `Launcher` protocol: how the scheduler starts, watches and stops attempts.

A launcher turns a prepared `TaskSpec` into something running (a subprocess, a
pod) and reports what happens to it as `LauncherEvent`s on its queue. It never
touches the database: the scheduler records the events. Launching is
idempotent per `AttemptKey`: asking twice for the same (task instance, try)
must adopt the first launch, never start a second process or pod.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from miniflow.authoring.serialized import PodSettings, TaskKind

RESULT_FILE = "/dev/termination-log"
"""Where a `Pod(..., push_result=True)` container writes its JSON result: its
termination message file (the pod's `terminationMessagePath`)."""
MAX_TERMINATION_MESSAGE = 4096
"""Bytes of a termination message Kubernetes keeps (the kubelet truncates the rest)."""


@dataclass(frozen=True, slots=True)
class AttemptKey:
    """Identifies one try of one task instance everywhere (pod names, log files)."""

    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    map_index: int = -1  # >= 0: a mapped instance of the task

    def __str__(self) -> str:
        return f"{self.dag_id}/{self.run_id}/{self.task_ref}#{self.try_number}"

    @property
    def task_ref(self) -> str:
        """The task id, with `[map_index]` for a mapped instance."""
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"

    @property
    def ti_key(self) -> tuple[str, str, str, int]:
        """The task instance's key in the store: (dag_id, run_id, task_id, map_index)."""
        return (self.dag_id, self.run_id, self.task_id, self.map_index)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything a launcher needs to start one attempt; templates already rendered."""

    key: AttemptKey
    kind: TaskKind
    fileloc: str  # DAG file, relative to the DAGs folder (the worker loads it)
    bash_command: str | None = None  # kind == "bash"
    image: str | None = None  # kind == "pod": the user's image
    cmds: list[str] | None = None  # kind == "pod": container command, None = entrypoint
    args: list[str] | None = None  # kind == "pod": container args
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # seconds; the launcher kills the attempt after it
    pod: PodSettings = field(default_factory=lambda: PodSettings())
    annotations: dict[str, str] = field(default_factory=dict)  # extra, e.g. run ids
    push_result: bool = False  # kind == "pod": its result is its termination message
    result_file: str = RESULT_FILE  # push_result: the termination message file
    # When the scheduler decided on this launch (time.time()). A launcher sharing its
    # records with peers (local, one host) refuses a launch it would record long after
    # this (`LaunchResult.paused`), and takes a launch of the same try recorded after
    # this moment for a peer's, made while this scheduler was paused: never its own.
    decided_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class LaunchResult:
    """What `launch` did for one spec: a handle, or an error (never raised for one spec)."""

    key: AttemptKey
    handle: str | None  # pid, pod name...; None when the launch failed
    error: str | None = None
    retryable: bool = False  # with error: True if the scheduler may try launching again
    # Not started because the launch came long after it was decided: the scheduler was
    # paused in between (SIGSTOP, a starved CPU), and a peer may have taken the try over
    # and launched it meanwhile. The scheduler checks it still owns the try first.
    paused: bool = False


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    """The attempt's process/container is running."""

    key: AttemptKey
    handle: str
    at: datetime
    kind: Literal["started"] = "started"


@dataclass(frozen=True, slots=True)
class AttemptExited:
    """The attempt ended: exit code (128+N for signal N) or None when unknown."""

    key: AttemptKey
    handle: str | None
    exit_code: int | None
    reason: str | None  # "Error", "OOMKilled", "Timeout", "Killed", "ImagePullBackOff", ...
    at: datetime
    log_tail: str | None = None
    message: str | None = None  # human detail (e.g. the API's message)
    # What the container wrote to its termination message file (`RESULT_FILE`), as the
    # pod status says; a `push_result` Pod task's result. None: nothing known.
    termination_message: str | None = None
    kind: Literal["exited"] = "exited"


LauncherEvent = AttemptStarted | AttemptExited


@dataclass(frozen=True, slots=True)
class AliveAttempt:
    """An attempt the launcher sees running (for reconciliation and adoption)."""

    key: AttemptKey
    handle: str
    info: dict[str, Any] = field(default_factory=dict)


class Launcher(Protocol):
    """Starts attempts and reports on them; see the module docstring."""

    name: str
    worker_kinds: frozenset[str]
    """Task kinds run by `miniflow-worker`, which records its own outcome; the
    scheduler judges the other kinds by exit code alone."""

    @property
    def events(self) -> Any:  # asyncio.Queue[LauncherEvent]
        """Queue the scheduler drains; launchers put events, never block on it."""
        ...

    def set_owner(self, owner: str) -> None:
        """The id of the scheduler this launcher works for (``host-pid-hex6``); called
        once, before `start`.

        Schedulers sharing a cluster or a host each follow only what they own:
        the Kubernetes launcher labels its pods with `owner` and watches only
        those. A launcher never told an owner follows everything it can see."""

    async def start(self) -> None:
        """Connect / start watches. Called once before any other call but `set_owner`.

        Raises a `MiniflowError` if the launcher cannot work at all (its state
        directory, its cluster), rather than failing every launch. Attempts it
        launched before a restart whose exit was never acknowledged are adopted
        or reported here."""

    async def close(self) -> None:
        """Stop watches and background tasks; leaves running attempts alone."""

    async def launch(self, specs: Sequence[TaskSpec]) -> list[LaunchResult]:
        """Start every spec (bounded concurrency); idempotent per key."""
        ...

    async def kill(
        self, key: AttemptKey, handle: str | None, *, reason: str, force: bool = False
    ) -> None:
        """Stop an attempt; an exit event follows, carrying `reason` in its message.

        Without `force`: ask it to stop (SIGTERM, a pod deletion with its grace
        period), then force it after the grace period, so an attempt that ignores
        the request (or is stopped, SIGSTOP) still ends. With `force`: at once
        (SIGKILL, a deletion with no grace period)."""

    async def adopt(self, attempts: Sequence[tuple[AttemptKey, str | None]]) -> None:
        """Re-attach to attempts launched before a restart; events follow for each
        (an `AttemptExited` with reason "Lost" if it can no longer be found)."""

    async def take_over(self, owners: Sequence[str]) -> int:
        """Become the owner of whatever the schedulers `owners` (gone for good) left
        that this launcher can hand over; returns how many (pods, processes).

        Their tries were adopted already (`adopt`); this is for the rest, such as
        kept failed pods and pods no try owns, so nothing of theirs is leaked: once
        taken over, they are followed like this launcher's own (exits reported,
        cleanup, `alive` for the orphan check). An empty string in `owners` stands for
        "no owner recorded" (launched before owners existed). A launcher whose
        attempts need no hand-over returns 0."""
        ...

    async def acknowledge(self, keys: Sequence[AttemptKey]) -> None:
        """The scheduler has committed the exits of these tries.

        Until this call a launcher keeps the evidence of every exit it reported (the
        pod, the exit file): a scheduler that dies between an `AttemptExited` event
        and its commit finds the evidence again after a restart. Keys the launcher
        does not know are ignored."""

    async def disown(self, keys: Sequence[AttemptKey]) -> None:
        """A peer adopted these tries (this scheduler was taken for dead): stop reporting
        them, and leave their evidence (pod, exit file) to the new owner.

        Nothing of theirs is deleted. If one comes back to this scheduler (it adopts the
        tries of the peer that took them, which died in turn), `adopt` follows it again
        and reports its exit once more: a launcher that still remembered reporting it
        would stay silent, and the try would never end."""

    async def alive(self, *, fresh: bool = True) -> list[AliveAttempt]:
        """Attempts currently running under this launcher; with `fresh`, after a fresh
        look (a new list from the API server), else as last seen (the watch's view).

        Each one verified (not remembered from its start event), including attempts
        the launcher finds that nobody asked it to adopt (launched by a previous
        scheduler, their exit not yet acknowledged): the sanity loop compares this
        with the database to find orphans."""
        ...

    def read_logs(
        self,
        key: AttemptKey,
        handle: str | None,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
    ) -> AsyncIterator[str]:
        """Log lines of an attempt while its process/pod exists."""
        ...
