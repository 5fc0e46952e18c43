"""KubernetesLauncher against the fake Kubernetes API server (tests/fakekube).

The fake runs pod commands as local subprocesses, so pod tasks here use `sh`.
Nothing in the kubernetes client is patched: every request goes over HTTP to
the fake, whose request log lets us count requests per task.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from miniflow.launchers import pods
from miniflow.launchers.base import (
    AttemptExited,
    AttemptKey,
    AttemptStarted,
    LauncherEvent,
    TaskSpec,
)
from miniflow.launchers.kube_client import RetryPolicy
from miniflow.launchers.kubernetes import KubernetesLauncher
from miniflow.serialized import PodSettings

pytestmark = pytest.mark.timeout(60)

FakeKube = Any  # tests.fakekube.FakeKube; the fixture comes from tests/conftest.py
DEFAULTS = pods.PodDefaults(
    namespace="default", worker_image="miniflow:test", database_secret_name="miniflow-db"
)
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


def key(task: str = "t", try_number: int = 1, run: str = "manual__1") -> AttemptKey:
    return AttemptKey("dag", run, task, try_number)


def sh(k: AttemptKey, script: str, **kw: Any) -> TaskSpec:
    return TaskSpec(
        key=k, kind="pod", fileloc="dag.py", image="alpine:3.20", cmds=["sh", "-c", script], **kw
    )


MakeLauncher = Callable[..., Awaitable[KubernetesLauncher]]


@pytest.fixture
async def make_launcher(fake_kube: FakeKube) -> AsyncIterator[MakeLauncher]:
    started: list[KubernetesLauncher] = []

    async def make(**kw: Any) -> KubernetesLauncher:
        kw.setdefault("defaults", DEFAULTS)
        kw.setdefault("retry", FAST_RETRY)
        launcher = KubernetesLauncher(kubeconfig=str(fake_kube.kubeconfig_path), **kw)
        await launcher.start()
        started.append(launcher)
        return launcher

    try:
        yield make
    finally:
        for launcher in started:
            await launcher.close()


@pytest.fixture
async def launcher(make_launcher: MakeLauncher) -> KubernetesLauncher:
    return await make_launcher()


async def events_until_exit(
    launcher: KubernetesLauncher, k: AttemptKey, timeout: float = 20
) -> list[LauncherEvent]:
    """Events of `k` up to and including its AttemptExited."""
    seen: list[LauncherEvent] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await launcher.events.get()
            if event.key != k:
                continue
            seen.append(event)
            if isinstance(event, AttemptExited):
                return seen


async def all_exits(
    launcher: KubernetesLauncher, keys: list[AttemptKey], timeout: float = 30
) -> dict[AttemptKey, AttemptExited]:
    """The one AttemptExited of each key (a second one fails the test)."""
    exits: dict[AttemptKey, AttemptExited] = {}
    async with asyncio.timeout(timeout):
        while len(exits) < len(keys):
            event = await launcher.events.get()
            if isinstance(event, AttemptExited):
                assert event.key not in exits, f"duplicate exit {event}"
                exits[event.key] = event
    return exits


async def wait_started(launcher: KubernetesLauncher, k: AttemptKey) -> AttemptStarted:
    async with asyncio.timeout(20):
        while True:
            event = await launcher.events.get()
            if event.key == k:
                assert isinstance(event, AttemptStarted), event
                return event


async def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - polls the fake server's state
            await asyncio.sleep(0.02)


def drain(launcher: KubernetesLauncher) -> list[LauncherEvent]:
    out = []
    while not launcher.events.empty():
        out.append(launcher.events.get_nowait())
    return out


# --- happy path -----------------------------------------------------------------------


async def test_success_costs_create_log_delete(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    k = key()
    base = dict(fake_kube.requests.counts())
    (result,) = await launcher.launch([sh(k, "echo hello; echo world")])
    name = pods.pod_name(k)
    assert result.handle == name and result.error is None and not result.adopted

    events = await events_until_exit(launcher, k)
    assert [type(e) for e in events] == [AttemptStarted, AttemptExited]
    exited = events[-1]
    assert isinstance(exited, AttemptExited)
    assert exited.exit_code == 0 and exited.reason == "Completed"
    assert exited.log_tail is not None and "hello\nworld" in exited.log_tail
    await eventually(lambda: fake_kube.state.get(name) is None)

    counts = fake_kube.requests.counts()
    assert counts["create"] - base.get("create", 0) == 1
    assert counts["log"] - base.get("log", 0) == 1
    assert counts["delete"] - base.get("delete", 0) == 1
    assert counts["get"] == 0  # status comes from the watch only
    assert counts["list"] == 1
    verbs = [r.verb for r in fake_kube.requests if r.name == name]
    assert verbs.index("log") < verbs.index("delete")  # logs survive cleanup


async def test_failure_keeps_pod_with_on_success_cleanup(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    k = key()
    await launcher.launch([sh(k, "echo oops >&2; exit 3")])
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited)
    assert (exited.exit_code, exited.reason) == (3, "Error")
    assert exited.log_tail is not None and "oops" in exited.log_tail
    await asyncio.sleep(0.2)
    assert fake_kube.state.get(pods.pod_name(k)) is not None
    assert fake_kube.requests.counts("delete") == 0
    assert await launcher.alive() == []


async def test_cleanup_always_deletes_failed_pods_after_keep_failed_for(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    launcher = await make_launcher(cleanup="always", keep_failed_for=0.3)
    k = key()
    await launcher.launch([sh(k, "exit 1")])
    await events_until_exit(launcher, k)
    assert fake_kube.state.get(pods.pod_name(k)) is not None
    await eventually(lambda: fake_kube.state.get(pods.pod_name(k)) is None)


async def test_cleanup_never(make_launcher: MakeLauncher, fake_kube: FakeKube) -> None:
    launcher = await make_launcher(cleanup="never")
    k = key()
    await launcher.launch([sh(k, "true")])
    await events_until_exit(launcher, k)
    await asyncio.sleep(0.2)
    assert fake_kube.state.get(pods.pod_name(k)) is not None
    assert fake_kube.requests.counts("delete") == 0


async def test_many_tasks_concurrently(make_launcher: MakeLauncher, fake_kube: FakeKube) -> None:
    launcher = await make_launcher(max_concurrent_creates=4)
    keys = [key(f"t{i}") for i in range(12)]
    results = await launcher.launch([sh(k, f"exit {i % 2}") for i, k in enumerate(keys)])
    assert all(r.handle for r in results)
    exits = await all_exits(launcher, keys)
    assert [exits[k].exit_code for k in keys] == [i % 2 for i in range(len(keys))]
    assert fake_kube.requests.counts("create") == 12
    assert fake_kube.requests.counts("log") == 12


# --- create errors ------------------------------------------------------------------------


async def test_relaunch_adopts_on_409_and_never_creates_twice(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    k = key()
    spec = sh(k, "sleep 0.5")
    (first,) = await launcher.launch([spec])
    (second,) = await launcher.launch([spec])
    assert not first.adopted
    assert second.adopted and second.handle == first.handle and second.error is None
    assert len(fake_kube.state.pods()) == 1
    events = await events_until_exit(launcher, k)
    assert [type(e) for e in events] == [AttemptStarted, AttemptExited]


async def test_forbidden_is_permanent_with_the_api_message(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    fake_kube.faults.forbid_creates("exceeded quota: compute-quota")
    (result,) = await launcher.launch([sh(key(), "true")])
    assert result.handle is None and not result.retryable
    assert result.error is not None and "exceeded quota: compute-quota" in result.error
    assert fake_kube.requests.counts("create") == 1


async def test_invalid_pod_is_permanent_422(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    spec = sh(key(), "true", pod=PodSettings(labels={"team": "not valid!"}))
    (result,) = await launcher.launch([spec])
    assert result.handle is None and not result.retryable
    assert result.error and "is invalid" in result.error and "not valid!" in result.error
    assert fake_kube.requests.counts("create") == 1


@pytest.mark.parametrize("code", [429, 500])
async def test_transient_errors_are_retried(
    launcher: KubernetesLauncher, fake_kube: FakeKube, code: int
) -> None:
    fake_kube.faults.fail_next(2, code=code, verb="create", retry_after=0)
    k = key()
    (result,) = await launcher.launch([sh(k, "true")])
    assert result.error is None and result.handle == pods.pod_name(k)
    assert fake_kube.requests.counts("create") == 3
    await events_until_exit(launcher, k)


async def test_persistent_transient_errors_are_reported_retryable(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    fake_kube.faults.fail_next(100, code=503, verb="create", retry_after=0)
    (result,) = await launcher.launch([sh(key(), "true")])
    assert result.handle is None and result.retryable and result.error
    assert fake_kube.requests.counts("create") == FAST_RETRY.attempts


async def test_bad_spec_is_reported_not_raised(launcher: KubernetesLauncher) -> None:
    bad = TaskSpec(key=key("a"), kind="pod", fileloc="dag.py", image=None)
    good = sh(key("b"), "true")
    results = await launcher.launch([bad, good])
    assert results[0].error and "no image" in results[0].error and results[0].handle is None
    assert results[1].handle is not None


# --- exits ----------------------------------------------------------------------------------


async def test_oom_killed(launcher: KubernetesLauncher, fake_kube: FakeKube) -> None:
    k = key()
    await launcher.launch([sh(k, "echo eating memory; sleep 30")])
    await wait_started(launcher, k)
    await fake_kube.faults.oom_kill(pods.pod_name(k))
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited)
    assert (exited.exit_code, exited.reason) == (137, "OOMKilled")
    assert exited.log_tail is not None and "eating memory" in exited.log_tail


async def test_evicted(launcher: KubernetesLauncher, fake_kube: FakeKube) -> None:
    k = key()
    await launcher.launch([sh(k, "sleep 30")])
    await wait_started(launcher, k)
    await fake_kube.faults.evict(pods.pod_name(k), message="low on memory")
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited)
    assert exited.reason == "Evicted" and exited.message == "low on memory"


async def test_deadline_exceeded(launcher: KubernetesLauncher) -> None:
    k = key()
    await launcher.launch([sh(k, "sleep 30", timeout=1)])
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited)
    assert exited.reason == "DeadlineExceeded"


async def test_image_pull_backoff_is_killed_after_pending_timeout(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    launcher = await make_launcher(pending_timeout=0.5)
    fake_kube.faults.image_pull_backoff(message="manifest unknown: nope:1")
    k = key()
    await launcher.launch([sh(k, "true")])
    events = await events_until_exit(launcher, k)
    assert len(events) == 1  # never started
    exited = events[0]
    assert isinstance(exited, AttemptExited)
    assert exited.exit_code is None
    assert exited.reason in ("ErrImagePull", "ImagePullBackOff")
    assert exited.message and "manifest unknown" in exited.message
    await eventually(lambda: fake_kube.state.get(pods.pod_name(k)) is None)
    assert fake_kube.requests.counts("log") == 0


async def test_unschedulable_is_killed_after_pending_timeout(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    launcher = await make_launcher(pending_timeout=0.5)
    fake_kube.faults.unschedulable()
    k = key()
    await launcher.launch([sh(k, "true")])
    (exited,) = await events_until_exit(launcher, k)
    assert isinstance(exited, AttemptExited)
    assert exited.reason == "Unschedulable" and exited.exit_code is None
    assert exited.message and "Insufficient cpu" in exited.message


async def test_short_pending_is_not_killed(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    launcher = await make_launcher(pending_timeout=2.0)
    fake_kube.faults.image_pull_backoff()
    k = key()
    await launcher.launch([sh(k, "true")])
    await asyncio.sleep(0.5)
    fake_kube.faults.clear_pod_faults()
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 0


async def test_events_are_deduplicated(make_launcher: MakeLauncher, fake_kube: FakeKube) -> None:
    launcher = await make_launcher(cleanup="never")
    k = key()
    await launcher.launch([sh(k, "true")])
    await events_until_exit(launcher, k)
    name = pods.pod_name(k)
    for i in range(3):  # the API repeating a terminal state must not repeat events
        fake_kube.state.mutate(
            name, "default", lambda p, i=i: p["metadata"]["labels"].update({"n": str(i)})
        )
    fake_kube.faults.expire_next_watch()
    fake_kube.faults.drop_watches()  # relist sees the same terminal pod again
    await eventually(lambda: fake_kube.requests.counts("list") >= 3)
    await asyncio.sleep(0.2)
    assert drain(launcher) == []


# --- kill, deletion, loss -----------------------------------------------------------------


async def test_kill_reports_the_kill_reason(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    k = key()
    (result,) = await launcher.launch([sh(k, "sleep 30")])
    await wait_started(launcher, k)
    await launcher.kill(k, result.handle, reason="Timeout")
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited) and exited.reason == "Timeout"
    await eventually(lambda: fake_kube.state.get(pods.pod_name(k)) is None)


async def test_kill_of_a_missing_pod_still_reports(launcher: KubernetesLauncher) -> None:
    k = key()
    await launcher.kill(k, None, reason="Killed")
    (exited,) = await events_until_exit(launcher, k)
    assert isinstance(exited, AttemptExited) and exited.reason == "Killed"


async def test_pod_deleted_behind_our_back(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    k = key()
    await launcher.launch([sh(k, "sleep 30")])
    await wait_started(launcher, k)
    await fake_kube.faults.delete_pod(pods.pod_name(k))
    (exited,) = await events_until_exit(launcher, k)
    assert isinstance(exited, AttemptExited)
    assert exited.reason == "Deleted" and exited.exit_code is None


async def test_pod_vanishing_while_unwatched_is_lost_after_relist(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    k = key()
    await launcher.launch([sh(k, "sleep 30")])
    await wait_started(launcher, k)
    lists = fake_kube.requests.counts("list")
    fake_kube.faults.drop_watches()  # the stream ends before the DELETED event
    fake_kube.state.remove(pods.pod_name(k), "default")
    (exited,) = await events_until_exit(launcher, k)
    assert isinstance(exited, AttemptExited) and exited.reason == "Lost"
    assert fake_kube.requests.counts("list") > lists


async def test_410_relists_and_resumes(launcher: KubernetesLauncher, fake_kube: FakeKube) -> None:
    k1, k2 = key("a"), key("b")
    await launcher.launch([sh(k1, "sleep 0.5")])
    await wait_started(launcher, k1)
    lists = fake_kube.requests.counts("list")
    fake_kube.faults.expire_next_watch()
    fake_kube.faults.drop_watches()
    exited = (await events_until_exit(launcher, k1))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 0
    assert fake_kube.requests.counts("list") >= lists + 2  # after the drop and after the 410
    await launcher.launch([sh(k2, "exit 4")])  # the resumed watch still reports
    exited = (await events_until_exit(launcher, k2))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 4
    assert len([r for r in fake_kube.requests if r.verb == "watch"]) >= 3


async def test_one_watch_per_namespace(launcher: KubernetesLauncher, fake_kube: FakeKube) -> None:
    keys = [key(f"t{i}") for i in range(5)]
    other = key("elsewhere")
    specs = [sh(k, "true") for k in keys]
    specs.append(sh(other, "exit 2", pod=PodSettings(namespace="team-a")))
    results = await launcher.launch(specs)
    assert results[-1].handle == f"team-a/{pods.pod_name(other)}"
    exits = await all_exits(launcher, [*keys, other])
    assert exits[other].exit_code == 2
    watches = fake_kube.requests.of("watch")
    assert sorted({w.namespace for w in watches}) == ["default", "team-a"]
    assert len(watches) == 2


# --- adoption, alive, logs ----------------------------------------------------------------


async def test_adopt_after_restart(make_launcher: MakeLauncher, fake_kube: FakeKube) -> None:
    first = await make_launcher()
    k, gone = key("running"), key("gone")
    (result,) = await first.launch([sh(k, "echo adopted; sleep 1")])
    await wait_started(first, k)
    await first.close()

    second = await make_launcher()
    drain(second)  # the relist reported the running pod as started
    assert [a.key for a in await second.alive()] == [k]
    await second.adopt([(k, result.handle), (gone, None)])
    lost = await second.events.get()
    assert isinstance(lost, AttemptExited) and lost.key == gone and lost.reason == "Lost"
    exited = (await events_until_exit(second, k))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 0
    assert exited.log_tail and "adopted" in exited.log_tail
    assert fake_kube.requests.counts("create") == 1


async def test_alive_lists_running_attempts(launcher: KubernetesLauncher) -> None:
    k = key()
    (result,) = await launcher.launch([sh(k, "sleep 30")])
    await wait_started(launcher, k)
    (alive,) = await launcher.alive()
    assert alive.key == k and alive.handle == result.handle
    assert alive.info["phase"] == "Running"


async def test_read_logs_follow(launcher: KubernetesLauncher) -> None:
    k = key()
    (result,) = await launcher.launch([sh(k, "for i in 1 2 3; do echo line $i; sleep 0.1; done")])
    await wait_started(launcher, k)
    lines = [line async for line in launcher.read_logs(k, result.handle, follow=True)]
    assert lines == ["line 1", "line 2", "line 3"]


# --- pure pieces: status translation, error mapping, back-off ------------------------------


def _pod(phase: str, state: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "annotations": pods.annotations_for(key())},
        "status": {
            "phase": phase,
            "containerStatuses": [{"name": "base", "state": state}],
            **status,
        },
    }


def test_observe_prefers_pod_reasons_and_main_container() -> None:
    from miniflow.launchers.kube_watch import observe

    term = {"terminated": {"exitCode": 143, "reason": "Error", "startedAt": "x"}}
    view = observe(_pod("Failed", term, reason="DeadlineExceeded", message="too long"))
    assert (view.exit_code, view.reason, view.message) == (143, "DeadlineExceeded", "too long")
    assert view.key == key() and view.started and view.terminal
    # a sidecar keeps the pod Running: the main container's end decides
    sidecar = _pod("Running", {"terminated": {"exitCode": 0, "reason": "Completed"}})
    assert observe(sidecar).terminal and observe(sidecar).exit_code == 0
    waiting = _pod("Pending", {"waiting": {"reason": "InvalidImageName", "message": "bad"}})
    assert (observe(waiting).stuck_reason, observe(waiting).started) == ("InvalidImageName", False)
    creating = _pod("Pending", {"waiting": {"reason": "ContainerCreating"}})
    assert observe(creating).stuck_reason is None
    assert observe({"metadata": {"name": "x"}}).key is None


def test_api_errors_map_to_the_hierarchy() -> None:
    from miniflow.errors import PermanentError, RetryableError
    from miniflow.launchers import kube_client as kc

    body = b'{"kind":"Status","message":"pods \\"x\\" already exists","reason":"AlreadyExists"}'
    err = kc._error_from(409, "Conflict", body, None)
    assert isinstance(err, kc.AlreadyExists) and isinstance(err, PermanentError)
    assert err.message == 'pods "x" already exists'
    throttled = kc._error_from(429, "TooManyRequests", b"{}", {"Retry-After": "2"})
    assert isinstance(throttled, kc.KubeRetryableError) and throttled.retry_after == 2.0
    assert isinstance(kc._error_from(503, "x", b"not json", None), RetryableError)
    assert isinstance(kc._error_from(410, "Gone", b"{}", None), kc.WatchExpired)
    for code in (400, 403, 422):
        assert isinstance(kc._error_from(code, "x", b"{}", None), kc.KubePermanentError)


async def test_with_retries_is_bounded_and_honours_retry_after() -> None:
    from miniflow.launchers import kube_client as kc

    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        raise kc.KubeRetryableError(429, "TooManyRequests", "slow down", retry_after=3)

    policy = RetryPolicy(attempts=3, base_delay=0.1, max_delay=5)
    with pytest.raises(kc.KubeRetryableError):
        await kc.with_retries(flaky, what="test", policy=policy, sleep=sleep)
    assert calls == 3 and delays == [3, 3]

    async def forbidden() -> str:
        raise kc.KubePermanentError(403, "Forbidden", "no")

    with pytest.raises(kc.KubePermanentError):
        await kc.with_retries(forbidden, what="test", policy=policy, sleep=sleep)
    assert len(delays) == 2


async def test_unreachable_api_server_is_one_clear_error(tmp_path: Any) -> None:
    from miniflow.errors import ServiceUnavailable

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        "clusters: [{name: gone, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "contexts: [{name: gone, context: {cluster: gone, user: u}}]\n"
        "users: [{name: u, user: {}}]\n"
    )
    launcher = KubernetesLauncher(
        defaults=DEFAULTS,
        kubeconfig=str(kubeconfig),
        start_timeout=1.0,
        retry=RetryPolicy(attempts=1, base_delay=0.01, max_delay=0.01),
    )
    with pytest.raises(ServiceUnavailable, match=r"127\.0\.0\.1:1 did not answer"):
        await launcher.start()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"the kubeconfig .* does not exist"),
        ("garbage: [\n", r"cannot load Kubernetes config .*: while parsing"),
        ("- just\n- a list\n", r"cannot load Kubernetes config"),
        ("apiVersion: v1\nkind: Config\n", r"cannot load Kubernetes config"),
    ],
)
async def test_a_bad_kubeconfig_is_one_clear_error(
    tmp_path: Any, content: str | None, message: str
) -> None:
    from miniflow.errors import ServiceUnavailable

    kubeconfig = tmp_path / "kubeconfig"
    if content is not None:
        kubeconfig.write_text(content)
    launcher = KubernetesLauncher(defaults=DEFAULTS, kubeconfig=str(kubeconfig))
    with pytest.raises(ServiceUnavailable, match=message) as caught:
        await launcher.start()
    assert "\n" not in str(caught.value)
