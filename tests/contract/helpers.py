"""Helpers for the fake Kubernetes contract tests: manifests and watch-based waits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

NS = "default"


def pod(
    name: str,
    command: list[str] | None = None,
    *,
    labels: dict[str, str] | None = None,
    image: str = "busybox:1.36",
    **spec: Any,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image}
    if command is not None:
        container["command"] = command
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


async def wait_pod(
    v1: client.CoreV1Api,
    name: str,
    pred: Callable[[dict[str, Any]], bool],
    *,
    namespace: str = NS,
    timeout: float = 15,
) -> dict[str, Any]:
    """Watch one pod (current state first) until *pred* holds on its raw dict."""

    async def run() -> dict[str, Any]:
        async with watch.Watch() as w:
            async for ev in w.stream(
                v1.list_namespaced_pod,
                namespace,
                field_selector=f"metadata.name={name}",
                timeout_seconds=int(timeout) + 1,
            ):
                if ev["type"] != "BOOKMARK" and pred(ev["raw_object"]):
                    return dict(ev["raw_object"])
        raise AssertionError(f"pod {name} never satisfied the condition")

    return await asyncio.wait_for(run(), timeout)


async def collect(
    v1: client.CoreV1Api,
    *,
    until: Callable[[dict[str, Any]], bool],
    namespace: str = NS,
    timeout: float = 15,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Collect watch events (type + raw object) until *until(event)* is true."""
    events: list[dict[str, Any]] = []

    async def run() -> list[dict[str, Any]]:
        async with watch.Watch() as w:
            kwargs.setdefault("timeout_seconds", int(timeout) + 1)
            async for ev in w.stream(v1.list_namespaced_pod, namespace, **kwargs):
                item = {"type": ev["type"], "object": ev["raw_object"]}
                events.append(item)
                if until(item):
                    return events
        return events

    return await asyncio.wait_for(run(), timeout)


def phase(p: str) -> Callable[[dict[str, Any]], bool]:
    return lambda o: o.get("status", {}).get("phase") == p


def terminated(o: dict[str, Any]) -> dict[str, Any] | None:
    statuses = o.get("status", {}).get("containerStatuses") or [{}]
    result: dict[str, Any] | None = statuses[0].get("state", {}).get("terminated")
    return result


def body(exc: ApiException) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(exc.body)
    return result
