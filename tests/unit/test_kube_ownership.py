"""Ownership in KubernetesLauncher: several schedulers on one namespace of the fake cluster.

Each launcher is told its scheduler's id (`set_owner`), labels its pods with
it and watches only those. The fake API server records every request with its
User-Agent, which carries the owner, so each test can tell which launcher
touched which pod.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from miniflow.launchers import pods
from miniflow.launchers.base import AttemptExited, AttemptKey, AttemptStarted
from miniflow.launchers.kubernetes import KubernetesLauncher
from tests.unit.test_kubernetes_launcher import (
    DB_URL,
    DEFAULTS,
    FAST_RETRY,
    all_exits,
    drain,
    eventually,
    idle,
    sh,
)

pytestmark = pytest.mark.timeout(60)

FakeKube = Any  # tests.fakekube.FakeKube; the fixture comes from tests/conftest.py
A, B, C = "host-a-101-aaaaaa", "host-b-202-bbbbbb", "host-c-303-cccccc"
POD_VERBS = ("get", "log", "delete", "patch", "update")  # a create names no pod in its path

MakeOwned = Callable[..., Awaitable[KubernetesLauncher]]


@pytest.fixture
async def make_owned(fake_kube: FakeKube) -> AsyncIterator[MakeOwned]:
    """Factory: a started launcher owned by `owner` (None: never told an owner)."""
    started: list[KubernetesLauncher] = []
    fake_kube.secrets[(DEFAULTS.namespace, DEFAULTS.database_secret_name)] = {"url": DB_URL}

    async def make(owner: str | None, **kw: Any) -> KubernetesLauncher:
        kw.setdefault("retry", FAST_RETRY)
        launcher = KubernetesLauncher(
            defaults=DEFAULTS, kubeconfig=str(fake_kube.kubeconfig_path), **kw
        )
        if owner is not None:
            launcher.set_owner(owner)
        await launcher.start()
        started.append(launcher)
        return launcher

    try:
        yield make
    finally:
        for launcher in started:
            await launcher.close()


def key(run: str, task: str = "t", try_number: int = 1) -> AttemptKey:
    return AttemptKey("dag", run, task, try_number)


def requests_by(fake_kube: FakeKube, owner: str) -> list[Any]:
    return [r for r in fake_kube.requests if f"(scheduler {owner})" in r.user_agent]


def pod_requests(fake_kube: FakeKube, owner: str) -> Counter[tuple[str, str]]:
    """(verb, pod name) of the requests on one pod sent by `owner`'s launcher."""
    return Counter(
        (r.verb, str(r.name))
        for r in requests_by(fake_kube, owner)
        if r.resource == "pods" and r.verb in POD_VERBS and not r.dry_run
    )


def owner_label(fake_kube: FakeKube, name: str) -> str | None:
    pod = fake_kube.state.get(name)
    assert pod is not None, f"pod {name} is gone"
    return pods.owner_of(pod)


def gate(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A file and a script that runs until the file exists, then exits 0."""
    path = tmp_path / name
    return path, f"while [ ! -e {path} ]; do sleep 0.05; done; echo released"


async def started(launcher: KubernetesLauncher, k: AttemptKey) -> None:
    async with asyncio.timeout(20):
        while True:
            event = await launcher.events.get()
            if event.key == k and isinstance(event, AttemptStarted):
                return


async def exits_of(launcher: KubernetesLauncher, k: AttemptKey) -> AttemptExited:
    async with asyncio.timeout(20):
        while True:
            event = await launcher.events.get()
            if event.key == k and isinstance(event, AttemptExited):
                return event


# --- who follows what ---------------------------------------------------------------------


async def test_two_launchers_each_follow_only_their_own_pods(
    make_owned: MakeOwned, fake_kube: FakeKube
) -> None:
    first = await make_owned(A, keep_failed_for=0)
    second = await make_owned(B, keep_failed_for=0)
    mine = {
        A: [key("a", f"t{i}") for i in range(8)],
        B: [key("b", f"t{i}") for i in range(8)],
    }
    for launcher, owner in ((first, A), (second, B)):
        specs = [sh(k, f"echo {k.task_id}; exit {i % 2}") for i, k in enumerate(mine[owner])]
        results = await launcher.launch(specs)
        assert all(r.error is None for r in results)

    exits = {}
    for launcher, owner in ((first, A), (second, B)):
        exits[owner] = await all_exits(launcher, mine[owner])
        await launcher.acknowledge(mine[owner])
    names = {owner: {pods.pod_name(k) for k in keys} for owner, keys in mine.items()}
    await eventually(lambda: not fake_kube.state.pods())
    await idle(first)
    await idle(second)

    for launcher, owner in ((first, A), (second, B)):
        assert set(exits[owner]) == set(mine[owner])
        assert all(e.log_tail and e.key.task_id in e.log_tail for e in exits[owner].values())
        assert not [e for e in drain(launcher) if isinstance(e, AttemptExited)]
        # Every request naming a pod touched one of its own, exactly once per verb.
        touched = pod_requests(fake_kube, owner)
        assert {name for _, name in touched} == names[owner]
        assert all(n == 1 for n in touched.values()), touched
        assert sum(1 for verb, _ in touched if verb == "log") == 8
        assert sum(1 for verb, _ in touched if verb == "delete") == 8
        # Its lists and watches select its own pods.
        selects = [r for r in requests_by(fake_kube, owner) if r.verb in ("list", "watch")]
        assert selects and all(r.query["labelSelector"] == pods.selector(owner) for r in selects)
    assert not [r for r in fake_kube.requests if r.verb == "delete" and r.status == 404]
    created = [p for p in fake_kube.requests.of("create") if not p.dry_run]
    assert len(created) == 16 and all(r.status == 201 for r in created)
    assert not fake_kube.requests.of("patch")


async def test_pods_carry_their_owner_label_whatever_the_override(
    make_owned: MakeOwned, fake_kube: FakeKube
) -> None:
    launcher = await make_owned(A)
    k = key("a")
    override = {"metadata": {"labels": {pods.LABEL_OWNER: "someone-else", "team": "x"}}}
    await launcher.launch([sh(k, "sleep 30", pod={"pod_override": override})])
    labels = fake_kube.state.get(pods.pod_name(k))["metadata"]["labels"]
    assert labels[pods.LABEL_OWNER] == pods.label_value(A) and labels["team"] == "x"


async def test_a_launcher_without_owner_follows_every_miniflow_pod(
    make_owned: MakeOwned, fake_kube: FakeKube
) -> None:
    owned = await make_owned(A)
    k = key("a")
    await owned.launch([sh(k, "exit 0")])
    await exits_of(owned, k)
    anyone = await make_owned(None)  # e.g. a test harness driving the launcher directly
    seen = await exits_of(anyone, k)
    assert seen.exit_code == 0
    assert await anyone.take_over([A]) == 0
    assert not fake_kube.requests.of("patch")
    assert all(
        r.query["labelSelector"] == pods.selector()
        for r in fake_kube.requests
        if r.verb in ("list", "watch") and "(scheduler" not in r.user_agent
    )
    with pytest.raises(RuntimeError):
        owned.set_owner(B)  # only before start()


# --- adoption -----------------------------------------------------------------------------


async def test_adopting_a_peers_pod_patches_it_once_then_reports_its_exit_once(
    make_owned: MakeOwned, fake_kube: FakeKube, tmp_path: Path
) -> None:
    dead = await make_owned(A)
    k = key("a")
    name = pods.pod_name(k)
    release, script = gate(tmp_path, "release")
    (launched,) = await dead.launch([sh(k, script)])
    await started(dead, k)
    await dead.close()  # its scheduler died; the pod runs on

    adopter = await make_owned(B)
    assert await adopter.alive() == []  # not its pod (yet)
    await adopter.adopt([(k, launched.handle)])
    assert owner_label(fake_kube, name) == pods.label_value(B)
    assert pod_requests(fake_kube, B) == Counter({("patch", name): 1})
    assert [a.key for a in await adopter.alive()] == [k]

    await adopter.adopt([(k, launched.handle)])  # already its own: no second PATCH
    assert pod_requests(fake_kube, B)[("patch", name)] == 1

    release.touch()
    exited = await exits_of(adopter, k)
    assert (exited.exit_code, exited.reason) == (0, "Completed")
    assert exited.log_tail is not None and "released" in exited.log_tail
    await adopter.acknowledge([k])
    await eventually(lambda: fake_kube.state.get(name) is None)
    await idle(adopter)
    assert not [e for e in drain(adopter) if isinstance(e, AttemptExited)]
    assert pod_requests(fake_kube, B) == Counter(
        {("patch", name): 1, ("log", name): 1, ("delete", name): 1}
    )


async def test_adopting_a_pod_that_is_gone_reports_it_lost(
    make_owned: MakeOwned, fake_kube: FakeKube
) -> None:
    adopter = await make_owned(B)
    k = key("a")
    await adopter.adopt([(k, pods.pod_name(k))])
    exited = await exits_of(adopter, k)
    assert (exited.exit_code, exited.reason) == (None, "Lost")
    (patch,) = fake_kube.requests.of("patch")
    assert patch.status == 404


async def test_a_pod_handed_over_leaves_its_old_owner_silently(
    make_owned: MakeOwned, fake_kube: FakeKube, tmp_path: Path
) -> None:
    """A scheduler that was only slow finds its pod adopted: it stops following it,
    reports nothing for it and never touches it again."""
    slow = await make_owned(A)
    k = key("a")
    name = pods.pod_name(k)
    release, script = gate(tmp_path, "release")
    (launched,) = await slow.launch([sh(k, script)])
    await started(slow, k)

    adopter = await make_owned(B)
    await adopter.adopt([(k, launched.handle)])
    # The old owner's watch sees the pod leave its selection: one GET tells it the pod
    # was handed over, not deleted.
    await eventually(lambda: ("get", name) in pod_requests(fake_kube, A))
    await idle(slow)
    assert await slow.alive() == []

    release.touch()
    await exits_of(adopter, k)
    await adopter.acknowledge([k])
    await eventually(lambda: fake_kube.state.get(name) is None)
    await idle(slow)
    assert not [e for e in drain(slow) if e.key == k]
    assert pod_requests(fake_kube, A) == Counter({("get", name): 1})


async def test_a_pod_deleted_behind_an_owners_back_is_still_reported(
    make_owned: MakeOwned, fake_kube: FakeKube
) -> None:
    launcher = await make_owned(A)
    k = key("a")
    await launcher.launch([sh(k, "sleep 30")])
    await started(launcher, k)
    fake_kube.state.remove(pods.pod_name(k))
    exited = await exits_of(launcher, k)
    assert exited.reason == "Deleted"


# --- taking over what the dead left -------------------------------------------------------


async def test_take_over_relabels_a_dead_owners_leftovers_once(
    make_owned: MakeOwned, fake_kube: FakeKube, tmp_path: Path
) -> None:
    dead = await make_owned(A, keep_failed_for=3600)
    failed, stray = key("a", "failed"), key("a", "stray")
    _, script = gate(tmp_path, "release")
    await dead.launch([sh(failed, "echo broken; exit 3"), sh(stray, script)])
    await exits_of(dead, failed)
    await dead.acknowledge([failed])  # committed; the failed pod is kept for an hour
    await eventually(lambda: any(a.key == stray for a in dead._tracked.values() if a.started))
    await dead.close()

    mine = key("b")
    heir = await make_owned(B, keep_failed_for=0)
    await heir.launch([sh(mine, "sleep 30")])  # its own pod: never patched
    assert await heir.take_over([A, C]) == 2
    patched = Counter(name for verb, name in pod_requests(fake_kube, B) if verb == "patch")
    assert patched == Counter({pods.pod_name(failed): 1, pods.pod_name(stray): 1})
    for k in (failed, stray):
        assert owner_label(fake_kube, pods.pod_name(k)) == pods.label_value(B)
    assert {a.key for a in await heir.alive()} == {mine, stray}  # the stray: an orphan now

    # The kept failed pod is reported to its new owner, then cleaned up by its policy.
    exited = await exits_of(heir, failed)
    assert exited.exit_code == 3
    await heir.acknowledge([failed])
    await eventually(lambda: fake_kube.state.get(pods.pod_name(failed)) is None)

    assert await heir.take_over([A]) == 0  # nothing of A's is left
    assert len(fake_kube.requests.of("patch")) == 2


async def test_take_over_of_no_owner_takes_pods_launched_before_owners(
    make_owned: MakeOwned, fake_kube: FakeKube
) -> None:
    old = await make_owned(None)  # as an older miniflow: no owner label
    k = key("old")
    await old.launch([sh(k, "sleep 30")])
    await old.close()
    heir = await make_owned(B)
    assert await heir.take_over([A]) == 0
    assert await heir.take_over([""]) == 1
    assert owner_label(fake_kube, pods.pod_name(k)) == pods.label_value(B)
    assert [a.key for a in await heir.alive()] == [k]


async def test_two_survivors_taking_over_one_dead_owner_share_its_pods(
    make_owned: MakeOwned, fake_kube: FakeKube
) -> None:
    dead = await make_owned(A)
    keys = [key("a", f"t{i}") for i in range(6)]
    await dead.launch([sh(k, "sleep 30") for k in keys])
    await eventually(lambda: len(fake_kube.state.pods()) == 6)
    await dead.close()

    first, second = await make_owned(B), await make_owned(C)
    taken = await asyncio.gather(first.take_over([A]), second.take_over([A]))
    assert sum(taken) == 6
    ok = [r for r in fake_kube.requests.of("patch") if r.status == 200]
    assert Counter(r.name for r in ok) == Counter({pods.pod_name(k): 1 for k in keys})
    refused = [r for r in fake_kube.requests.of("patch") if r.status != 200]
    assert all(r.status == 422 for r in refused)  # the loser's conditional patch
    followed = {a.key for a in await first.alive()} | {a.key for a in await second.alive()}
    assert followed == set(keys)
    assert not {a.key for a in await first.alive()} & {a.key for a in await second.alive()}
