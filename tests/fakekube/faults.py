"""Fault switches and the request log of the fake Kubernetes API server.

Fakes: the failures miniflow must survive -- slow pod starts, image pull
back-off, unschedulable pods, containers held waiting for any reason
(ContainerCreating, InvalidImageName, CreateContainerConfigError, ...), OOM
kills, evictions, pods deleted behind the scheduler's back, dropped, expired
or stalled watches, corrupted watch events, 500/429 answers (before the
request is carried out, or after it, as when the API server times out on a
write that reached etcd), 403 quota refusals on create, namespaces that do not
exist (every namespace exists unless removed) and RBAC refusals of one verb on
one resource in one namespace.  Switches are
plain attributes/methods tests flip; the server, kubelet and watch code
consult them.  A whole-server outage is `FakeKube.stop_serving()`.
Deliberately does not fake slow responses or TLS/auth failures.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ApiError, forbidden_by_rbac

if TYPE_CHECKING:
    from .kubelet import Kubelet
    from .store import Store

# A pod predicate: None (every pod), a pod name, a regex pattern object,
# a label dict (all must match) or a callable taking the pod dict.
PodMatch = str | re.Pattern[str] | dict[str, str] | Callable[[dict[str, Any]], bool] | None


def matches(match: PodMatch, pod: dict[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if match is None:
        return True
    if isinstance(match, str):
        return bool(meta.get("name") == match)
    if isinstance(match, re.Pattern):
        return bool(match.search(meta.get("name", "")))
    if isinstance(match, dict):
        labels = meta.get("labels") or {}
        return all(labels.get(k) == v for k, v in match.items())
    return bool(match(pod))


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    verb: str  # create/list/watch/get/update/patch/delete/deletecollection/log/other
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    status: int = 0
    resource: str = "pods"  # or "secrets"
    dry_run: bool = False  # ?dryRun=All: validated and admitted, never stored
    user_agent: str = ""  # who sent it (the User-Agent header), as an audit log records


class RequestLog(list[RequestRecord]):
    """Every request the server received, in order."""

    def counts(self, verb: str | None = None) -> Counter[str] | int:
        """Counter of verbs (``counts()["create"]``), or one verb's count."""
        c = Counter(r.verb for r in self)
        return c if verb is None else c[verb]

    def of(self, verb: str, resource: str | None = None) -> list[RequestRecord]:
        return [r for r in self if r.verb == verb and resource in (None, r.resource)]


@dataclass
class _FailRule:
    remaining: int
    code: int
    verb: str | None
    retry_after: int
    after_write: bool = False


# Verbs whose answer is one JSON document, so a fault can replace it after the fact.
_WRITES = frozenset({"create", "update", "patch", "delete"})
DEFAULT_CORRUPT_LINE = b'{"type": "MODIFIED", "object": {"metadata": {"name": '


@dataclass
class Faults:
    """Test-controlled failure switches.  Flip attributes or call methods."""

    store: Store
    kubelet: Kubelet | None = None
    start_delay: float = 0.0  # seconds the kubelet waits before starting any pod
    image_pull: list[tuple[PodMatch, str]] = field(default_factory=list)
    unschedulable_rules: list[tuple[PodMatch, str]] = field(default_factory=list)
    waiting_rules: list[tuple[PodMatch, str, str | None]] = field(default_factory=list)
    forbid_create_message: str | None = None
    expire_watches: int = 0
    corrupt_lines: list[bytes] = field(default_factory=list)
    missing_namespaces: set[str] = field(default_factory=set)
    forbidden: set[tuple[str, str, str]] = field(default_factory=set)  # verb, resource, ns
    _fail_rules: list[_FailRule] = field(default_factory=list)

    # ------------------------------------------------- namespaces and RBAC
    def remove_namespace(self, namespace: str) -> None:
        """*namespace* does not exist: creates in it answer 404 ``namespaces "x" not
        found``; lists and watches answer 200 and empty, gets 404, as on a real cluster."""
        self.missing_namespaces.add(namespace)

    def add_namespace(self, namespace: str) -> None:
        self.missing_namespaces.discard(namespace)

    def namespace_exists(self, namespace: str | None) -> bool:
        return namespace is None or namespace not in self.missing_namespaces

    def forbid(self, verb: str, namespace: str, resource: str = "pods") -> None:
        """The scheduler's Role lacks *verb* on *resource* in *namespace*: 403 Forbidden
        (checked before the namespace exists, as RBAC comes before admission)."""
        self.forbidden.add((verb, resource, namespace))

    def allow(self, verb: str, namespace: str, resource: str = "pods") -> None:
        self.forbidden.discard((verb, resource, namespace))

    def check_rbac(self, record: RequestRecord) -> None:
        """Raise the RBAC 403 for this request if ``forbid`` covers it."""
        resource = record.resource
        if record.subresource:
            resource = f"{resource}/{record.subresource}"
        verb = "get" if record.verb == "log" else record.verb  # RBAC: get on pods/log
        if (verb, resource, record.namespace or "") in self.forbidden:
            name = None if verb in ("create", "list", "watch") else record.name
            raise forbidden_by_rbac(verb, resource, record.namespace or "", name)

    # ------------------------------------------------------- pod start faults
    def delay_start(self, seconds: float) -> None:
        """Every pod the kubelet starts from now on waits *seconds* first."""
        self.start_delay = seconds

    def image_pull_backoff(self, match: PodMatch = None, message: str | None = None) -> None:
        """Keep matching pods Pending: waiting ErrImagePull, then ImagePullBackOff."""
        self.image_pull.append(
            (match, message or "Back-off pulling image: rpc error: manifest unknown")
        )

    def unschedulable(self, match: PodMatch = None, message: str | None = None) -> None:
        """Keep matching pods Pending with condition PodScheduled=False/Unschedulable."""
        self.unschedulable_rules.append(
            (
                match,
                message
                or "0/1 nodes are available: 1 Insufficient cpu. preemption: "
                "0/1 nodes are available: 1 No preemption victims found for incoming pod.",
            )
        )

    def hold_waiting(self, match: PodMatch, reason: str, message: str | None = None) -> None:
        """Keep matching pods Pending once scheduled, the container waiting with *reason*.

        As the kubelet reports a volume that never mounts or a slow runtime
        (``ContainerCreating``, no message), an unparsable image
        (``InvalidImageName``) or a security check that fails
        (``CreateContainerConfigError``: "container has runAsNonRoot and image
        will run as root ...")."""
        self.waiting_rules.append((match, reason, message))

    def waiting_state(self, pod: dict[str, Any]) -> tuple[str, str | None] | None:
        return next(((r, msg) for m, r, msg in self.waiting_rules if matches(m, pod)), None)

    def image_pull_message(self, pod: dict[str, Any]) -> str | None:
        return next((msg for m, msg in self.image_pull if matches(m, pod)), None)

    def unschedulable_message(self, pod: dict[str, Any]) -> str | None:
        return next((msg for m, msg in self.unschedulable_rules if matches(m, pod)), None)

    def clear_pod_faults(self) -> None:
        """Lift image-pull, unschedulable, waiting and start-delay faults (held pods proceed)."""
        self.image_pull.clear()
        self.unschedulable_rules.clear()
        self.waiting_rules.clear()
        self.start_delay = 0.0

    # ------------------------------------------------------ running pod faults
    def _need_kubelet(self) -> Kubelet:
        if self.kubelet is None:
            raise RuntimeError("this fault needs the fake kubelet (kubelet=True)")
        return self.kubelet

    async def oom_kill(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """SIGKILL the pod's process; it ends Failed, exitCode 137, reason OOMKilled."""
        return await self._need_kubelet().kill_with(namespace, name, "OOMKilled")

    async def evict(
        self, name: str, namespace: str = "default", message: str | None = None
    ) -> dict[str, Any]:
        """Evict the pod: process killed, phase Failed, status.reason Evicted."""
        msg = message or "The node was low on resource: memory. Threshold quantity: 100Mi."
        return await self._need_kubelet().kill_with(namespace, name, "Evicted", msg)

    async def delete_pod(self, name: str, namespace: str = "default") -> None:
        """Remove the pod at once (as if someone ran kubectl delete --force)."""
        self.store.remove(name, namespace)

    # ---------------------------------------------------------- API faults
    def drop_watches(self) -> int:
        """End every open watch stream now (clients see a clean EOF)."""
        return self.store.drop_watchers()

    def stall_watches(self) -> int:
        """Open watch streams go silent (no events, no bookmarks) but stay open, as
        over a connection that died without a reset; new watches are not affected."""
        return self.store.stall_watchers()

    def expire_next_watch(self, n: int = 1) -> None:
        """The next *n* watch requests get a single ERROR event (410 Expired)."""
        self.expire_watches += n

    def corrupt_watch_events(self, n: int = 1, line: bytes = DEFAULT_CORRUPT_LINE) -> None:
        """The next *n* events sent on any watch stream are replaced by *line* (by
        default truncated JSON): the real event is lost, as with a mangled stream."""
        self.corrupt_lines.extend([line] * n)

    def take_corrupt_line(self) -> bytes | None:
        return self.corrupt_lines.pop(0) if self.corrupt_lines else None

    def fail_next(
        self,
        n: int = 1,
        code: int = 500,
        verb: str | None = None,
        retry_after: int = 1,
        *,
        after_write: bool = False,
    ) -> None:
        """Answer the next *n* requests (of *verb*, if given) with *code* (500 or 429).

        With *after_write* the request is carried out first and only its answer is
        replaced (writes only: create, update, patch, delete)."""
        if after_write and verb is not None and verb not in _WRITES:
            raise ValueError(f"after_write faults apply to {sorted(_WRITES)}, not {verb!r}")
        self._fail_rules.append(_FailRule(n, code, verb, retry_after, after_write))

    def forbid_creates(self, message: str | None = "exceeded quota: compute-quota") -> None:
        """Refuse pod creates with 403 Forbidden and this message (None lifts it)."""
        self.forbid_create_message = message

    def check_request(self, verb: str, *, after_write: bool = False) -> None:
        """Raise the 500/429 ApiError a fault switch dictates for this request, if any
        (*after_write*: the rules that apply once the request was carried out)."""
        for rule in self._fail_rules:
            if rule.after_write != after_write or (after_write and verb not in _WRITES):
                continue
            if rule.remaining > 0 and (rule.verb is None or rule.verb == verb):
                rule.remaining -= 1
                if rule.code == 429:
                    raise ApiError(
                        429,
                        "TooManyRequests",
                        "Too many requests, please try again later.",
                        retry_after=rule.retry_after,
                    )
                raise ApiError(
                    rule.code, "InternalError", "Internal error occurred: injected fault"
                )
        self._fail_rules = [r for r in self._fail_rules if r.remaining > 0]

    def check_create(self, name: str) -> None:
        """Raise 403 Forbidden for a pod create if ``forbid_creates`` is on."""
        if self.forbid_create_message is not None:
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{name or ""}" is forbidden: {self.forbid_create_message}',
                name=name,
            )
