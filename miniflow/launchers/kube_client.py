"""The one thin module that talks to the Kubernetes API (via kubernetes_asyncio).

Everything else in miniflow sees plain dicts (pods exactly as the API serves
them in JSON) and miniflow errors. Every call is made with
``_preload_content=False`` and the body decoded here: no model objects are
built (watch streams of thousands of pods stay cheap), and the status code is
checked in one place, `_check`, which turns failures into this hierarchy:

- `KubeApiError` -- any error answer; carries ``status``, ``reason`` and the
  API's ``message`` (what users must see: "exceeded quota: ...").
- `KubeRetryableError` (429, 5xx) and `KubeConnectionError` (no answer at all)
  are `RetryableError`s; 429 carries the server's ``Retry-After``.
- `KubePermanentError` (400, 403, 404, 422, ...) is a `PermanentError`;
  callers branch on `AlreadyExists` (409), `KubeNotFound` (404; `PodNotFound`
  when the missing object is a pod, not its namespace or a secret) and
  `Forbidden` (403; `denied_by_rbac` tells the authorizer's refusal from an
  admission's, such as an exceeded quota).
- `WatchExpired` (410 Gone, as an answer or as a watch ERROR event): the
  resourceVersion is too old; the caller must relist.
- `KubeProtocolError`: an answer that is not what the API serves (a watch
  line that is not a JSON event object, a body that is not JSON). Retryable:
  for a watch it means an event was lost, so the caller relists.

`with_retries` is the single retry loop (exponential back-off, full jitter,
bounded attempts, honours Retry-After) used by every caller; nothing else
in miniflow loops on Kubernetes errors.

This module never decides anything about tasks: no event translation, no
cleanup policy. It must stay importable without a cluster.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from miniflow.errors import MiniflowError, PermanentError, RetryableError, ServiceUnavailable
from miniflow.launchers import stats

log = logging.getLogger(__name__)

T = TypeVar("T")
Pod = dict[str, Any]

# Pods per list request (`limit`), as client-go's pager asks: a big list comes in pages.
LIST_PAGE_SIZE = 500


class KubeApiError(MiniflowError):
    """The API server answered with an error ``Status``; the message is the API's."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{message} ({status} {reason})" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class KubeRetryableError(KubeApiError, RetryableError):
    """429 Too Many Requests or 5xx: the same call may succeed later."""

    def __init__(
        self, status: int, reason: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(status, reason, message)
        self.retry_after = retry_after


class KubeConnectionError(ServiceUnavailable):
    """No answer: connection refused/reset, timeout, DNS failure."""


class KubePermanentError(KubeApiError, PermanentError):
    """400/403/422 and other answers that retrying the same call cannot fix."""


class AlreadyExists(KubePermanentError):
    """409: an object with this name exists (for a pod: this attempt was launched)."""


class KubeNotFound(KubePermanentError):
    """404: no such object (a namespace, a secret, a pod)."""


class PodNotFound(KubeNotFound):
    """404: no such pod (already deleted, or never created)."""


class Forbidden(KubePermanentError):
    """403: RBAC refused the request, or an admission plugin (quota, Pod Security) did."""

    @property
    def denied_by_rbac(self) -> bool:
        # The authorizer's wording ("User ... cannot create resource ..."); admission
        # refusals read 'pods "x" is forbidden: exceeded quota ...' instead.
        return bool(_RBAC_DENIAL.search(self.message))


_RBAC_DENIAL = re.compile(r"\bcannot \S+ resource\b")


class WatchExpired(KubeApiError, RetryableError):
    """410 Gone: the resourceVersion is too old; relist, then watch again."""


class KubeProtocolError(RetryableError):
    """An answer miniflow cannot decode (malformed JSON, a watch line that is no event)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How `with_retries` backs off on `RetryableError`s."""

    attempts: int = 5
    """Calls in total (1 = no retry)."""

    base_delay: float = 0.25
    """Upper bound of the first delay; doubled per attempt (full jitter)."""

    max_delay: float = 10.0
    """Cap on any one delay, including a server's Retry-After."""

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed call number `attempt` (1-based)."""
        jittered = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
        if retry_after is not None:
            jittered = max(jittered, retry_after)
        return min(jittered, self.max_delay)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await ``call()``, retrying `RetryableError`s per `policy`; re-raises the last one.

    `WatchExpired` is never retried here: the caller must relist instead.
    """
    attempt = 1
    while True:
        try:
            return await call()
        except WatchExpired:
            raise
        except RetryableError as exc:
            if attempt >= policy.attempts:
                raise
            retry_after = getattr(exc, "retry_after", None)
            delay = policy.delay(attempt, retry_after)
            log.warning(
                "%s failed (%s); retry %d/%d in %.2fs",
                what,
                exc,
                attempt,
                policy.attempts - 1,
                delay,
            )
            await sleep(delay)
            attempt += 1


def _connection_error(message: str) -> KubeConnectionError:
    """No answer from the API server (counted as the status code "connection")."""
    stats.KUBE.api_errors["connection"] += 1
    return KubeConnectionError(message)


def _error_from(status: int, reason: str, body: bytes, headers: Any) -> KubeApiError:
    stats.KUBE.api_errors[str(status)] += 1
    message, kind = "", ""
    try:
        decoded = json.loads(body)
        if isinstance(decoded, dict):
            message = str(decoded.get("message") or "")
            reason = str(decoded.get("reason") or reason)
            details = decoded.get("details")
            kind = str(details.get("kind") or "") if isinstance(details, dict) else ""
    except ValueError:
        message = body.decode("utf-8", "replace").strip()[:2000]
    if status == 409:
        return AlreadyExists(status, reason, message)
    if status == 404:
        # A 404 without details is about the object asked for: on the pod paths, a pod.
        if kind in ("", "pods"):
            return PodNotFound(status, reason, message)
        return KubeNotFound(status, reason, message)
    if status == 403:
        return Forbidden(status, reason, message)
    if status == 410:
        return WatchExpired(status, reason, message)
    if status == 429 or status >= 500:
        retry_after: float | None = None
        raw = headers.get("Retry-After") if headers is not None else None
        if raw is not None:
            try:
                retry_after = float(raw)
            except ValueError:
                retry_after = None
        return KubeRetryableError(status, reason, message, retry_after=retry_after)
    return KubePermanentError(status, reason, message)


async def _check(response: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    """Raise the miniflow error for a non-2xx answer (releasing it); else return it."""
    if 200 <= response.status <= 299:
        return response
    try:
        body = await response.read()
    finally:
        response.release()
    raise _error_from(response.status, response.reason or "", body, response.headers)


class KubeClient:
    """Pods API of one cluster; every method returns plain dicts or raises miniflow errors."""

    def __init__(self, api_client: Any) -> None:
        self._api_client = api_client
        self._core = k8s.CoreV1Api(api_client)

    @classmethod
    async def connect(
        cls,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        max_connections: int = 64,
        user_agent: str | None = None,
    ) -> KubeClient:
        """A client from `kubeconfig` (a path), else in-cluster config, else the
        default kubeconfig (`KUBECONFIG` / ~/.kube/config, read by kubernetes_asyncio).

        `user_agent` is sent with every request: the API server's audit log then
        tells which scheduler made each one."""
        configuration = k8s.Configuration()
        # one stat at start-up: not worth a thread
        if kubeconfig is not None and not os.path.isfile(kubeconfig):  # noqa: ASYNC240
            raise KubeConnectionError(f"the kubeconfig {kubeconfig} does not exist")
        try:
            if kubeconfig is None and context is None:
                try:
                    k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                        client_configuration=configuration
                    )
                except k8s_config.ConfigException:
                    await k8s_config.load_kube_config(
                        client_configuration=configuration, persist_config=False
                    )
            else:
                await k8s_config.load_kube_config(
                    config_file=kubeconfig,
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
        except (
            k8s_config.ConfigException,
            OSError,
            yaml.YAMLError,
            ValueError,
            TypeError,
            KeyError,
        ) as exc:  # a file of the wrong shape surfaces as Type/Key/ValueErrors
            where = kubeconfig or "in-cluster / default kubeconfig"
            detail = " ".join(str(exc).split())
            raise KubeConnectionError(f"cannot load Kubernetes config ({where}): {detail}") from exc
        configuration.connection_pool_maxsize = max_connections
        api_client = k8s.ApiClient(configuration=configuration)
        if user_agent is not None:
            api_client.user_agent = user_agent
        return cls(api_client)

    @property
    def host(self) -> str:
        return str(self._api_client.configuration.host)

    async def close(self) -> None:
        await self._api_client.close()

    async def _request(
        self, call: Callable[[], Awaitable[Any]], what: str
    ) -> aiohttp.ClientResponse:
        try:
            response = await call()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _connection_error(f"{what}: {type(exc).__name__}: {exc}") from exc
        return await _check(response)

    async def _json(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        response = await self._request(call, what)
        try:
            return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _connection_error(f"{what}: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:
            raise KubeProtocolError(f"{what}: the answer is not JSON: {exc}") from exc
        finally:
            response.release()

    async def create_pod(self, namespace: str, manifest: Pod, *, dry_run: bool = False) -> Pod:
        """POST the pod; `AlreadyExists` if the name is taken. With `dry_run` the API
        server authorizes, validates and admits it, and stores nothing."""
        kwargs: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        what = f"create pod {namespace}/{manifest['metadata']['name']}"
        result: Pod = await self._json(
            lambda: self._core.create_namespaced_pod(
                namespace,
                manifest,  # type: ignore[arg-type]  # a plain dict is sent as-is
                _preload_content=False,
                **kwargs,
            ),
            f"dry-run {what}" if dry_run else what,
        )
        return result

    async def secret_exists(self, name: str, namespace: str) -> bool:
        """GET the Secret; False on 404. Its data is read and dropped, never returned."""
        try:
            await self._json(
                lambda: self._core.read_namespaced_secret(name, namespace, _preload_content=False),
                f"get secret {namespace}/{name}",
            )
        except KubeNotFound:
            return False
        return True

    async def delete_pod(
        self, name: str, namespace: str, *, grace_period_seconds: int | None = None
    ) -> Pod:
        """DELETE the pod; `PodNotFound` if it is already gone."""
        kwargs: dict[str, Any] = {}
        if grace_period_seconds is not None:
            kwargs["grace_period_seconds"] = grace_period_seconds
        result: Pod = await self._json(
            lambda: self._core.delete_namespaced_pod(
                name, namespace, _preload_content=False, **kwargs
            ),
            f"delete pod {namespace}/{name}",
        )
        return result

    async def get_pod(self, name: str, namespace: str) -> Pod:
        """GET the pod; `PodNotFound` if it does not exist."""
        result: Pod = await self._json(
            lambda: self._core.read_namespaced_pod(name, namespace, _preload_content=False),
            f"get pod {namespace}/{name}",
        )
        return result

    async def patch_pod(self, name: str, namespace: str, ops: list[dict[str, Any]]) -> Pod:
        """Apply a JSON patch (RFC 6902) to the pod; `PodNotFound` if it is gone, a
        `KubePermanentError` (422) if a ``test`` operation fails."""
        # The generated client's signature lacks `_content_type`, which it honours: a list
        # body would otherwise be sent as a strategic merge patch.
        kwargs: dict[str, Any] = {"_content_type": "application/json-patch+json"}
        result: Pod = await self._json(
            lambda: self._core.patch_namespaced_pod(
                name, namespace, ops, _preload_content=False, **kwargs
            ),
            f"patch pod {namespace}/{name}",
        )
        return result

    @overload
    async def list_pods(
        self, namespace: str, label_selector: str, *, page_size: int | None = ...
    ) -> tuple[list[Pod], str]: ...

    @overload
    async def list_pods(
        self,
        namespace: str,
        label_selector: str,
        *,
        page_size: int | None = ...,
        keep: Callable[[Pod], T],
    ) -> tuple[list[T], str]: ...

    async def list_pods(
        self,
        namespace: str,
        label_selector: str,
        *,
        page_size: int | None = None,
        keep: Callable[[Pod], Any] | None = None,
    ) -> tuple[list[Any], str]:
        """All matching pods and the list's resourceVersion (to watch from).

        Asked for `page_size` (default `LIST_PAGE_SIZE`) pods at a time, each pod
        mapped by `keep` as its page arrives: a namespace of 10,000 pods is never one
        answer held whole, as bytes, text and full pods at once. Every page is served
        from the first one's snapshot, whose version is the one returned (an expired
        continuation, 410, raises `WatchExpired`: the caller lists again from the start)."""
        items: list[Any] = []
        version: str | None = None
        token: str | None = None
        while True:
            paging: dict[str, Any] = {"limit": page_size or LIST_PAGE_SIZE}
            if token:
                paging["_continue"] = token
            body = await self._json(
                functools.partial(
                    self._core.list_namespaced_pod,
                    namespace,
                    label_selector=label_selector,
                    _preload_content=False,
                    **paging,
                ),
                f"list pods in {namespace}",
            )
            meta = body.get("metadata") or {}
            version = version or str(meta["resourceVersion"])
            for item in body.get("items") or []:
                item.setdefault("kind", "Pod")  # list items carry no kind/apiVersion
                item.setdefault("apiVersion", "v1")
                items.append(keep(item) if keep is not None else item)
            del body  # this page's full pods go before the next page comes
            token = meta.get("continue")
            if not token:
                return items, version

    async def watch_pods(
        self, namespace: str, label_selector: str, resource_version: str, timeout_seconds: int
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Raw watch events ``{"type", "object"}`` from `resource_version`, bookmarks on.

        Ends cleanly when the server closes the stream (its `timeout_seconds`);
        raises `WatchExpired` on 410 (answer or ERROR event),
        `KubeConnectionError` when the stream breaks or goes silent for
        `timeout_seconds` + 30 s, and `KubeProtocolError` for a line that is
        not a JSON event with an object. Other ERROR events raise `KubeApiError`s.
        """
        what = f"watch pods in {namespace}"
        response = await self._request(
            lambda: self._core.list_namespaced_pod(
                namespace,
                label_selector=label_selector,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                watch=True,
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(sock_read=timeout_seconds + 30),
            ),
            what,
        )
        try:
            async for line in _lines(response, what):
                event = _decode_event(line, what)
                if event["type"] == "ERROR":
                    status = event.get("object") or {}
                    raise _error_from(
                        int(status.get("code") or 500),
                        str(status.get("reason") or "Error"),
                        json.dumps(status).encode(),
                        None,
                    )
                yield event
        finally:
            response.release()

    async def read_log(
        self, name: str, namespace: str, *, tail_lines: int | None, container: str | None = None
    ) -> str:
        """The pod's log (its last `tail_lines` lines), decoded leniently."""
        kwargs: dict[str, Any] = {}
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        if container is not None:
            kwargs["container"] = container
        response = await self._request(
            lambda: self._core.read_namespaced_pod_log(
                name, namespace, _preload_content=False, **kwargs
            ),
            f"read log of {namespace}/{name}",
        )
        try:
            return (await response.read()).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _connection_error(f"read log of {namespace}/{name}: {exc}") from exc
        finally:
            response.release()

    async def stream_log(
        self,
        name: str,
        namespace: str,
        *,
        tail_lines: int | None = None,
        follow: bool = True,
        container: str | None = None,
    ) -> AsyncIterator[str]:
        """Log lines as the container writes them (``follow``), without newlines."""
        kwargs: dict[str, Any] = {"follow": follow}
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        if container is not None:
            kwargs["container"] = container
        what = f"stream log of {namespace}/{name}"
        response = await self._request(
            lambda: self._core.read_namespaced_pod_log(
                name,
                namespace,
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=None),
                **kwargs,
            ),
            what,
        )
        try:
            async for line in _lines(response, what):
                yield line.decode("utf-8", "replace")
        finally:
            response.release()


def _decode_event(line: bytes, what: str) -> dict[str, Any]:
    """One watch line as ``{"type": str, "object": dict}``, or `KubeProtocolError`."""
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise KubeProtocolError(f"{what}: malformed event {line[:200]!r}: {exc}") from exc
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("type"), str)
        or not isinstance(event.get("object"), dict)
    ):
        raise KubeProtocolError(f"{what}: not a watch event: {line[:200]!r}")
    return event


async def _lines(response: aiohttp.ClientResponse, what: str) -> AsyncIterator[bytes]:
    """Newline-delimited chunks of a streamed body (no line-length limit)."""
    buffer = b""
    try:
        async for chunk in response.content.iter_any():
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                if line.strip():
                    yield line
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _connection_error(f"{what}: stream broken: {type(exc).__name__}: {exc}") from exc
    if buffer.strip():
        yield buffer
