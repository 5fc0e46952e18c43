"""Contract: pod CRUD, selectors, patches, errors of the fake API server (kubelet off)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fakekube import FakeKube

from .helpers import NS, body, collect, pod


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"kubelet": False}


@pytest.fixture
async def v1(fake_kube: FakeKube) -> client.CoreV1Api:
    return client.CoreV1Api(fake_kube.api_client())


async def test_create_returns_201_pending_with_server_fields(v1: client.CoreV1Api) -> None:
    manifest = pod("a", ["true"])
    manifest["status"] = {"phase": "Running"}
    manifest["metadata"]["uid"] = "client-chosen"
    created, code, _ = await v1.create_namespaced_pod_with_http_info(NS, manifest)
    assert code == 201
    assert created.status.phase == "Pending"
    assert created.metadata.uid and created.metadata.uid != "client-chosen"
    assert created.metadata.creation_timestamp is not None
    assert created.metadata.resource_version == "1"
    assert created.metadata.namespace == NS
    got = await v1.read_namespaced_pod("a", NS)
    assert got.metadata.uid == created.metadata.uid


async def test_generate_name(v1: client.CoreV1Api) -> None:
    manifest = pod("", ["true"])
    manifest["metadata"] = {"generateName": "task-"}
    a = await v1.create_namespaced_pod(NS, manifest)
    b = await v1.create_namespaced_pod(NS, manifest)
    assert a.metadata.name.startswith("task-") and len(a.metadata.name) == len("task-") + 5
    assert a.metadata.name != b.metadata.name


async def test_resource_version_bumps_and_noop_writes(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"], labels={"x": "1"}))
    p = await v1.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"x": "2"}}})
    assert p.metadata.resource_version == "2"
    rv = (await v1.list_namespaced_pod(NS)).metadata.resource_version
    assert rv == "2"
    same = await v1.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"x": "2"}}})
    assert same.metadata.resource_version == "2"
    same = await v1.patch_namespaced_pod_status("a", NS, {"status": {"phase": "Pending"}})
    assert same.metadata.resource_version == "2"
    assert fake_kube.state.resource_version == 2
    # no event either: a watch from rv 2 sees only the next real write
    await v1.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"x": "3"}}})
    events = await collect(v1, resource_version="2", until=lambda e: True)
    assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in events] == [
        ("MODIFIED", "3")
    ]


async def test_list_label_selectors(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"], labels={"app": "x", "tier": "web"}))
    await v1.create_namespaced_pod(NS, pod("b", ["true"], labels={"app": "y"}))
    await v1.create_namespaced_pod(NS, pod("c", ["true"]))

    async def names(sel: str) -> list[str]:
        return [
            p.metadata.name for p in (await v1.list_namespaced_pod(NS, label_selector=sel)).items
        ]

    assert await names("app=x") == ["a"]
    assert await names("app==x") == ["a"]
    assert await names("app!=x") == ["b", "c"]  # c lacks the label and still matches
    assert await names("app in (x,y)") == ["a", "b"]
    assert await names("app notin (x)") == ["b", "c"]
    assert await names("tier") == ["a"]
    assert await names("!tier") == ["b", "c"]
    assert await names("app=x,tier=web") == ["a"]
    assert await names("app in (x, y),!tier") == ["b"]
    with pytest.raises(ApiException) as exc:
        await names("app in x)")
    assert exc.value.status == 400


async def test_list_field_selectors_and_collection_rv(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    await v1.create_namespaced_pod(NS, pod("b", ["true"]))
    await v1.patch_namespaced_pod_status("b", NS, {"status": {"phase": "Running"}})
    fake_kube.state.mutate("b", NS, lambda p: p["spec"].update(nodeName="n1"))
    lst = await v1.list_namespaced_pod(NS, field_selector="metadata.name=a")
    assert [p.metadata.name for p in lst.items] == ["a"]
    assert lst.metadata.resource_version == str(fake_kube.state.resource_version) == "4"
    lst = await v1.list_namespaced_pod(NS, field_selector="status.phase!=Running")
    assert [p.metadata.name for p in lst.items] == ["a"]
    lst = await v1.list_namespaced_pod(NS, field_selector="spec.nodeName=n1,status.phase=Running")
    assert [p.metadata.name for p in lst.items] == ["b"]
    lst = await v1.list_namespaced_pod(NS, field_selector="spec.nodeName=")
    assert [p.metadata.name for p in lst.items] == ["a"]
    with pytest.raises(ApiException) as exc:
        await v1.list_namespaced_pod(NS, field_selector="spec.bogus=1")
    assert exc.value.status == 400


async def test_all_namespaces_list_and_namespace_scoping(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod("ns1", pod("a", ["true"]))
    await v1.create_namespaced_pod("ns2", pod("a", ["true"]))
    everything = await v1.list_pod_for_all_namespaces()
    assert [(p.metadata.namespace, p.metadata.name) for p in everything.items] == [
        ("ns1", "a"),
        ("ns2", "a"),
    ]
    assert [p.metadata.namespace for p in (await v1.list_namespaced_pod("ns2")).items] == ["ns2"]


async def test_pagination(v1: client.CoreV1Api) -> None:
    for n in "abcde":
        await v1.create_namespaced_pod(NS, pod(n, ["true"]))
    first = await v1.list_namespaced_pod(NS, limit=2)
    assert [p.metadata.name for p in first.items] == ["a", "b"]
    assert first.metadata.remaining_item_count == 3
    second = await v1.list_namespaced_pod(NS, limit=2, _continue=first.metadata._continue)
    assert [p.metadata.name for p in second.items] == ["c", "d"]


async def test_status_and_spec_are_separate(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    p = await v1.patch_namespaced_pod(
        "a", NS, {"metadata": {"labels": {"k": "v"}}, "status": {"phase": "Running"}}
    )
    assert p.status.phase == "Pending" and p.metadata.labels == {"k": "v"}
    p = await v1.patch_namespaced_pod_status(
        "a",
        NS,
        {
            "metadata": {"labels": {"k": "other"}},
            "spec": {"activeDeadlineSeconds": 5},
            "status": {"phase": "Running"},
        },
    )
    assert p.status.phase == "Running"
    assert p.metadata.labels == {"k": "v"} and p.spec.active_deadline_seconds is None
    replaced = await v1.replace_namespaced_pod(
        "a",
        NS,
        {
            "metadata": {"name": "a", "labels": {"k": "put"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox:1.36", "command": ["true"]}],
            },
            "status": {"phase": "Succeeded"},
        },
    )
    assert replaced.status.phase == "Running" and replaced.metadata.labels == {"k": "put"}


async def test_spec_is_immutable_except_allowed_fields(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    p = await v1.patch_namespaced_pod("a", NS, {"spec": {"activeDeadlineSeconds": 9}})
    assert p.spec.active_deadline_seconds == 9
    with pytest.raises(ApiException) as exc:
        await v1.patch_namespaced_pod("a", NS, {"spec": {"restartPolicy": "Always"}})
    assert exc.value.status == 422 and body(exc.value)["reason"] == "Invalid"


async def test_stale_resource_version_conflicts(v1: client.CoreV1Api) -> None:
    created = await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    await v1.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"k": "v"}}})
    stale = v1.api_client.sanitize_for_serialization(created)
    stale["metadata"]["labels"] = {"k": "mine"}
    with pytest.raises(ApiException) as exc:
        await v1.replace_namespaced_pod("a", NS, stale)
    assert exc.value.status == 409
    b = body(exc.value)
    assert b["kind"] == "Status" and b["reason"] == "Conflict" and b["code"] == 409
    assert b["details"] == {"name": "a", "kind": "pods"}
    with pytest.raises(ApiException) as exc:
        await v1.replace_namespaced_pod_status("a", NS, stale)
    assert exc.value.status == 409
    with pytest.raises(ApiException) as exc:
        await v1.patch_namespaced_pod(
            "a", NS, {"metadata": {"resourceVersion": "1", "labels": {"k": "x"}}}
        )
    assert exc.value.status == 409
    stale["metadata"]["resourceVersion"] = "2"
    ok = await v1.replace_namespaced_pod("a", NS, stale)
    assert ok.metadata.labels == {"k": "mine"} and ok.metadata.resource_version == "3"


async def test_strategic_merge_joins_by_name_and_type(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    await v1.patch_namespaced_pod_status(
        "a",
        NS,
        {
            "status": {
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "False"},
                ],
                "containerStatuses": [
                    {
                        "name": "main",
                        "image": "i",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                    },
                    {
                        "name": "side",
                        "image": "i",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                    },
                ],
            }
        },
    )
    p = await v1.patch_namespaced_pod_status(
        "a",
        NS,
        {
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "side", "ready": True}],
            }
        },
    )
    assert [(c.type, c.status) for c in p.status.conditions] == [
        ("PodScheduled", "True"),
        ("Ready", "True"),
    ]
    assert [(c.name, c.ready, c.image) for c in p.status.container_statuses] == [
        ("main", False, "i"),
        ("side", True, "i"),
    ]
    # a JSON merge patch replaces lists wholesale
    p = await v1.patch_namespaced_pod_status(
        "a",
        NS,
        {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        _content_type="application/merge-patch+json",
    )
    assert [(c.type, c.status) for c in p.status.conditions] == [("Ready", "False")]
    # a JSON patch (list body) works too
    p = await v1.patch_namespaced_pod(
        "a", NS, [{"op": "add", "path": "/metadata/labels", "value": {"j": "p"}}]
    )
    assert p.metadata.labels == {"j": "p"}


async def test_invalid_manifests_are_422(v1: client.CoreV1Api) -> None:
    cases = {
        "no-image": (
            {"name": "ok", "spec": {"containers": [{"name": "main"}]}},
            "spec.containers[0].image",
        ),
        "bad-name": (
            {"name": "Bad_Name", "spec": {"containers": [{"name": "main", "image": "x"}]}},
            "metadata.name",
        ),
        "long-name": (
            {"name": "a" * 254, "spec": {"containers": [{"name": "main", "image": "x"}]}},
            "metadata.name",
        ),
        "no-containers": ({"name": "ok", "spec": {"containers": []}}, "spec.containers"),
    }
    for case, (manifest, field) in cases.items():
        m = {"metadata": {"name": manifest["name"]}, "spec": manifest["spec"]}
        with pytest.raises(ApiException) as exc:
            await v1.create_namespaced_pod(NS, m)
        assert exc.value.status == 422, case
        b = body(exc.value)
        assert (b["kind"], b["status"], b["reason"], b["code"]) == (
            "Status",
            "Failure",
            "Invalid",
            422,
        ), case
        assert field in [c["field"] for c in b["details"]["causes"]], case
        assert field in b["message"], case
    assert (await v1.list_namespaced_pod(NS)).items == []


async def test_not_found_and_already_exists(v1: client.CoreV1Api) -> None:
    for call in (
        v1.read_namespaced_pod("nope", NS),
        v1.delete_namespaced_pod("nope", NS),
        v1.patch_namespaced_pod("nope", NS, {"metadata": {"labels": {"a": "b"}}}),
        v1.read_namespaced_pod_log("nope", NS),
    ):
        with pytest.raises(ApiException) as exc:
            await call
        assert exc.value.status == 404
        assert exc.value.reason == "Not Found"
        b = body(exc.value)
        assert b["reason"] == "NotFound" and b["message"] == 'pods "nope" not found'
        assert b["details"] == {"name": "nope", "kind": "pods"}
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    with pytest.raises(ApiException) as exc:
        await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    assert exc.value.status == 409 and body(exc.value)["reason"] == "AlreadyExists"


async def test_delete_not_running_pod_is_immediate(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    await v1.create_namespaced_pod(NS, pod("a", ["true"]))
    deleted = await v1.delete_namespaced_pod("a", NS, grace_period_seconds=30)
    assert deleted.metadata.name == "a"
    assert fake_kube.state.get("a") is None
    events = await collect(v1, resource_version="1", until=lambda e: e["type"] == "DELETED")
    assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in events] == [
        ("DELETED", "2")
    ]


async def test_kubeconfig_and_request_log(fake_kube: FakeKube) -> None:
    cfg = client.Configuration()
    await config.load_kube_config(
        config_file=str(fake_kube.kubeconfig_path), context="fake", client_configuration=cfg
    )
    async with client.ApiClient(cfg) as api:
        v1 = client.CoreV1Api(api)
        await v1.create_namespaced_pod(NS, pod("a", ["true"]))
        await v1.list_namespaced_pod(NS)
        await v1.read_namespaced_pod("a", NS)
        await v1.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"a": "b"}}})
        await v1.delete_namespaced_pod("a", NS)
    counts = fake_kube.requests.counts()
    assert (counts["create"], counts["list"], counts["get"], counts["patch"], counts["delete"]) == (
        1,
        1,
        1,
        1,
        1,
    )
    assert fake_kube.requests.counts("watch") == 0
    assert fake_kube.requests[0].method == "POST" and fake_kube.requests[0].status == 201
