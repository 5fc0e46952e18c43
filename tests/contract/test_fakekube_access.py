"""Contract: namespaces, RBAC refusals, dry-run creates and Secrets of the fake API server.

As on a real cluster: a namespace that does not exist lists as empty (200) but
refuses creates with 404 ``namespaces "x" not found``; an RBAC refusal is a 403
Status naming the user, verb, resource and namespace, and comes before the
namespace check; a ``dryRun=All`` create is validated and admitted but never
stored nor seen by a watch.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fakekube import FakeKube

from .helpers import NS, body, collect, pod


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"kubelet": False}


@pytest.fixture
async def v1(fake_kube: FakeKube) -> client.CoreV1Api:
    return client.CoreV1Api(fake_kube.api_client())


async def test_a_namespace_that_does_not_exist(v1: client.CoreV1Api, fake_kube: FakeKube) -> None:
    fake_kube.faults.remove_namespace("ghost")
    listed = await v1.list_namespaced_pod("ghost")
    assert listed.items == []
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_pod("ghost", pod("a", ["true"]))
    status = body(info.value)
    assert (info.value.status, status["reason"]) == (404, "NotFound")
    assert status["message"] == 'namespaces "ghost" not found'
    assert status["details"] == {"name": "ghost", "kind": "namespaces"}
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_pod("ghost", pod("a", ["true"]), dry_run="All")
    assert info.value.status == 404
    fake_kube.faults.add_namespace("ghost")
    await v1.create_namespaced_pod("ghost", pod("a", ["true"]))
    assert fake_kube.state.get("a", "ghost") is not None


async def test_rbac_refusal_is_a_403_status_before_the_namespace_check(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    fake_kube.faults.remove_namespace("locked")
    fake_kube.faults.forbid("create", "locked")
    for dry_run in ({}, {"dry_run": "All"}):
        with pytest.raises(ApiException) as info:
            await v1.create_namespaced_pod("locked", pod("a", ["true"]), **dry_run)
        status = body(info.value)
        assert (info.value.status, status["reason"], status["kind"]) == (403, "Forbidden", "Status")
        assert status["message"] == (
            'pods is forbidden: User "system:serviceaccount:miniflow:miniflow-scheduler" '
            'cannot create resource "pods" in API group "" in the namespace "locked"'
        )
        assert status["details"] == {"kind": "pods"}
    await v1.list_namespaced_pod("locked")  # only the verb forbidden is refused
    fake_kube.faults.forbid("get", NS, "secrets")
    with pytest.raises(ApiException) as info:
        await v1.read_namespaced_secret("db", NS)
    assert info.value.status == 403
    assert 'secrets "db" is forbidden' in body(info.value)["message"]
    assert fake_kube.state.pods() == []


async def test_dry_run_create_is_checked_but_never_stored_nor_watched(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    await v1.create_namespaced_pod(NS, pod("real", ["true"]))
    rv = fake_kube.state.resource_version
    preview, code, _ = await v1.create_namespaced_pod_with_http_info(
        NS, pod("dry", ["true"]), dry_run="All"
    )
    assert code == 201 and preview.metadata.name == "dry"
    assert preview.status.phase == "Pending" and preview.spec.restart_policy == "Never"
    assert fake_kube.state.get("dry") is None and fake_kube.state.resource_version == rv
    with pytest.raises(ApiException) as info:  # validated like a real create
        await v1.create_namespaced_pod(NS, pod("Bad_Name", ["true"]), dry_run="All")
    assert info.value.status == 422
    with pytest.raises(ApiException) as info:  # the name is checked too
        await v1.create_namespaced_pod(NS, pod("real", ["true"]), dry_run="All")
    assert info.value.status == 409
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_pod(NS, pod("dry", ["true"]), dry_run="Some")
    assert info.value.status == 400
    fake_kube.faults.forbid_creates()  # admission (quota) applies to dry runs too
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_pod(NS, pod("dry", ["true"]), dry_run="All")
    assert info.value.status == 403 and "exceeded quota" in body(info.value)["message"]
    fake_kube.faults.forbid_creates(None)
    # A watch from before the dry runs sees the next real create first.
    await v1.create_namespaced_pod(NS, pod("after", ["true"]))
    events = await collect(v1, until=lambda e: e["type"] == "ADDED", resource_version=str(rv))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "after")]
    (dry,) = [r for r in fake_kube.requests.of("create") if r.dry_run and r.status == 201]
    assert dry.verb == "create"


async def test_secrets_are_served_base64_and_missing_ones_are_404(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    fake_kube.secrets[(NS, "db")] = {"url": "postgresql://db/x"}
    secret = await v1.read_namespaced_secret("db", NS)
    assert secret.kind == "Secret" and secret.metadata.namespace == NS
    assert base64.b64decode(secret.data["url"]).decode() == "postgresql://db/x"
    for namespace, name in ((NS, "other"), ("elsewhere", "db")):
        with pytest.raises(ApiException) as info:
            await v1.read_namespaced_secret(name, namespace)
        status = body(info.value)
        assert (info.value.status, status["message"]) == (404, f'secrets "{name}" not found')
        assert status["details"] == {"name": name, "kind": "secrets"}
    (get,) = fake_kube.requests.of("get", "secrets")[:1]
    assert (get.resource, get.name) == ("secrets", "db")
