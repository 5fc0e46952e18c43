"""Contract: the fault switches the Kubernetes fault tests rely on, through kubernetes_asyncio.

Each fault must look to a client exactly like the real failure it stands for: a
container held waiting, a mangled or silent watch stream, a write answered 500
after it was carried out, an API server that is gone and comes back.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fakekube import FakeKube

from .helpers import NS, pod, wait_pod


@pytest.fixture
async def v1(fake_kube: FakeKube) -> client.CoreV1Api:
    return client.CoreV1Api(fake_kube.api_client())


def waiting(o: dict[str, Any]) -> dict[str, Any]:
    statuses = o.get("status", {}).get("containerStatuses") or [{}]
    return dict(statuses[0].get("state", {}).get("waiting") or {})


async def raw_watch(fake: FakeKube, resource_version: str, lines: int) -> list[bytes]:
    """The first `lines` raw lines of a watch from `resource_version` (no client parsing)."""
    url = f"{fake.url}/api/v1/namespaces/{NS}/pods"
    params = {"watch": "true", "resourceVersion": resource_version, "timeoutSeconds": "5"}
    out: list[bytes] = []
    async with aiohttp.ClientSession() as http, http.get(url, params=params) as response:
        async for line in response.content:
            out.append(line.rstrip(b"\n"))
            if len(out) == lines:
                break
    return out


async def test_hold_waiting_keeps_the_container_waiting_with_the_reason(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    fake_kube.faults.hold_waiting({"app": "stuck"}, "InvalidImageName", "bad reference")
    await v1.create_namespaced_pod(NS, pod("held", ["true"], labels={"app": "stuck"}))
    await v1.create_namespaced_pod(NS, pod("free", ["true"]))
    held = await wait_pod(v1, "held", lambda o: waiting(o).get("reason") == "InvalidImageName")
    assert held["status"]["phase"] == "Pending" and held["spec"]["nodeName"]
    assert waiting(held)["message"] == "bad reference"
    await wait_pod(v1, "free", lambda o: o["status"].get("phase") == "Succeeded")
    fake_kube.faults.clear_pod_faults()
    await wait_pod(v1, "held", lambda o: o["status"].get("phase") == "Succeeded")


async def test_a_corrupted_event_replaces_the_real_one(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    fake_kube.faults.corrupt_watch_events(1)
    for name in ("a", "b"):
        await v1.create_namespaced_pod(NS, pod(name, ["sleep", "30"]))
    first, second = await raw_watch(fake_kube, "0", 2)
    with pytest.raises(ValueError):
        json.loads(first)  # the event of "a" is lost in the stream
    assert json.loads(second)["object"]["metadata"]["name"] == "b"
    assert not fake_kube.faults.corrupt_lines


async def test_a_stalled_watch_stays_open_and_silent(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    created = await v1.create_namespaced_pod(NS, pod("a", ["sleep", "30"]))
    version = created.metadata.resource_version
    url = f"{fake_kube.url}/api/v1/namespaces/{NS}/pods"
    params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "2"}
    async with aiohttp.ClientSession() as http, http.get(url, params=params) as response:
        while fake_kube.faults.stall_watches() == 0:  # noqa: ASYNC110 - until it is registered
            await asyncio.sleep(0.01)
        await v1.delete_namespaced_pod("a", NS, grace_period_seconds=0)
        body = await response.read()  # ends only at the server's timeout
    seen = [json.loads(line) for line in body.splitlines()]
    assert "DELETED" not in [e["type"] for e in seen]  # what was sent before the stall only
    fresh = await raw_watch(fake_kube, version, 1)  # a new watch is not affected
    assert json.loads(fresh[0])["type"] in ("MODIFIED", "DELETED")


async def test_after_write_fault_carries_out_the_create_then_answers_500(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    fake_kube.faults.fail_next(1, code=500, verb="create", after_write=True)
    with pytest.raises(ApiException) as lost:
        await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    assert lost.value.status == 500
    assert fake_kube.state.get("a") is not None  # it was created all the same
    with pytest.raises(ApiException) as again:
        await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    assert again.value.status == 409
    with pytest.raises(ValueError):
        fake_kube.faults.fail_next(1, verb="watch", after_write=True)


async def test_an_outage_refuses_connections_while_pods_go_on(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["sh", "-c", "sleep 0.5"]))
    await wait_pod(v1, "a", lambda o: o["status"].get("phase") == "Running")
    await fake_kube.stop_serving()
    try:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as http:
                await http.get(f"{fake_kube.url}/version")
        while (fake_kube.state.get("a") or {})["status"]["phase"] != "Succeeded":  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the kubelet goes on without the API server
    finally:
        await fake_kube.resume_serving()
    listed = await v1.list_namespaced_pod(NS)
    assert [p.status.phase for p in listed.items] == ["Succeeded"]
