"""Streaming endpoints of the fake API server: pod watches and pod logs.

Fakes: ``?watch=true`` (also ``True``/``1``) as newline-delimited JSON events
in resourceVersion order; ``resourceVersion=N`` replays exactly the events
after N, absent/"0" starts with synthetic ADDED events; a version older than
the retained history gets HTTP 200 with one ``ERROR`` event (Status 410
Expired); ``timeoutSeconds``; ``allowWatchBookmarks`` (periodic BOOKMARKs and
one at the end); selector move-in/move-out as ADDED (the new state) and DELETED
(the last state that matched, at the new resourceVersion); the faults that
replace an event by a corrupted line or silence a stream.  Logs: plain
text, ``container``, ``tailLines``, ``limitBytes``, ``follow`` (streams until
the container ends), 400 while the container is waiting.  Deliberately does
not fake ``sendInitialEvents``, ``sinceSeconds``/``timestamps`` or
``previous`` logs (always 400).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import errors
from .store import DROP, STALL, Event, Obj

if TYPE_CHECKING:
    from .server import ApiServer

TRUE = ("true", "True", "1")


def _translate(ev: Event, ns: str | None, match: Callable[[Obj], bool]) -> tuple[str, Obj] | None:
    """Map a store event onto what a (namespace, selector)-scoped watch sees."""
    if ns is not None and ev.obj["metadata"]["namespace"] != ns:
        return None
    now = match(ev.obj)
    if ev.type == "MODIFIED":
        before = ev.old is not None and match(ev.old)
        if now and before:
            return "MODIFIED", ev.obj
        if now:
            return "ADDED", ev.obj
        if before:
            # As the API server's watch cache does: the last state that matched, at the
            # version of the write that moved it out.
            assert ev.old is not None
            last = copy.deepcopy(ev.old)
            last["metadata"]["resourceVersion"] = str(ev.rv)
            return "DELETED", last
        return None
    return (ev.type, ev.obj) if now else None


def _line(type_: str, obj: Obj) -> bytes:
    return (json.dumps({"type": type_, "object": obj}) + "\n").encode()


def _closing(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def watch(
    api: ApiServer, request: web.Request, ns: str | None, match: Callable[[Obj], bool]
) -> web.StreamResponse:
    q = request.query
    rv_param = q.get("resourceVersion", "")
    try:
        since = None if rv_param in ("", "0") else int(rv_param)
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
    except ValueError:
        raise errors.bad_request(f"invalid resourceVersion/timeoutSeconds: {rv_param!r}") from None
    bookmarks = q.get("allowWatchBookmarks") in TRUE
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    store = api.store
    if api.faults.expire_watches > 0:
        api.faults.expire_watches -= 1
        await resp.write(
            _line(
                "ERROR",
                errors.expired(
                    f"too old resource version: {rv_param or 0} ({store.resource_version})"
                ),
            )
        )
        return resp
    replay, queue = store.subscribe(since)
    if replay is None:
        store.unsubscribe(queue)
        await resp.write(
            _line(
                "ERROR",
                errors.expired(f"too old resource version: {since} ({store.compacted_rv + 1})"),
            )
        )
        return resp
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout is not None else None
    next_bookmark = loop.time() + api.bookmark_interval

    def bookmark() -> bytes:
        return _line(
            "BOOKMARK",
            {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(store.resource_version)},
            },
        )

    stalled = False  # the stall fault: nothing more reaches the client

    async def send(out: tuple[str, Obj]) -> None:
        if stalled:
            return
        bad = api.faults.take_corrupt_line()
        await resp.write(_line(*out) if bad is None else bad.rstrip(b"\n") + b"\n")

    try:
        for ev in replay:
            if (out := _translate(ev, ns, match)) is not None:
                await send(out)
        while True:
            now = loop.time()
            if deadline is not None and now >= deadline:
                if bookmarks and not stalled:
                    await resp.write(bookmark())
                break
            if bookmarks and not stalled and now >= next_bookmark and queue.empty():
                await resp.write(bookmark())
                next_bookmark = now + api.bookmark_interval
            wait = 0.5
            if deadline is not None:
                wait = min(wait, deadline - now)
            if bookmarks:
                wait = min(wait, max(0.01, next_bookmark - now))
            try:
                item: Any = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                if _closing(request):
                    break
                continue
            if item is DROP:
                break
            if item is STALL:
                stalled = True
                continue
            if (out := _translate(item, ns, match)) is not None:
                await send(out)
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        store.unsubscribe(queue)
    return resp


def _tail(data: bytes, n: int) -> bytes:
    return b"".join(data.splitlines(keepends=True)[-n:]) if n > 0 else b""


async def pod_log(api: ApiServer, request: web.Request, ns: str, name: str) -> web.StreamResponse:
    pod = api.store.get(name, ns)
    if pod is None:
        raise errors.not_found(name)
    q = request.query
    names = [c.get("name") for c in pod["spec"].get("containers", [])]
    cname = q.get("container")
    if not cname:
        if len(names) != 1:
            raise errors.bad_request(
                f"a container name must be specified for pod {name}, choose one of: "
                f"[{' '.join(str(n) for n in names)}]"
            )
        cname = names[0]
    if cname not in names:
        raise errors.bad_request(f"container {cname} is not valid for pod {name}")
    if q.get("previous") in TRUE:
        raise errors.bad_request(
            f'previous terminated container "{cname}" in pod "{name}" not found'
        )
    buf = api.kubelet.log(name, ns) if api.kubelet is not None and cname == names[0] else None
    if buf is None:
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        reason = (statuses[0].get("state", {}).get("waiting") or {}).get(
            "reason", "ContainerCreating"
        )
        raise errors.bad_request(
            f'container "{cname}" in pod "{name}" is waiting to start: {reason}'
        )
    try:
        tail = int(q["tailLines"]) if "tailLines" in q else None
        limit = int(q["limitBytes"]) if "limitBytes" in q else None
    except ValueError:
        raise errors.bad_request("tailLines and limitBytes must be integers") from None
    offset = len(buf.data)
    data = bytes(buf.data)
    if tail is not None:
        data = _tail(data, tail)
    if limit is not None:
        data = data[:limit]
    if q.get("follow") not in TRUE:
        return web.Response(body=data, content_type="text/plain")
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    sent = len(data)
    try:
        if data:
            await resp.write(data)
        while not (buf.done and offset >= len(buf.data)):
            if limit is not None and sent >= limit:
                break
            try:
                await asyncio.wait_for(buf.wait_beyond(offset), 0.5)
            except TimeoutError:
                if _closing(request):
                    break
                continue
            chunk = bytes(buf.data[offset:])
            offset += len(chunk)
            if limit is not None:
                chunk = chunk[: limit - sent]
            sent += len(chunk)
            if chunk:
                await resp.write(chunk)
    except (ConnectionResetError, ConnectionError):
        pass
    return resp
