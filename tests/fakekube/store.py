"""In-memory object store of the fake API server: pods, resourceVersion, history.

Fakes: etcd + the watch cache as the API server exposes them.  One global
integer ``resourceVersion`` (served as a string) is bumped by every real
write; a write that changes nothing is a no-op (no bump, no event).  Every
write is recorded in a bounded history (``history_size`` events) so watches
can resume from a version; older versions are "too old" (410 Expired).
Snapshot + subscription are taken atomically (all in one synchronous call on
the event loop), so a watch sees no gaps and no duplicates.

Deliberately does not fake: other kinds than pods, namespaces as objects
(which namespaces exist is a switch in ``faults``; Secrets are a plain dict
the harness shares between the API server and the kubelet), finalizers
blocking removal, per-object generation, or managedFields.  This is also the
``.state`` handle tests use to inspect and mutate pods directly (``get``,
``pods``, ``mutate``, ``remove``).
"""

from __future__ import annotations

import asyncio
import copy
import random
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import errors

Obj = dict[str, Any]
Key = tuple[str, str]
DROP = object()  # sentinel pushed to watcher queues to end their streams
STALL = object()  # sentinel pushed to watcher queues to silence their streams


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    """One write: ``obj`` is the new state (last state for DELETED), ``old`` the previous."""

    rv: int
    type: str
    obj: Obj
    old: Obj | None


def _key(obj: Obj) -> Key:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def _strip_rv(obj: Obj | None) -> Obj | None:
    if obj is None:
        return None
    out = dict(obj)
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return out


def apply_defaults(pod: Obj) -> Obj:
    """The few defaults the real API server fills in and clients may rely on."""
    spec = pod.setdefault("spec", {})
    if not isinstance(spec, dict):
        return pod
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("securityContext", {})
    for c in spec.get("containers") or []:
        if not isinstance(c, dict):
            continue
        image = str(c.get("image") or "")
        tagged = ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
        c.setdefault("imagePullPolicy", "IfNotPresent" if tagged else "Always")
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})
    return pod


class Store:
    """Pods keyed by (namespace, name) plus the write history."""

    def __init__(self, history_size: int = 1000) -> None:
        self.history_size = max(1, history_size)
        self.resource_version = 0
        self._objects: dict[Key, Obj] = {}
        self._history: deque[Event] = deque(maxlen=self.history_size)
        self._compacted_rv = 0  # events with rv <= this may be gone from history
        self._watchers: set[asyncio.Queue[Any]] = set()
        self._listeners: list[Callable[[Event], None]] = []

    # ----------------------------------------------------------------- reads
    def get(self, name: str, namespace: str = "default") -> Obj | None:
        obj = self._objects.get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def pods(self, namespace: str | None = None) -> list[Obj]:
        return [copy.deepcopy(o) for _, o in self._sorted(namespace)]

    def list(
        self,
        namespace: str | None,
        match: Callable[[Obj], bool],
        *,
        after: Key | None = None,
        limit: int = 0,
    ) -> tuple[int, list[Obj], int]:
        """(resourceVersion, copies of the matching objects in key order after `after`,
        at most `limit` of them if given, how many more match). Only the page returned is
        copied: a paged list of 10,000 pods would copy all of them for every page."""
        found = [o for k, o in self._sorted(namespace) if (after is None or k > after) and match(o)]
        rest = len(found) - limit if limit and len(found) > limit else 0
        page = found[:limit] if rest else found
        return self.resource_version, [copy.deepcopy(o) for o in page], rest

    def _sorted(self, namespace: str | None) -> list[tuple[Key, Obj]]:
        return sorted(
            (k, o) for k, o in self._objects.items() if namespace is None or k[0] == namespace
        )

    # ---------------------------------------------------------------- writes
    def _commit(self, type_: str, new: Obj, old: Obj | None) -> Obj:
        self.resource_version += 1
        new = copy.deepcopy(new)
        new["metadata"]["resourceVersion"] = str(self.resource_version)
        if type_ == "DELETED":
            del self._objects[_key(new)]
        else:
            self._objects[_key(new)] = new
        ev = Event(self.resource_version, type_, new, old)
        if len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0].rv
        self._history.append(ev)
        for q in list(self._watchers):
            q.put_nowait(ev)
        for listener in list(self._listeners):
            listener(ev)
        return copy.deepcopy(new)

    def create(self, obj: Obj, namespace: str = "default") -> Obj:
        """Create like the API server: assign uid/timestamps/rv, reset status."""
        return self._commit("ADDED", self.prepare_create(obj, namespace), None)

    def prepare_create(self, obj: Obj, namespace: str = "default") -> Obj:
        """The object `create` would store (409 if the name is taken), storing nothing:
        what a ``dryRun=All`` create answers.  No resourceVersion, no event."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            alphabet = "bcdfghjklmnpqrstvwxz2456789"
            for _ in range(100):
                name = meta["generateName"] + "".join(random.choices(alphabet, k=5))
                if (namespace, name) not in self._objects:
                    break
            meta["name"] = name
        if (namespace, meta["name"]) in self._objects:
            raise errors.already_exists(meta["name"])
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(k, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        obj["kind"], obj["apiVersion"] = "Pod", "v1"
        obj["status"] = {"phase": "Pending"}
        return apply_defaults(obj)

    def write(self, new: Obj) -> Obj:
        """Replace the stored object; a write that changes nothing is a no-op."""
        key = _key(new)
        old = self._objects.get(key)
        if old is None:
            raise errors.not_found(key[1])
        if _strip_rv(old) == _strip_rv(new):
            return copy.deepcopy(old)
        return self._commit("MODIFIED", new, old)

    def mutate(
        self, name: str, namespace: str = "default", fn: Callable[[Obj], Any] | None = None
    ) -> Obj | None:
        """Apply *fn* to a copy of the pod and write it back (None if the pod is gone)."""
        cur = self.get(name, namespace)
        if cur is None:
            return None
        if fn is not None:
            fn(cur)
        return self.write(cur)

    def remove(self, name: str, namespace: str = "default") -> Obj:
        old = self._objects.get((namespace, name))
        if old is None:
            raise errors.not_found(name)
        return self._commit("DELETED", old, old)

    # --------------------------------------------------------------- watches
    def subscribe(self, since: int | None) -> tuple[list[Event] | None, asyncio.Queue[Any]]:
        """Atomically take the replay for a watch starting after *since* and a live queue.

        ``since`` None means "from now": synthetic ADDED events for every object.
        The replay is None when *since* is older than the retained history.
        """
        queue: asyncio.Queue[Any] = asyncio.Queue()
        if since is None:
            replay = [
                Event(int(o["metadata"]["resourceVersion"]), "ADDED", o, None)
                for _, o in self._sorted(None)
            ]
        elif since < self._compacted_rv:
            return None, queue
        else:
            replay = [ev for ev in self._history if ev.rv > since]
        self._watchers.add(queue)
        return replay, queue

    def unsubscribe(self, queue: asyncio.Queue[Any]) -> None:
        self._watchers.discard(queue)

    def drop_watchers(self) -> int:
        n = len(self._watchers)
        for q in list(self._watchers):
            q.put_nowait(DROP)
        self._watchers.clear()
        return n

    def stall_watchers(self) -> int:
        n = len(self._watchers)
        for q in list(self._watchers):
            q.put_nowait(STALL)
        return n

    @property
    def compacted_rv(self) -> int:
        return self._compacted_rv

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)
