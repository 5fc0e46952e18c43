"""Contract: watch semantics of the fake API server through kubernetes_asyncio."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fakekube import FakeKube

from .helpers import NS, collect, pod


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"kubelet": False, "bookmark_interval": 0.2}


@pytest.fixture
async def v1(fake_kube: FakeKube) -> client.CoreV1Api:
    return client.CoreV1Api(fake_kube.api_client())


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (
            e["type"],
            e["object"]["metadata"].get("name", ""),
            e["object"]["metadata"]["resourceVersion"],
        )
        for e in events
    ]


async def test_watch_without_version_lists_then_streams(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    await v1.create_namespaced_pod(NS, pod("b", ["true"]))

    async def later() -> None:
        await asyncio.sleep(0.1)
        await v1.create_namespaced_pod(NS, pod("c", ["true"]))

    task = asyncio.create_task(later())
    events = await collect(v1, until=lambda e: e["object"]["metadata"]["name"] == "c")
    await task
    assert summary(events) == [("ADDED", "a", "1"), ("ADDED", "b", "2"), ("ADDED", "c", "3")]
    assert events[0]["object"]["kind"] == "Pod"


async def test_replay_from_version_is_exact(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))  # rv 1
    await v1.create_namespaced_pod(NS, pod("b", ["true"]))  # rv 2
    await v1.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"x": "1"}}})  # rv 3
    await v1.delete_namespaced_pod("b", NS)  # rv 4
    await v1.create_namespaced_pod(NS, pod("c", ["true"]))  # rv 5
    events = await collect(
        v1, resource_version="1", until=lambda e: e["object"]["metadata"]["name"] == "c"
    )
    assert summary(events) == [
        ("ADDED", "b", "2"),
        ("MODIFIED", "a", "3"),
        ("DELETED", "b", "4"),
        ("ADDED", "c", "5"),
    ]
    events = await collect(v1, resource_version="4", until=lambda e: True)
    assert summary(events) == [("ADDED", "c", "5")]


async def test_concurrent_writes_no_gaps_no_duplicates(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))

    async def writer() -> None:
        for i in range(30):
            await v1.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"i": str(i)}}})

    task = asyncio.create_task(writer())
    await asyncio.sleep(0.02)
    lst = await v1.list_namespaced_pod(NS)
    events = await collect(
        v1,
        resource_version=lst.metadata.resource_version,
        until=lambda e: e["object"]["metadata"]["labels"].get("i") == "29",
    )
    await task
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == list(range(int(lst.metadata.resource_version) + 1, 32))


async def test_too_old_version_gets_410_error_event(make_fake_kube: Any) -> None:
    fk: FakeKube = await make_fake_kube(kubelet=False, history_size=3)
    v1 = client.CoreV1Api(fk.api_client())
    for n in "abcdef":
        await v1.create_namespaced_pod(NS, pod(n, ["true"]))
    # rv 3 is still replayable (events 4,5,6 retained); rv 2 is not
    events = await collect(v1, resource_version="3", until=lambda e: True)
    assert summary(events)[0] == ("ADDED", "d", "4")
    with pytest.raises(ApiException) as exc:
        async with watch.Watch() as w:
            async for _ in w.stream(
                v1.list_namespaced_pod, NS, resource_version="2", timeout_seconds=5
            ):
                pytest.fail("no event may precede the error")
    assert exc.value.status == 410 and "Expired" in exc.value.reason
    # at the HTTP level: 200 with exactly one ERROR line, then EOF
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"{fk.url}/api/v1/namespaces/{NS}/pods",
            params={"watch": "1", "resourceVersion": "1"},
        ) as r,
    ):
        assert r.status == 200
        lines = (await r.text()).splitlines()
    assert len(lines) == 1
    ev = json.loads(lines[0])
    assert ev["type"] == "ERROR"
    assert ev["object"]["kind"] == "Status" and ev["object"]["code"] == 410
    assert ev["object"]["reason"] == "Expired"


async def test_timeout_seconds_ends_stream_cleanly(v1: client.CoreV1Api) -> None:
    start = time.monotonic()
    async with watch.Watch() as w:
        events = [e async for e in w.stream(v1.list_namespaced_pod, NS, timeout_seconds=1)]
    assert events == []
    assert 0.9 <= time.monotonic() - start < 3


@pytest.mark.parametrize("flag", ["true", "True", "1"])
async def test_watch_flag_spellings(fake_kube: FakeKube, v1: client.CoreV1Api, flag: str) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{fake_kube.url}/api/v1/pods", params={"watch": flag, "timeoutSeconds": "5"}) as r,
    ):
        assert r.status == 200 and r.content_type == "application/json"
        line = await asyncio.wait_for(r.content.readline(), 5)
    assert json.loads(line)["type"] == "ADDED"


async def test_bookmarks_periodic_and_at_end(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    async with watch.Watch() as w:
        events = [
            e
            async for e in w.stream(
                v1.list_namespaced_pod,
                NS,
                resource_version="1",
                allow_watch_bookmarks=True,
                timeout_seconds=1,
            )
        ]
        assert w.resource_version == "1"
    types = [e["type"] for e in events]
    assert types.count("BOOKMARK") >= 3 and types[-1] == "BOOKMARK"
    bm = events[-1]["raw_object"]
    assert bm == {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}}
    async with watch.Watch() as w:
        events = [
            e
            async for e in w.stream(
                v1.list_namespaced_pod, NS, resource_version="1", timeout_seconds=1
            )
        ]
    assert events == []  # no bookmarks unless asked for


async def test_label_selected_watch_sees_move_in_and_move_out(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"], labels={"team": "x"}))
    await v1.create_namespaced_pod(NS, pod("b", ["true"], labels={"team": "y"}))  # rv 2

    watching = asyncio.Event()

    async def writes() -> None:
        await watching.wait()  # the watch is open: it saw "a" as it was
        await v1.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"team": "y"}}})
        await v1.patch_namespaced_pod("b", NS, {"metadata": {"labels": {"team": "x"}}})
        await v1.patch_namespaced_pod("b", NS, {"metadata": {"labels": {"v": "2"}}})
        await v1.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"v": "2"}}})
        await v1.delete_namespaced_pod("b", NS)

    def until(event: dict[str, Any]) -> bool:
        watching.set()
        return event["type"] == "DELETED" and event["object"]["metadata"]["name"] == "b"

    task = asyncio.create_task(writes())
    events = await collect(v1, label_selector="team=x", until=until)
    await task
    assert summary(events) == [
        ("ADDED", "a", "1"),
        ("DELETED", "a", "3"),
        ("ADDED", "b", "4"),
        ("MODIFIED", "b", "5"),
        ("DELETED", "b", "7"),
    ]
    # A move-out carries the last state that matched, at the version that moved it out.
    assert events[1]["object"]["metadata"]["labels"] == {"team": "x"}


async def test_namespace_scoped_and_all_namespace_watch(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod("ns1", pod("a", ["true"]))
    await v1.create_namespaced_pod("ns2", pod("b", ["true"]))
    events = await collect(v1, namespace="ns2", resource_version="0", until=lambda e: True)
    assert summary(events) == [("ADDED", "b", "2")]
    all_ns: list[str] = []
    async with watch.Watch() as w:
        async for e in w.stream(v1.list_pod_for_all_namespaces, timeout_seconds=5):
            all_ns.append(e["raw_object"]["metadata"]["name"])
            if len(all_ns) == 2:
                break
    assert all_ns == ["a", "b"]


async def test_drop_watches_ends_streams_and_client_resumes(
    fake_kube: FakeKube, v1: client.CoreV1Api
) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    seen: list[tuple[str, str, str]] = []
    got_a = asyncio.Event()

    async def consume() -> None:
        async with watch.Watch() as w:  # no timeout_seconds: the client reconnects itself
            async for e in w.stream(v1.list_namespaced_pod, NS):
                seen.append(
                    (
                        e["type"],
                        e["raw_object"]["metadata"]["name"],
                        e["raw_object"]["metadata"]["resourceVersion"],
                    )
                )
                got_a.set()
                if e["raw_object"]["metadata"]["name"] == "c":
                    return

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_a.wait(), 5)
    await v1.create_namespaced_pod(NS, pod("b", ["true"]))
    assert fake_kube.faults.drop_watches() == 1
    await v1.create_namespaced_pod(NS, pod("c", ["true"]))
    await asyncio.wait_for(task, 10)
    assert seen == [("ADDED", "a", "1"), ("ADDED", "b", "2"), ("ADDED", "c", "3")]
    watches = fake_kube.requests.of("watch")
    assert len(watches) == 2
    assert watches[1].query.get("resourceVersion") in ("1", "2")


async def test_expire_next_watch_fault(fake_kube: FakeKube, v1: client.CoreV1Api) -> None:
    fake_kube.faults.expire_next_watch()
    with pytest.raises(ApiException) as exc:
        async with watch.Watch() as w:
            async for _ in w.stream(v1.list_namespaced_pod, NS, timeout_seconds=2):
                pass
    assert exc.value.status == 410
    async with watch.Watch() as w:  # only the next one
        assert [e async for e in w.stream(v1.list_namespaced_pod, NS, timeout_seconds=1)] == []
