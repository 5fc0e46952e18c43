"""KubernetesLauncher against the fake Kubernetes API server (tests/fakekube).

The fake runs pod commands as local subprocesses, so pod tasks here use `sh`.
Nothing in the kubernetes client is patched: every request goes over HTTP to
the fake, whose request log lets us count requests per task.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from miniflow.authoring.serialized import PodSettings
from miniflow.launchers import pods
from miniflow.launchers.base import (
    AttemptExited,
    AttemptKey,
    AttemptStarted,
    LauncherEvent,
    TaskSpec,
)
from miniflow.launchers.kube_checks import NamespaceUnusable
from miniflow.launchers.kube_client import RetryPolicy
from miniflow.launchers.kubernetes import KubernetesLauncher

pytestmark = pytest.mark.timeout(60)

FakeKube = Any  # tests.fakekube.FakeKube; the fixture comes from tests/conftest.py
DEFAULTS = pods.PodDefaults(
    namespace="default", worker_image="miniflow:test", database_secret_name="miniflow-db"
)
DB_URL = "postgresql://miniflow@db/miniflow"  # only the start-up check's GET sees it
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
CONFIG_ERROR = "CreateContainerConfigError"
ROOT = "container has runAsNonRoot and image will run as root (pod: p, container: base)"


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
        secret = kw["defaults"].database_secret_name
        fake_kube.secrets.setdefault((kw["defaults"].namespace, secret), {"url": DB_URL})
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


def pod_finished_at(fake_kube: FakeKube, name: str) -> datetime:
    pod = fake_kube.state.get(name)
    assert pod is not None
    finished = pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    return datetime.fromisoformat(finished)


def creates(fake_kube: FakeKube) -> int:
    """Pod creates, not counting the start-up checks' dry runs (see test_namespace_checks)."""
    return sum(1 for r in fake_kube.requests.of("create") if not r.dry_run)


def with_database_secret(fake_kube: FakeKube, *namespaces: str) -> None:
    for namespace in namespaces:
        fake_kube.secrets[(namespace, DEFAULTS.database_secret_name)] = {"url": DB_URL}


def drain(launcher: KubernetesLauncher) -> list[LauncherEvent]:
    out = []
    while not launcher.events.empty():
        out.append(launcher.events.get_nowait())
    return out


# --- happy path -----------------------------------------------------------------------


async def idle(launcher: KubernetesLauncher) -> None:
    """Wait until the launcher has no exit, stuck-pod or cleanup work in flight."""
    await eventually(lambda: not launcher._tracker.background)


async def sweep(launcher: KubernetesLauncher) -> None:
    """One round of the launcher's periodic sweep, now, and the work it started."""
    launcher._tracker.sweep_once()
    await idle(launcher)


async def test_success_costs_create_log_delete(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    k = key()
    base = dict(fake_kube.requests.counts())
    (result,) = await launcher.launch([sh(k, "echo hello; echo world")])
    name = pods.pod_name(k)
    assert result.handle == name and result.error is None

    events = await events_until_exit(launcher, k)
    assert [type(e) for e in events] == [AttemptStarted, AttemptExited]
    exited = events[-1]
    assert isinstance(exited, AttemptExited)
    assert exited.exit_code == 0 and exited.reason == "Completed"
    assert exited.log_tail is not None and "hello\nworld" in exited.log_tail
    # The pod is the evidence of the exit until the scheduler has committed it.
    await idle(launcher)
    assert fake_kube.state.get(name) is not None
    assert fake_kube.requests.counts("delete") == 0
    await launcher.acknowledge([k])
    await eventually(lambda: fake_kube.state.get(name) is None)

    counts = fake_kube.requests.counts()
    assert counts["create"] - base["create"] == 1  # base: the start-up check's dry run
    assert counts["log"] - base.get("log", 0) == 1
    assert counts["delete"] - base.get("delete", 0) == 1
    assert not fake_kube.requests.of("get", "pods")  # status comes from the watch only
    assert counts["list"] == 1
    verbs = [r.verb for r in fake_kube.requests if r.name == name]
    assert verbs.index("log") < verbs.index("delete")  # logs survive cleanup


async def test_failure_keeps_pod_with_on_success_cleanup(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    assert (launcher.cleanup, launcher.keep_failed_for) == ("on_success", 3600)
    k = key()
    await launcher.launch([sh(k, "echo oops >&2; exit 3")])
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited)
    assert (exited.exit_code, exited.reason) == (3, "Error")
    assert exited.log_tail is not None and "oops" in exited.log_tail
    await launcher.acknowledge([k])
    await idle(launcher)
    await sweep(launcher)
    assert fake_kube.state.get(pods.pod_name(k)) is not None
    assert fake_kube.requests.counts("delete") == 0
    assert await launcher.alive() == []


@pytest.mark.parametrize("cleanup", ["on_success", "always"])
async def test_failed_pods_wait_for_acknowledgement_then_retention(
    make_launcher: MakeLauncher, fake_kube: FakeKube, cleanup: str
) -> None:
    launcher = await make_launcher(cleanup=cleanup, keep_failed_for=0.5)
    k = key()
    name = pods.pod_name(k)
    await launcher.launch([sh(k, "exit 1")])
    await events_until_exit(launcher, k)
    finished = pod_finished_at(fake_kube, name)
    # Retention is long over, but the exit has not been acknowledged: kept.
    await eventually(lambda: datetime.now(UTC) > finished + timedelta(seconds=1.5))
    await sweep(launcher)
    assert fake_kube.state.get(name) is not None
    await launcher.acknowledge([k])
    await eventually(lambda: fake_kube.state.get(name) is None)
    assert fake_kube.requests.counts("delete") == 1


async def test_kept_failed_pod_is_deleted_by_the_sweep_when_its_time_comes(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    launcher = await make_launcher(keep_failed_for=2.0)
    k = key()
    name = pods.pod_name(k)
    await launcher.launch([sh(k, "exit 1")])
    await events_until_exit(launcher, k)
    await launcher.acknowledge([k])
    await idle(launcher)
    finished = pod_finished_at(fake_kube, name)
    assert datetime.now(UTC) < finished + timedelta(seconds=2)  # still within retention
    assert fake_kube.state.get(name) is not None
    await eventually(lambda: fake_kube.state.get(name) is None)
    assert fake_kube.requests.counts("delete") == 1
    assert datetime.now(UTC) >= finished + timedelta(seconds=2)


async def test_retention_counts_from_the_finish_across_a_restart(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    first = await make_launcher(keep_failed_for=600)
    k = key()
    name = pods.pod_name(k)
    await first.launch([sh(k, "echo broken; exit 2")])
    await events_until_exit(first, k)
    await first.close()  # the scheduler died before committing (no acknowledgement)

    def finished_long_ago(pod: dict[str, Any]) -> None:
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        terminated["finishedAt"] = "2020-01-01T00:00:00Z"

    fake_kube.state.mutate(name, "default", finished_long_ago)
    second = await make_launcher(keep_failed_for=600)
    exited = (await events_until_exit(second, k))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 2
    assert exited.log_tail is not None and "broken" in exited.log_tail
    await second.acknowledge([k])
    # Finished years ago: the restarted launcher does not start a new 600 s.
    await eventually(lambda: fake_kube.state.get(name) is None)


async def test_exit_is_reported_again_by_a_restarted_launcher_until_acknowledged(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    first = await make_launcher()
    k = key()
    name = pods.pod_name(k)
    await first.launch([sh(k, "echo done")])
    exited = (await events_until_exit(first, k))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 0
    await idle(first)
    await first.close()  # killed between the event and its commit
    assert fake_kube.state.get(name) is not None

    second = await make_launcher()
    events = await events_until_exit(second, k)
    assert [type(e) for e in events] == [AttemptStarted, AttemptExited]
    again = events[-1]
    assert isinstance(again, AttemptExited)
    assert (again.exit_code, again.reason) == (0, "Completed")
    assert again.log_tail is not None and "done" in again.log_tail
    await second.acknowledge([k])
    await eventually(lambda: fake_kube.state.get(name) is None)
    assert creates(fake_kube) == 1


async def test_cleanup_never(make_launcher: MakeLauncher, fake_kube: FakeKube) -> None:
    launcher = await make_launcher(cleanup="never", keep_failed_for=0)
    k = key()
    await launcher.launch([sh(k, "true")])
    await events_until_exit(launcher, k)
    await launcher.acknowledge([k])
    await idle(launcher)
    await sweep(launcher)
    assert fake_kube.state.get(pods.pod_name(k)) is not None
    assert fake_kube.requests.counts("delete") == 0


async def test_many_tasks_concurrently(make_launcher: MakeLauncher, fake_kube: FakeKube) -> None:
    launcher = await make_launcher(max_concurrent_creates=4)
    keys = [key(f"t{i}") for i in range(12)]
    results = await launcher.launch([sh(k, f"exit {i % 2}") for i, k in enumerate(keys)])
    assert all(r.handle for r in results)
    exits = await all_exits(launcher, keys)
    assert [exits[k].exit_code for k in keys] == [i % 2 for i in range(len(keys))]
    assert creates(fake_kube) == 12
    assert fake_kube.requests.counts("log") == 12


# --- namespace checks -------------------------------------------------------------------------


async def start_fails(fake_kube: FakeKube, **kw: Any) -> NamespaceUnusable:
    launcher = KubernetesLauncher(
        kubeconfig=str(fake_kube.kubeconfig_path), defaults=DEFAULTS, retry=FAST_RETRY, **kw
    )
    try:
        with pytest.raises(NamespaceUnusable) as info:
            await launcher.start()
    finally:
        await launcher.close()
    assert fake_kube.state.pods() == []  # nothing was created
    assert "\n" not in str(info.value)
    return info.value


async def test_start_checks_the_namespace_once_without_creating_anything(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    (dry,) = fake_kube.requests.of("create")
    assert (dry.dry_run, dry.namespace, dry.status) == (True, "default", 201)
    (secret,) = fake_kube.requests.of("get")
    assert (secret.resource, secret.name, secret.status) == ("secrets", "miniflow-db", 200)
    assert fake_kube.state.pods() == [] and fake_kube.state.resource_version == 0
    k = key()
    await launcher.launch([sh(k, "true")])  # the check is per namespace, not per task
    await events_until_exit(launcher, k)
    assert len(fake_kube.requests.of("create")) == 2
    assert len(fake_kube.requests.of("get")) == 1
    assert not launcher.events.qsize()  # the dry-run pod never reached the watch


async def test_start_fails_on_a_namespace_that_does_not_exist(fake_kube: FakeKube) -> None:
    fake_kube.faults.remove_namespace("default")
    error = await start_fails(fake_kube)
    assert error.namespace == "default"
    assert str(error) == (
        "Kubernetes namespace 'default' cannot be used: "
        'it does not exist (namespaces "default" not found)'
    )


async def test_start_fails_when_rbac_forbids_creating_pods(fake_kube: FakeKube) -> None:
    fake_kube.faults.forbid("create", "default")
    error = await start_fails(fake_kube)
    assert str(error).startswith(
        "Kubernetes namespace 'default' cannot be used: the scheduler may not create pods "
        'there (pods is forbidden: User "system:serviceaccount:'
    )


async def test_start_fails_without_the_database_secret(fake_kube: FakeKube) -> None:
    error = await start_fails(fake_kube)  # no Secret registered in the fake
    assert str(error) == (
        "Kubernetes namespace 'default' cannot be used: the Secret 'miniflow-db' "
        "(MINIFLOW_DATABASE_SECRET) that worker pods read the database URL from (key 'url') "
        "does not exist there"
    )


async def test_secret_check_forbidden_or_quota_exceeded_only_warn(
    make_launcher: MakeLauncher, fake_kube: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    fake_kube.faults.forbid("get", "default", "secrets")
    fake_kube.faults.forbid_creates()  # an admission refusal: the state of the moment
    launcher = await make_launcher()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("exceeded quota" in w for w in warnings), warnings
    assert any("cannot check that the Secret miniflow-db" in w for w in warnings), warnings
    fake_kube.faults.forbid_creates(None)
    k = key()
    (result,) = await launcher.launch([sh(k, "true")])
    assert result.error is None


async def test_a_passing_api_failure_of_the_check_does_not_stop_the_start(
    make_launcher: MakeLauncher, fake_kube: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    """The list answered: a 500 burst on the dry run is checked again at the first launch."""
    fake_kube.faults.fail_next(FAST_RETRY.attempts + 1, code=500, verb="create", retry_after=0)
    launcher = await make_launcher()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("checking at the first launch" in w for w in warnings), warnings
    k = key()
    (result,) = await launcher.launch([sh(k, "true")])
    assert result.error is None
    dry_runs = [r for r in fake_kube.requests.of("create") if r.dry_run]
    assert dry_runs[-1].status == 201  # checked again, and passed, before the first pod


async def test_other_namespaces_are_checked_on_first_launch(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    fake_kube.faults.remove_namespace("ghost")
    a, b = key("a"), key("b")
    results = await launcher.launch(
        [sh(k, "true", pod=PodSettings(namespace="ghost")) for k in (a, b)]
    )
    for result in results:
        assert result.handle is None and not result.retryable
        assert result.error == (
            "Kubernetes namespace 'ghost' cannot be used: "
            'it does not exist (namespaces "ghost" not found)'
        )
    # One check for both launches, no pod create tried.
    ghost = [r for r in fake_kube.requests.of("create") if r.namespace == "ghost"]
    assert [r.dry_run for r in ghost] == [True]
    # A failed check is not remembered: the namespace and its Secret may appear.
    fake_kube.faults.add_namespace("ghost")
    with_database_secret(fake_kube, "ghost")
    (result,) = await launcher.launch([sh(a, "true", pod=PodSettings(namespace="ghost"))])
    assert result.handle == f"ghost/{pods.pod_name(a)}"
    await events_until_exit(launcher, a)
    (result,) = await launcher.launch([sh(b, "true", pod=PodSettings(namespace="ghost"))])
    assert result.error is None
    ghost = [r for r in fake_kube.requests.of("create") if r.namespace == "ghost"]
    assert [r.dry_run for r in ghost] == [True, True, False, False]


# --- create errors ------------------------------------------------------------------------


async def test_relaunch_adopts_on_409_and_never_creates_twice(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    k = key()
    spec = sh(k, "sleep 0.5")
    (first,) = await launcher.launch([spec])
    (second,) = await launcher.launch([spec])
    assert second.handle == first.handle and second.error is None
    assert len(fake_kube.state.pods()) == 1 and creates(fake_kube) == 2  # the second got 409
    events = await events_until_exit(launcher, k)
    assert [type(e) for e in events] == [AttemptStarted, AttemptExited]


async def test_forbidden_is_permanent_with_the_api_message(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    fake_kube.faults.forbid_creates("exceeded quota: compute-quota")
    (result,) = await launcher.launch([sh(key(), "true")])
    assert result.handle is None and not result.retryable
    assert result.error is not None and "exceeded quota: compute-quota" in result.error
    assert creates(fake_kube) == 1


async def test_invalid_pod_is_permanent_422(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    spec = sh(key(), "true", pod=PodSettings(labels={"team": "not valid!"}))
    (result,) = await launcher.launch([spec])
    assert result.handle is None and not result.retryable
    assert result.error and "is invalid" in result.error and "not valid!" in result.error
    assert creates(fake_kube) == 1


@pytest.mark.parametrize("code", [429, 500])
async def test_transient_errors_are_retried(
    launcher: KubernetesLauncher, fake_kube: FakeKube, code: int
) -> None:
    fake_kube.faults.fail_next(2, code=code, verb="create", retry_after=0)
    k = key()
    (result,) = await launcher.launch([sh(k, "true")])
    assert result.error is None and result.handle == pods.pod_name(k)
    assert creates(fake_kube) == 3
    await events_until_exit(launcher, k)


async def test_persistent_transient_errors_are_reported_retryable(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    fake_kube.faults.fail_next(100, code=503, verb="create", retry_after=0)
    (result,) = await launcher.launch([sh(key(), "true")])
    assert result.handle is None and result.retryable and result.error
    assert creates(fake_kube) == FAST_RETRY.attempts


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
    name = pods.pod_name(k)
    await eventually(lambda: b"eating memory" in fake_kube.kubelet.log(name).data)
    await fake_kube.faults.oom_kill(name)
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
    clock = [1000.0]  # the launcher's timers run on this clock, advanced by hand
    launcher = await make_launcher(pending_timeout=2.0, clock=lambda: clock[0])
    fake_kube.faults.image_pull_backoff()
    k = key()
    await launcher.launch([sh(k, "true")])
    tracked = launcher._tracker.tracked[("default", pods.pod_name(k))]
    await eventually(lambda: tracked.pending_since is not None)  # seen pending
    clock[0] += 1.9
    launcher._tracker.sweep_once()
    assert not tracked.exited  # pending for less than the timeout: left alone
    fake_kube.faults.clear_pod_faults()
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 0
    assert exited.reason != "ImagePullBackOff"


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
    watch = launcher._watches["default"].watch
    relists = watch.relists
    fake_kube.faults.expire_next_watch()
    fake_kube.faults.drop_watches()  # relist sees the same terminal pod again
    # Two relists applied (after the drop, after the 410), and any exit they began read.
    await eventually(lambda: watch.relists >= relists + 2)
    await idle(launcher)
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


async def test_relist_pages_through_the_pods(
    launcher: KubernetesLauncher, fake_kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    from miniflow.launchers import kube_client

    keys = [key(f"t{i}") for i in range(5)]
    await launcher.launch([sh(k, "sleep 30") for k in keys])
    monkeypatch.setattr(kube_client, "LIST_PAGE_SIZE", 2)
    lists = fake_kube.requests.counts("list")
    alive = await launcher.alive()  # a fresh list, 2 pods a page: a page lost = pods Lost
    assert sorted(a.key.task_id for a in alive) == [k.task_id for k in keys]
    assert fake_kube.requests.counts("list") == lists + 3
    await launcher.launch([sh(key("after"), "exit 3")])  # the watch resumed from the list
    exited = (await events_until_exit(launcher, key("after")))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 3


def test_an_unreadable_listed_pod_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    from miniflow.launchers.kube_watch import Listed, read_listed

    broken = {
        "metadata": {"name": "p", "namespace": "default"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": pods.MAIN_CONTAINER, "state": {"terminated": {"exitCode": "x"}}}
            ],
        },
    }
    assert read_listed(broken) == Listed("p", None)
    assert "cannot read the status of pod default/p" in caplog.text


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
    with_database_secret(fake_kube, "team-a")
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
    assert creates(fake_kube) == 1


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


# --- stuck pods, any reason ---------------------------------------------------------------


@pytest.mark.parametrize("reason", ["ContainerCreating", "PodInitializing", None])
async def test_any_pending_reason_fails_after_pending_timeout(
    make_launcher: MakeLauncher, fake_kube: FakeKube, reason: str | None
) -> None:
    launcher = await make_launcher(pending_timeout=0.5)
    if reason is None:
        fake_kube.faults.delay_start(60)  # Pending with no status at all
    else:
        fake_kube.faults.hold_waiting(None, reason)  # e.g. a volume that never mounts
    k = key()
    await launcher.launch([sh(k, "true")])
    (exited,) = await events_until_exit(launcher, k)
    assert isinstance(exited, AttemptExited) and exited.exit_code is None
    assert exited.reason == (reason or "Pending")
    assert exited.message == "still pending after 0.5s"
    await eventually(lambda: fake_kube.state.get(pods.pod_name(k)) is None)
    (delete,) = fake_kube.requests.of("delete")
    assert delete.query.get("gracePeriodSeconds") == "0"


async def test_a_stuck_pod_is_reported_only_once_its_delete_went_through(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    launcher = await make_launcher(pending_timeout=0.3)
    fake_kube.faults.hold_waiting(None, "ContainerCreating")
    fake_kube.faults.fail_next(FAST_RETRY.attempts, code=500, verb="delete")
    k = key()
    await launcher.launch([sh(k, "true")])
    (exited,) = await events_until_exit(launcher, k)
    assert isinstance(exited, AttemptExited) and exited.reason == "ContainerCreating"
    assert fake_kube.state.get(pods.pod_name(k)) is None  # gone before it was reported
    statuses = [r.status for r in fake_kube.requests.of("delete")]
    assert statuses == [500] * FAST_RETRY.attempts + [200]  # the sweep tried again


async def test_pending_is_not_judged_on_a_view_an_outage_left_stale(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    launcher = await make_launcher(pending_timeout=0.5)
    fake_kube.faults.hold_waiting(None, "ContainerCreating")
    k = key()
    name = pods.pod_name(k)
    await launcher.launch([sh(k, "echo ran")])
    await eventually(lambda: launcher._tracked[("default", name)].pending_reason is not None)
    await fake_kube.stop_serving()
    try:
        fake_kube.faults.clear_pod_faults()  # it starts and finishes while nobody looks
        await eventually(lambda: fake_kube.state.get(name)["status"]["phase"] == "Succeeded")
        since = launcher._tracked[("default", name)].pending_since
        assert since is not None
        await eventually(lambda: time.monotonic() - since > 1.0)
        await sweep(launcher)
        assert drain(launcher) == []
    finally:
        await fake_kube.resume_serving()
    events = await events_until_exit(launcher, k)
    assert [type(e) for e in events] == [AttemptStarted, AttemptExited]
    exited = events[-1]
    assert isinstance(exited, AttemptExited) and (exited.exit_code, exited.reason) == (
        0,
        "Completed",
    )


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("InvalidImageName", 'couldn\'t parse image reference "Bad Image": invalid reference'),
        ("CreateContainerConfigError", "Error: " + ROOT),
    ],
)
async def test_reasons_that_cannot_heal_fail_at_once(
    make_launcher: MakeLauncher, fake_kube: FakeKube, reason: str, message: str
) -> None:
    launcher = await make_launcher(pending_timeout=600)
    fake_kube.faults.hold_waiting(None, reason, message)
    k = key()
    await launcher.launch([sh(k, "true")])
    (exited,) = await events_until_exit(launcher, k, timeout=10)
    assert isinstance(exited, AttemptExited)
    assert (exited.exit_code, exited.reason, exited.message) == (None, reason, message)
    await eventually(lambda: fake_kube.state.get(pods.pod_name(k)) is None)


async def test_a_config_error_that_can_heal_waits(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    launcher = await make_launcher(pending_timeout=600)
    secret_env = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "k"}}}
    override = {"spec": {"containers": [{"name": "base", "env": [secret_env]}]}}
    k = key()
    await launcher.launch([sh(k, 'test "$TOKEN" = ok', pod=PodSettings(pod_override=override))])
    name = pods.pod_name(k)
    await eventually(lambda: launcher._tracked[("default", name)].pending_reason == CONFIG_ERROR)
    fake_kube.secrets[("default", "later")] = {"k": "ok"}  # the missing Secret appears
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 0


# --- supervision -----------------------------------------------------------------------------


async def test_a_malformed_watch_event_leads_to_a_relist(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    k = key()
    await launcher.launch([sh(k, "sleep 0.3")])
    await wait_started(launcher, k)
    lists = fake_kube.requests.counts("list")
    fake_kube.faults.corrupt_watch_events(1)  # the exit's event is lost in the stream
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 0
    assert fake_kube.requests.counts("list") > lists


async def test_a_crash_while_watching_is_logged_and_the_watch_restarted(
    launcher: KubernetesLauncher, fake_kube: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    k = key()
    await launcher.launch([sh(k, "sleep 0.3; exit 5")])
    await wait_started(launcher, k)
    lists = fake_kube.requests.counts("list")
    # Well-formed JSON, but a status no real API server sends: reading it raises.
    broken = {
        "type": "MODIFIED",
        "object": {
            "metadata": {"name": pods.pod_name(k), "annotations": pods.annotations_for(k)},
            "status": {
                "phase": "Failed",
                "containerStatuses": [{"name": "base", "state": {"terminated": {"exitCode": "?"}}}],
            },
        },
    }
    fake_kube.faults.corrupt_watch_events(1, json.dumps(broken).encode())
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 5
    assert fake_kube.requests.counts("list") > lists
    crashes = [r for r in caplog.records if "crashed; restarting" in r.getMessage()]
    assert crashes and crashes[0].exc_info is not None  # with its traceback


async def test_supervise_restarts_with_capped_exponential_backoff() -> None:
    from miniflow.launchers.supervise import Backoff, supervise

    delays: list[float] = []
    runs = 0

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 5:
            raise KeyError("status")
        await asyncio.Event().wait()  # healthy: runs until cancelled

    task = asyncio.create_task(
        supervise("test loop", flaky, backoff=Backoff(base=0.1, cap=0.5), sleep=sleep)
    )
    await eventually(lambda: runs == 6)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert delays == [0.1, 0.2, 0.4, 0.5, 0.5]


# --- kill grace period ------------------------------------------------------------------------

STUBBORN = "trap '' TERM; sleep 30"  # ignores SIGTERM, like a PID 1 without a handler


async def test_kill_uses_the_grace_period_and_force_kills_at_once(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    launcher = await make_launcher(kill_grace_period=20)
    k = key()
    (result,) = await launcher.launch([sh(k, STUBBORN)])
    await wait_started(launcher, k)
    pod = fake_kube.state.get(pods.pod_name(k))
    assert pod is not None and pod["spec"]["terminationGracePeriodSeconds"] == 20
    await launcher.kill(k, result.handle, reason="Timeout")
    await launcher.kill(k, result.handle, reason="Timeout", force=True)
    exited = (await events_until_exit(launcher, k, timeout=10))[-1]
    assert isinstance(exited, AttemptExited) and exited.reason == "Timeout"
    graces = [r.query.get("gracePeriodSeconds") for r in fake_kube.requests.of("delete")]
    assert graces == ["20", "0"]


async def test_a_timeout_ends_the_pod_after_the_kill_grace_period(
    make_launcher: MakeLauncher,
) -> None:
    launcher = await make_launcher(kill_grace_period=1)
    k = key()
    await launcher.launch([sh(k, STUBBORN, timeout=1)])
    # Kubernetes' default grace (30 s) would outlast this wait.
    exited = (await events_until_exit(launcher, k, timeout=15))[-1]
    assert isinstance(exited, AttemptExited) and exited.reason == "DeadlineExceeded"


# --- alive: a fresh look ----------------------------------------------------------------------


async def test_alive_reports_a_pod_that_vanished_unseen(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    k = key()
    await launcher.launch([sh(k, "sleep 30")])
    await wait_started(launcher, k)
    assert fake_kube.faults.stall_watches() == 1  # the stream goes silent, no error
    fake_kube.state.remove(pods.pod_name(k), "default")
    lists = fake_kube.requests.counts("list")
    assert await launcher.alive() == []
    assert fake_kube.requests.counts("list") == lists + 1
    (lost,) = drain(launcher)
    assert isinstance(lost, AttemptExited) and lost.key == k and lost.reason == "Lost"


async def test_a_pod_replaced_under_the_same_name_is_followed(
    make_launcher: MakeLauncher, fake_kube: FakeKube
) -> None:
    launcher = await make_launcher(cleanup="never")
    k = key()
    await launcher.launch([sh(k, "exit 1")])
    await events_until_exit(launcher, k)
    fake_kube.faults.stall_watches()  # the old pod's deletion goes unseen
    fake_kube.state.remove(pods.pod_name(k), "default")
    creates_before = creates(fake_kube)
    (again,) = await launcher.launch([sh(k, "echo second")])  # the same try, launched again
    assert again.error is None and creates(fake_kube) == creates_before + 1
    await launcher.alive()  # a fresh look; the watch resumes from it
    exited = (await events_until_exit(launcher, k))[-1]
    assert isinstance(exited, AttemptExited) and exited.exit_code == 0
    assert exited.log_tail is not None and "second" in exited.log_tail


async def test_alive_costs_one_list_per_namespace(
    launcher: KubernetesLauncher, fake_kube: FakeKube
) -> None:
    keys = [key(f"t{i}") for i in range(6)]
    specs = [sh(k, "sleep 30", pod=PodSettings(namespace=f"ns{i % 2}")) for i, k in enumerate(keys)]
    with_database_secret(fake_kube, "ns0", "ns1")
    await launcher.launch(specs)
    await eventually(lambda: len(fake_kube.state.pods()) == 6)
    before = fake_kube.requests.counts()
    alive = await launcher.alive()
    after = fake_kube.requests.counts()
    assert sorted(a.key.task_id for a in alive) == [k.task_id for k in keys]
    assert after["list"] - before["list"] == 3  # default, ns0, ns1: not one per pod
    assert not fake_kube.requests.of("get", "pods")


# --- wiring from the configuration --------------------------------------------------------------


def test_make_launcher_wires_grace_retention_and_worker_liveness_env() -> None:
    from miniflow.cli import wiring
    from miniflow.config import load_config

    config = load_config(
        environ={
            "MINIFLOW_LAUNCHER": "kubernetes",
            "MINIFLOW_DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1/db",
            "MINIFLOW_KILL_GRACE_PERIOD": "7",
            "MINIFLOW_HEARTBEAT_INTERVAL": "2",
            "MINIFLOW_ZOMBIE_THRESHOLD": "12",
        }
    )
    launcher = wiring.make_launcher(config)
    assert isinstance(launcher, KubernetesLauncher)
    assert launcher.kill_grace_period == 7 and launcher.grace_seconds == 7
    assert (launcher.cleanup, launcher.keep_failed_for) == ("on_success", 3600)
    manifest = pods.build_manifest(
        TaskSpec(key=key(), kind="bash", fileloc="d.py", bash_command="true"),
        launcher.defaults,
        grace_period=launcher.grace_seconds,
    )
    env = {e["name"]: e.get("value") for e in manifest["spec"]["containers"][0]["env"]}
    assert env["MINIFLOW_HEARTBEAT_INTERVAL"] == "2.0"
    assert env["MINIFLOW_ZOMBIE_THRESHOLD"] == "12.0"
    assert manifest["spec"]["terminationGracePeriodSeconds"] == 7


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
    assert observe({"metadata": {"name": "x"}}).key is None
    finished = {"terminated": {"exitCode": 1, "finishedAt": "2026-01-02T03:04:05Z"}}
    assert observe(_pod("Failed", finished)).finished_at == datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=UTC
    )


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/3 nodes are available",
}


@pytest.mark.parametrize(
    ("waiting", "conditions", "reason", "hopeless"),
    [
        ({"reason": "ContainerCreating"}, [], "ContainerCreating", False),
        ({"reason": "PodInitializing"}, [], "PodInitializing", False),
        ({"reason": "ImagePullBackOff", "message": "nope"}, [], "ImagePullBackOff", False),
        ({"reason": "InvalidImageName", "message": "bad"}, [], "InvalidImageName", True),
        ({"reason": CONFIG_ERROR, "message": ROOT}, [], CONFIG_ERROR, True),
        ({"reason": CONFIG_ERROR, "message": 'secret "s" not found'}, [], CONFIG_ERROR, False),
        (None, [UNSCHEDULABLE], "Unschedulable", False),
        (None, [], None, False),
    ],
)
def test_observe_pending_reasons(
    waiting: dict[str, str] | None, conditions: list[Any], reason: str | None, hopeless: bool
) -> None:
    from miniflow.launchers.kube_watch import observe

    pod = _pod("Pending", {"waiting": waiting} if waiting else {}, conditions=conditions)
    view = observe(pod)
    assert view.pending and not view.started and not view.terminal
    assert (view.pending_reason, view.hopeless) == (reason, hopeless)
    if waiting and "message" in waiting:
        assert view.pending_message == waiting["message"]


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


# --- MINIFLOW_WORKER_SERVICE_ACCOUNT ---------------------------------------------------------


async def test_worker_service_account_reaches_the_created_pods(fake_kube: FakeKube) -> None:
    from miniflow.cli import wiring
    from miniflow.config import load_config

    config = load_config(
        {
            "MINIFLOW_LAUNCHER": "kubernetes",
            "MINIFLOW_KUBECONFIG": str(fake_kube.kubeconfig_path),
            "MINIFLOW_WORKER_SERVICE_ACCOUNT": "miniflow-worker",
            "MINIFLOW_POD_CLEANUP": "never",
        }
    )
    fake_kube.secrets[("default", config.database_secret)] = {"url": DB_URL}
    launcher = wiring.make_launcher(config)
    assert isinstance(launcher, KubernetesLauncher)
    await launcher.start()
    try:
        plain, own = key("plain"), key("own")
        await launcher.launch(
            [sh(plain, "true"), sh(own, "true", pod=PodSettings(service_account="etl"))]
        )
        accounts = {
            k.task_id: fake_kube.state.get(pods.pod_name(k))["spec"]["serviceAccountName"]
            for k in (plain, own)
        }
        assert accounts == {"plain": "miniflow-worker", "own": "etl"}  # a task's own wins
        await all_exits(launcher, [plain, own])
    finally:
        await launcher.close()
