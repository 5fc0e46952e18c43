"""Contract: the fake kubelet (real subprocesses), logs and the fault switches."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fakekube import FakeKube

from .helpers import NS, body, collect, phase, pod, terminated, wait_pod


@pytest.fixture
async def v1(fake_kube: FakeKube) -> client.CoreV1Api:
    return client.CoreV1Api(fake_kube.api_client())


def done(o: dict[str, Any]) -> bool:
    return o.get("status", {}).get("phase") in ("Succeeded", "Failed")


def waiting_reason(o: dict[str, Any]) -> str | None:
    statuses = o.get("status", {}).get("containerStatuses") or [{}]
    return (statuses[0].get("state", {}).get("waiting") or {}).get("reason")


async def test_pod_lifecycle_success(v1: client.CoreV1Api) -> None:
    created = await v1.create_namespaced_pod(
        NS, pod("ok", ["sh", "-c", "echo hello; echo oops >&2"])
    )
    assert created.status.phase == "Pending"
    events = await collect(
        v1, resource_version=created.metadata.resource_version, until=lambda e: done(e["object"])
    )
    phases = [e["object"]["status"]["phase"] for e in events]
    assert phases[-1] == "Succeeded" and "Running" in phases
    assert all(e["type"] in ("ADDED", "MODIFIED") for e in events)
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == list(range(rvs[0], rvs[0] + len(rvs)))  # every status change was a real write
    running = next(e["object"] for e in events if e["object"]["status"]["phase"] == "Running")
    st = running["status"]
    assert st["startTime"] and st["podIP"] and running["spec"]["nodeName"]
    assert st["containerStatuses"][0]["state"]["running"]["startedAt"]
    assert {"type": "Ready", "status": "True"}.items() <= next(
        c for c in st["conditions"] if c["type"] == "Ready"
    ).items()
    final = events[-1]["object"]
    term = terminated(final)
    assert term is not None and term["exitCode"] == 0 and term["reason"] == "Completed"
    log = await v1.read_namespaced_pod_log("ok", NS)
    assert log == "hello\noops\n"


async def test_pod_failure_exit_code(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("bad", ["sh", "-c", "exit 3"]))
    final = await wait_pod(v1, "bad", done)
    assert final["status"]["phase"] == "Failed"
    term = terminated(final)
    assert term is not None and (term["exitCode"], term["reason"]) == (3, "Error")


async def test_signal_exit_code_is_128_plus_n(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("sig", ["sh", "-c", "kill -USR1 $$"]))
    term = terminated(await wait_pod(v1, "sig", done))
    assert term is not None and term["exitCode"] == 128 + 10


async def test_graceful_delete_sequence(v1: client.CoreV1Api) -> None:
    created = await v1.create_namespaced_pod(NS, pod("slp", ["sleep", "30"]))
    await wait_pod(v1, "slp", phase("Running"))
    rv = (await v1.list_namespaced_pod(NS)).metadata.resource_version
    deleted = await v1.delete_namespaced_pod("slp", NS, grace_period_seconds=20)
    assert deleted.metadata.deletion_timestamp is not None
    events = await collect(v1, resource_version=rv, until=lambda e: e["type"] == "DELETED")
    assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED", "DELETED"]
    assert events[0]["object"]["metadata"]["deletionGracePeriodSeconds"] == 20
    term = terminated(events[1]["object"])
    assert term is not None and (term["exitCode"], term["reason"]) == (143, "Error")
    assert events[1]["object"]["status"]["phase"] == "Failed"
    assert events[2]["object"]["metadata"]["uid"] == created.metadata.uid


async def test_grace_zero_removes_at_once_and_kills(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    await v1.create_namespaced_pod(NS, pod("slp", ["sleep", "30"]))
    await wait_pod(v1, "slp", phase("Running"))
    assert fake_kube.kubelet is not None
    proc = fake_kube.kubelet.runs[(NS, "slp")].proc
    assert proc is not None
    await v1.delete_namespaced_pod("slp", NS, grace_period_seconds=0)
    assert fake_kube.state.get("slp") is None
    assert await asyncio.wait_for(proc.wait(), 5) == -9


async def test_env_and_secrets(v1: client.CoreV1Api, fake_kube: FakeKube) -> None:
    env = [
        {"name": "PLAIN", "value": "p"},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    await v1.create_namespaced_pod(
        NS, pod("env", ["sh", "-c", 'echo "$PLAIN $SECRET $POD"'], container={"env": env})
    )
    held = await wait_pod(v1, "env", lambda o: waiting_reason(o) == "CreateContainerConfigError")
    assert held["status"]["phase"] == "Pending"
    assert (
        'secret "db" not found'
        in held["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    )
    fake_kube.secrets[(NS, "db")] = {"pw": "s3cret"}
    await wait_pod(v1, "env", phase("Succeeded"))
    assert await v1.read_namespaced_pod_log("env", NS) == "p s3cret env\n"


async def test_command_args_and_entrypoints(v1: client.CoreV1Api, fake_kube: FakeKube) -> None:
    fake_kube.entrypoints["tools:1"] = ["echo", "entry"]
    await v1.create_namespaced_pod(
        NS, pod("ep", None, image="tools:1", container={"args": ["arg"]})
    )
    await v1.create_namespaced_pod(NS, pod("ca", ["echo", "cmd"], container={"args": ["x"]}))
    await v1.create_namespaced_pod(NS, pod("none", None, image="unknown:1"))
    await wait_pod(v1, "ep", phase("Succeeded"))
    assert await v1.read_namespaced_pod_log("ep", NS) == "entry arg\n"
    await wait_pod(v1, "ca", phase("Succeeded"))
    assert await v1.read_namespaced_pod_log("ca", NS) == "cmd x\n"
    term = terminated(await wait_pod(v1, "none", done))
    assert term is not None and term["reason"] == "ContainerCannotRun"


async def test_active_deadline_seconds(v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_pod(NS, pod("dl", ["sleep", "30"], activeDeadlineSeconds=1))
    final = await wait_pod(v1, "dl", done)
    assert final["status"]["phase"] == "Failed"
    assert final["status"]["reason"] == "DeadlineExceeded"
    term = terminated(final)
    assert term is not None and term["exitCode"] == 143


async def test_logs_plain_tail_and_400_while_waiting(
    v1: client.CoreV1Api, fake_kube: FakeKube
) -> None:
    await v1.create_namespaced_pod(NS, pod("lg", ["seq", "4"]))
    await wait_pod(v1, "lg", phase("Succeeded"))
    assert await v1.read_namespaced_pod_log("lg", NS, tail_lines=2) == "3\n4\n"
    assert await v1.read_namespaced_pod_log("lg", NS, container="main") == "1\n2\n3\n4\n"
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{fake_kube.url}/api/v1/namespaces/{NS}/pods/lg/log") as r,
    ):
        assert r.status == 200 and r.content_type == "text/plain"
    with pytest.raises(ApiException) as exc:
        await v1.read_namespaced_pod_log("lg", NS, container="other")
    assert exc.value.status == 400
    fake_kube.faults.image_pull_backoff("held")
    await v1.create_namespaced_pod(NS, pod("held", ["true"]))
    await wait_pod(v1, "held", lambda o: waiting_reason(o) == "ImagePullBackOff")
    with pytest.raises(ApiException) as exc:
        await v1.read_namespaced_pod_log("held", NS)
    assert exc.value.status == 400
    b = body(exc.value)
    assert b["reason"] == "BadRequest" and "is waiting to start: ImagePullBackOff" in b["message"]


async def test_log_follow_streams_until_container_ends(v1: client.CoreV1Api) -> None:
    script = "echo first; read x < /dev/null; sleep 0.5; echo second"
    await v1.create_namespaced_pod(NS, pod("fl", ["sh", "-c", script]))
    await wait_pod(v1, "fl", phase("Running"))
    async with watch.Watch() as w:
        lines = [line async for line in w.stream(v1.read_namespaced_pod_log, "fl", NS)]
    assert lines == ["first\n", "second\n"]
    final = await v1.read_namespaced_pod("fl", NS)
    assert final.status.phase == "Succeeded"  # the stream ended only once it finished


async def test_delay_start_fault(v1: client.CoreV1Api, fake_kube: FakeKube) -> None:
    fake_kube.faults.delay_start(0.5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await v1.create_namespaced_pod(NS, pod("slow", ["true"]))
    await asyncio.sleep(0.2)
    assert (await v1.read_namespaced_pod("slow", NS)).status.phase == "Pending"
    await wait_pod(v1, "slow", phase("Succeeded"))
    assert loop.time() - start >= 0.5


async def test_image_pull_backoff_fault_by_label(v1: client.CoreV1Api, fake_kube: FakeKube) -> None:
    fake_kube.faults.image_pull_backoff({"pull": "broken"}, message="manifest unknown")
    await v1.create_namespaced_pod(NS, pod("good", ["true"]))
    created = await v1.create_namespaced_pod(NS, pod("bad", ["true"], labels={"pull": "broken"}))
    events = await collect(
        v1,
        field_selector="metadata.name=bad",
        resource_version=created.metadata.resource_version,
        until=lambda e: waiting_reason(e["object"]) == "ImagePullBackOff",
    )
    reasons = [waiting_reason(e["object"]) for e in events]
    assert "ErrImagePull" in reasons and reasons.index("ErrImagePull") < len(reasons) - 1
    msg = events[-1]["object"]["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert msg == "manifest unknown"
    await wait_pod(v1, "good", phase("Succeeded"))
    assert (await v1.read_namespaced_pod("bad", NS)).status.phase == "Pending"
    fake_kube.faults.clear_pod_faults()
    await wait_pod(v1, "bad", phase("Succeeded"))


async def test_unschedulable_fault(v1: client.CoreV1Api, fake_kube: FakeKube) -> None:
    fake_kube.faults.unschedulable()
    await v1.create_namespaced_pod(NS, pod("u", ["true"]))
    p = await wait_pod(v1, "u", lambda o: bool(o["status"].get("conditions")))
    cond = p["status"]["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "PodScheduled",
        "False",
        "Unschedulable",
    )
    assert p["status"]["phase"] == "Pending" and not p["spec"].get("nodeName")


async def test_oom_kill_fault(v1: client.CoreV1Api, fake_kube: FakeKube) -> None:
    await v1.create_namespaced_pod(NS, pod("oom", ["sleep", "30"]))
    await wait_pod(v1, "oom", phase("Running"))
    final = await fake_kube.faults.oom_kill("oom")
    assert final["status"]["phase"] == "Failed"
    term = terminated(final)
    assert term is not None and (term["exitCode"], term["reason"]) == (137, "OOMKilled")


async def test_evict_fault(v1: client.CoreV1Api, fake_kube: FakeKube) -> None:
    await v1.create_namespaced_pod(NS, pod("ev", ["sleep", "30"]))
    await wait_pod(v1, "ev", phase("Running"))
    await fake_kube.faults.evict("ev")
    p = await v1.read_namespaced_pod("ev", NS)
    assert (p.status.phase, p.status.reason) == ("Failed", "Evicted")
    assert "low on resource" in p.status.message


async def test_delete_behind_the_back_fault(v1: client.CoreV1Api, fake_kube: FakeKube) -> None:
    await v1.create_namespaced_pod(NS, pod("gone", ["sleep", "30"]))
    await wait_pod(v1, "gone", phase("Running"))
    rv = (await v1.list_namespaced_pod(NS)).metadata.resource_version
    await fake_kube.faults.delete_pod("gone")
    events = await collect(v1, resource_version=rv, until=lambda e: e["type"] == "DELETED")
    assert [e["type"] for e in events] == ["DELETED"]
    with pytest.raises(ApiException) as exc:
        await v1.read_namespaced_pod("gone", NS)
    assert exc.value.status == 404


async def test_fail_next_500_and_429(v1: client.CoreV1Api, fake_kube: FakeKube) -> None:
    fake_kube.faults.fail_next(2, code=500, verb="list")
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            await v1.list_namespaced_pod(NS)
        assert exc.value.status == 500 and body(exc.value)["reason"] == "InternalError"
    await v1.list_namespaced_pod(NS)
    fake_kube.faults.fail_next(1, code=429, retry_after=7)
    with pytest.raises(ApiException) as exc:
        await v1.create_namespaced_pod(NS, pod("x", ["true"]))
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "7"
    assert body(exc.value)["reason"] == "TooManyRequests"
    assert fake_kube.requests.counts("list") == 3
    assert [r.status for r in fake_kube.requests] == [500, 500, 200, 429]


async def test_forbid_creates_fault(v1: client.CoreV1Api, fake_kube: FakeKube) -> None:
    fake_kube.faults.forbid_creates("exceeded quota: q, requested: pods=1, used: pods=5")
    with pytest.raises(ApiException) as exc:
        await v1.create_namespaced_pod(NS, pod("q", ["true"]))
    assert exc.value.status == 403
    b = body(exc.value)
    assert b["reason"] == "Forbidden" and "exceeded quota" in b["message"]
    assert b["message"].startswith('pods "q" is forbidden')
    fake_kube.faults.forbid_creates(None)
    await v1.create_namespaced_pod(NS, pod("q", ["true"]))


async def test_no_process_left_after_teardown(make_fake_kube: Any) -> None:
    fk: FakeKube = await make_fake_kube()
    v1 = client.CoreV1Api(fk.api_client())
    await v1.create_namespaced_pod(NS, pod("s", ["sh", "-c", "sleep 60 & sleep 60"]))
    await wait_pod(v1, "s", phase("Running"))
    assert fk.kubelet is not None
    proc = fk.kubelet.runs[(NS, "s")].proc
    assert proc is not None
    pgid = proc.pid
    await fk.stop()
    assert proc.returncode is not None
    assert live_in_group(pgid) == []


def live_in_group(pgid: int) -> list[int]:
    """Pids of non-zombie processes in process group *pgid* (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


# --- the termination message ------------------------------------------------------------------


async def test_termination_message_is_what_the_container_wrote(v1: client.CoreV1Api) -> None:
    script = 'printf \'{"rows": 3}\' > /dev/termination-log; echo logged'
    await v1.create_namespaced_pod(NS, pod("msg", ["sh", "-c", script]))
    final = await wait_pod(v1, "msg", done)
    term = terminated(final)
    assert term is not None and term["message"] == '{"rows": 3}'
    container = final["spec"]["containers"][0]  # the API server's defaults
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "File"
    assert await v1.read_namespaced_pod_log("msg", NS) == "logged\n"


async def test_termination_message_honours_a_custom_path_and_the_4096_byte_cap(
    v1: client.CoreV1Api,
) -> None:
    script = "head -c 5000 /dev/zero | tr '\\0' x > /tmp/done-msg"
    spec = pod("big", ["sh", "-c", script], container={"terminationMessagePath": "/tmp/done-msg"})
    await v1.create_namespaced_pod(NS, spec)
    term = terminated(await wait_pod(v1, "big", done))
    assert term is not None and term["message"] == "x" * 4096


async def test_no_termination_message_unless_written_and_fallback_to_logs(
    v1: client.CoreV1Api,
) -> None:
    await v1.create_namespaced_pod(NS, pod("quiet", ["sh", "-c", "echo hi"]))
    await v1.create_namespaced_pod(
        NS,
        pod(
            "fallback",
            ["sh", "-c", "echo first; echo last words; exit 2"],
            container={"terminationMessagePolicy": "FallbackToLogsOnError"},
        ),
    )
    quiet = terminated(await wait_pod(v1, "quiet", done))
    fallback = terminated(await wait_pod(v1, "fallback", done))
    assert quiet is not None and "message" not in quiet
    assert fallback is not None and fallback["message"] == "first\nlast words"
