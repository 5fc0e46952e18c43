"""LocalLauncher with real processes: bash, pod and python kinds, kill, adopt, logs.

Launchers default to `python_mode="exec"` here: only the tests of forked Python
attempts pay for booting a forkserver.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import local_launcher_entry
import pytest

from miniflow.errors import NotFound, StateDirError
from miniflow.launchers import local_fork, local_procs
from miniflow.launchers.base import AttemptExited, AttemptKey, AttemptStarted, TaskSpec
from miniflow.launchers.local import INLINE_LAUNCHES, NO_ENTRYPOINT_MESSAGE, LocalLauncher

ENTRY = f"{local_launcher_entry.__name__}:main"
WAIT = 15.0

Factory = Callable[..., Awaitable[LocalLauncher]]


@pytest.fixture
async def make_launcher(tmp_path: Path) -> AsyncIterator[Factory]:
    launchers: list[LocalLauncher] = []

    async def make(**kwargs: Any) -> LocalLauncher:
        options: dict[str, Any] = {
            "state_dir": tmp_path / "state",
            "dags_folder": tmp_path / "dags",
            "worker_env": {"MINIFLOW_DATABASE_URL": "sqlite:///x.db"},
            "grace_period": 0.5,
            "python_entry": ENTRY,
            "python_mode": "exec",
        }
        options.update(kwargs)
        launcher = LocalLauncher(**options)
        await launcher.start()
        launchers.append(launcher)
        return launcher

    yield make
    for launcher in launchers:
        await launcher.shutdown_all()
        await launcher.close()


def key(task: str = "t", try_number: int = 1) -> AttemptKey:
    return AttemptKey("dag", "manual__2024-01-01T00:00:00+00:00", task, try_number)


def bash(command: str, task: str = "t", **kwargs: Any) -> TaskSpec:
    return TaskSpec(key=key(task), kind="bash", fileloc="d.py", bash_command=command, **kwargs)


async def next_event(launcher: LocalLauncher) -> AttemptStarted | AttemptExited:
    return await asyncio.wait_for(launcher.events.get(), WAIT)


async def exited(launcher: LocalLauncher, k: AttemptKey | None = None) -> AttemptExited:
    """The next exit event (of `k`), skipping start events."""
    while True:
        event = await next_event(launcher)
        if isinstance(event, AttemptExited) and (k is None or event.key == k):
            return event


async def wait_line(launcher: LocalLauncher, k: AttemptKey, text: str) -> None:
    """Follow the log until a line contains `text` (the attempt is then running)."""

    async def scan() -> None:
        async for line in launcher.read_logs(k, None, follow=True):
            if text in line:
                return
        raise AssertionError(f"{text!r} never logged")

    await asyncio.wait_for(scan(), WAIT)


# -- bash ---------------------------------------------------------------------------------


async def test_bash_success_logs_and_tail(make_launcher: Factory, tmp_path: Path) -> None:
    launcher = await make_launcher()
    [result] = await launcher.launch([bash("echo out; echo err >&2")])
    assert result.error is None and result.handle and result.handle.startswith("pid:")
    started = await next_event(launcher)
    assert isinstance(started, AttemptStarted) and started.handle == result.handle
    event = await exited(launcher)
    assert (event.exit_code, event.reason, event.handle) == (0, "Completed", result.handle)
    assert event.log_tail == "out\nerr"
    log = tmp_path / "state/logs/dag/manual__2024-01-01T00:00:00+00:00/t/1.log"
    assert log.read_text() == "out\nerr\n"
    assert (log.parent / "1.exit").read_text() == "0"
    assert (log.parent / "1.launch").exists()


async def test_bash_failure_exit_code(make_launcher: Factory) -> None:
    launcher = await make_launcher()
    await launcher.launch([bash("echo failing; exit 3")])
    event = await exited(launcher)
    assert (event.exit_code, event.reason) == (3, "Error")
    assert event.log_tail == "failing"


async def test_log_tail_is_bounded(make_launcher: Factory) -> None:
    launcher = await make_launcher()
    await launcher.launch([bash("seq 1 500")])
    event = await exited(launcher)
    assert event.log_tail is not None
    assert event.log_tail.splitlines() == [str(i) for i in range(401, 501)]


async def test_env_is_passed(make_launcher: Factory) -> None:
    launcher = await make_launcher()
    cmd = 'echo "$GREETING|${PATH:+path}"'  # spec.env on top of os.environ
    await launcher.launch([bash(cmd, env={"GREETING": "hi there"})])
    event = await exited(launcher)
    assert event.log_tail == "hi there|path"


async def test_miniflow_settings_are_not_passed_to_commands(
    make_launcher: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIFLOW_DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("MINIFLOW_CONFIG", "/etc/miniflow.toml")
    monkeypatch.setenv("HOST_SETTING", "kept")
    launcher = await make_launcher()
    spec = bash("env | sort", env={"MINIFLOW_OWN": "the task's own"})
    await launcher.launch([spec])
    event = await exited(launcher)
    assert event.exit_code == 0 and event.log_tail is not None
    assert "hunter2" not in event.log_tail and "MINIFLOW_CONFIG" not in event.log_tail
    assert "HOST_SETTING=kept" in event.log_tail.splitlines()
    assert "MINIFLOW_OWN=the task's own" in event.log_tail.splitlines()


async def test_python_task_gets_only_the_worker_settings(
    make_launcher: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIFLOW_CONFIG", "/etc/miniflow.toml")
    launcher = await make_launcher(python_mode="fork")
    await launcher.launch([TaskSpec(key=key(), kind="python", fileloc="d.py", env=SHOW_ENV)])
    event = await exited(launcher)
    assert event.exit_code == 0, event.log_tail
    assert "entry env: MINIFLOW_DAGS_FOLDER MINIFLOW_DATABASE_URL" in (event.log_tail or "")


SHOW_ENV = {"ENTRY_SHOW_ENV": "1"}


async def test_signal_exit_code_is_128_plus_n(make_launcher: Factory) -> None:
    launcher = await make_launcher()
    await launcher.launch([bash("kill -KILL $$")])
    event = await exited(launcher)
    assert (event.exit_code, event.reason) == (137, "Error")


async def test_timeout(make_launcher: Factory) -> None:
    launcher = await make_launcher()
    await launcher.launch([bash("sleep 30", timeout=0.2)])
    event = await exited(launcher)
    assert (event.exit_code, event.reason) == (143, "Timeout")
    assert event.message and "timed out" in event.message


async def test_kill_stops_the_whole_process_group(make_launcher: Factory, tmp_path: Path) -> None:
    launcher = await make_launcher()
    child_file = tmp_path / "child.pid"
    [result] = await launcher.launch([bash(f"sleep 60 & echo $! > {child_file}; echo ready; wait")])
    await wait_line(launcher, key(), "ready")
    child = int(child_file.read_text())
    await launcher.kill(key(), result.handle, reason="zombie task")
    event = await exited(launcher)
    assert (event.reason, event.message, event.exit_code) == ("Killed", "zombie task", 143)
    assert await _gone(child)
    assert await launcher.alive() == []


async def test_kill_escalates_to_sigkill(make_launcher: Factory) -> None:
    launcher = await make_launcher(grace_period=0.2)
    command = "trap '' TERM; echo ready; while :; do sleep 0.05; done"
    [result] = await launcher.launch([bash(command)])
    await wait_line(launcher, key(), "ready")
    await launcher.kill(key(), result.handle, reason="stop")
    event = await exited(launcher)
    assert (event.reason, event.exit_code) == ("Killed", 137)


async def test_force_kill_does_not_wait_for_the_grace_period(make_launcher: Factory) -> None:
    launcher = await make_launcher(grace_period=60)
    [result] = await launcher.launch([bash("trap '' TERM; echo ready; sleep 60")])
    await wait_line(launcher, key(), "ready")
    began = time.monotonic()
    await launcher.kill(key(), result.handle, reason="sanity: zombie", force=True)
    event = await exited(launcher)  # within WAIT (15 s), far below the 60 s grace period
    assert (event.reason, event.message, event.exit_code) == ("Killed", "sanity: zombie", 137)
    assert time.monotonic() - began < 60


@pytest.mark.parametrize("force", [False, True])
async def test_kill_reaches_a_stopped_process_group(make_launcher: Factory, force: bool) -> None:
    launcher = await make_launcher(grace_period=0.5)
    [result] = await launcher.launch([bash("echo ready; kill -STOP 0; echo continued")])
    await wait_line(launcher, key(), "ready")
    pid = int((result.handle or "").partition(":")[2])
    await _until(lambda: (local_procs.proc_stat(pid) or ("",))[0] == "T", "the group to stop")
    await launcher.kill(key(), result.handle, reason="stop it", force=force)
    event = await exited(launcher)
    assert (event.reason, event.message) == ("Killed", "stop it")
    assert event.exit_code == (137 if force else 143)
    assert await _gone(pid)


async def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_kill_gives_the_command_its_grace_period(make_launcher: Factory) -> None:
    launcher = await make_launcher(grace_period=10)
    command = "trap 'sleep 0.2; echo cleaned; exit 9' TERM; echo ready; sleep 30 & wait"
    [result] = await launcher.launch([bash(command)])
    await wait_line(launcher, key(), "ready")
    await launcher.kill(key(), result.handle, reason="stop")
    event = await exited(launcher)
    assert (event.reason, event.exit_code, event.log_tail) == ("Killed", 9, "ready\ncleaned")
    paths = local_procs.AttemptPaths.of(launcher.state_dir, key())
    assert paths.exit.read_text() == "9"  # recorded by the wrapper itself


async def test_leftover_background_processes_are_killed_at_exit(
    make_launcher: Factory, tmp_path: Path
) -> None:
    launcher = await make_launcher()
    child_file = tmp_path / "child.pid"
    await launcher.launch([bash(f"sleep 60 & echo $! > {child_file}")])
    event = await exited(launcher)
    assert event.exit_code == 0
    assert await _gone(int(child_file.read_text()))


async def _gone(pid: int) -> bool:
    """True once the pid has disappeared or is a zombie (bounded wait: not ours to reap)."""
    for _ in range(200):
        stat = local_procs.proc_stat(pid)
        if stat is None or stat[0] == "Z":
            return True
        await asyncio.sleep(0.025)
    return False


# -- pod ----------------------------------------------------------------------------------


async def test_pod_runs_command_and_args_warns_once(
    make_launcher: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    launcher = await make_launcher()
    caplog.set_level(logging.WARNING, logger="miniflow.launchers.local")
    specs = [
        TaskSpec(
            key=key(f"p{i}"),
            kind="pod",
            fileloc="d.py",
            image="alpine:3",
            cmds=["sh", "-c"],
            args=['echo "pod $0 $1"', "a b", "c"],
        )
        for i in range(2)
    ]
    await launcher.launch(specs)
    for _ in specs:
        event = await exited(launcher)
        assert (event.exit_code, event.log_tail) == (0, "pod a b c")
    warnings = [r for r in caplog.records if r.name == "miniflow.launchers.local"]
    assert len(warnings) == 1 and "ignored" in warnings[0].getMessage()


async def test_pod_without_command_fails(make_launcher: Factory) -> None:
    launcher = await make_launcher()
    spec = TaskSpec(key=key(), kind="pod", fileloc="d.py", image="alpine:3", args=["x"])
    [result] = await launcher.launch([spec])
    assert result.handle is None and result.error == NO_ENTRYPOINT_MESSAGE
    event = await exited(launcher)
    assert (event.reason, event.message, event.exit_code) == ("Error", NO_ENTRYPOINT_MESSAGE, None)


# -- python -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fork", "exec"])
async def test_python_task(make_launcher: Factory, mode: str) -> None:
    env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    launcher = await make_launcher(python_mode=mode, worker_env=env)
    assert launcher.python_mode == mode
    spec = TaskSpec(
        key=key(), kind="python", fileloc="d.py", env={"ENTRY_CODE": "7", "ENTRY_MARK": mode}
    )
    [result] = await launcher.launch([spec])
    assert result.error is None
    event = await exited(launcher)
    assert (event.exit_code, event.reason) == (7, "Error")
    assert event.log_tail is not None
    assert f"entry argv: run --dag-id dag --run-id {key().run_id} --task-id t --try 1" in (
        event.log_tail
    )
    assert f"entry mark: {mode}" in event.log_tail


def test_forkserver_calls_its_prefork_hook_before_each_fork(tmp_path: Path) -> None:
    # What the hook builds in the server (the worker's engine, in production) is there,
    # already built, in every child forked after it.
    name = local_launcher_entry.__name__
    server = local_fork.ForkServer(
        [name], env=dict(os.environ), sys_path=sys.path, prefork=f"{name}:prefork"
    )
    server.start()
    try:
        for mark, expected in (("a", "a"), ("b", "a b")):
            go_r, go_w = os.pipe()
            log_path = tmp_path / f"{mark}.log"
            _pid, done = server.fork(
                ENTRY,
                [],
                log_path=str(log_path),
                exit_path=str(tmp_path / f"{mark}.exit"),
                env={"ENTRY_MARK": mark, "ENTRY_SHOW_PREFORK": "1"},
                go_fd=go_r,
            )
            os.close(go_r)
            os.write(go_w, b"\n")
            os.close(go_w)
            assert os.read(done, 1) == b""  # EOF: the exit code is on disk
            os.close(done)
            assert f"entry preforked: {expected}\n" in log_path.read_text()
    finally:
        server.close()


def test_forkserver_calls_its_prefork_hook_at_boot_before_forking_its_relay(
    tmp_path: Path,
) -> None:
    # The launcher passes the workers' environment at boot: the workers' engine is
    # prepared before the first launch, and the relay process inherits it as well.
    name = local_launcher_entry.__name__
    server = local_fork.ForkServer(
        [name],
        env=dict(os.environ),
        sys_path=sys.path,
        prefork=f"{name}:prefork",
        boot_env={"ENTRY_MARK": "boot"},
        relay=f"{name}:echo",
    )
    server.start()
    try:
        _pid, done, go = _fork_waiting(
            server,
            tmp_path,
            "a",
            {"ENTRY_MARK": "a", "ENTRY_SHOW_PREFORK": "1", "ENTRY_ASK_RELAY": "1"},
        )
        os.write(go, b"\n")
        os.close(go)
        assert os.read(done, 1) == b""  # EOF: the exit code is on disk
        os.close(done)
        log = (tmp_path / "a.log").read_text()
        assert "entry preforked: boot a\n" in log
        assert "entry relay preforked: boot\n" in log
    finally:
        server.close()


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _fork_waiting(
    server: local_fork.ForkServer, tmp_path: Path, mark: str, env: dict[str, str]
) -> tuple[int, int, int]:
    """(pid, done pipe, go pipe's write end) of an attempt forked and not let go yet."""
    go_r, go_w = os.pipe()
    pid, done = server.fork(
        ENTRY,
        [],
        log_path=str(tmp_path / f"{mark}.log"),
        exit_path=str(tmp_path / f"{mark}.exit"),
        env=env,
        go_fd=go_r,
    )
    os.close(go_r)
    return pid, done, go_w


def test_a_relay_process_that_ended_is_replaced_holding_no_attempts_pipe(
    tmp_path: Path,
) -> None:
    """The relay is killed while attempt a runs; the next fork (b) starts another relay.
    That one, forked from the server while a runs, must not hold a's done pipe: a's exit
    is seen (EOF) as soon as the server reaps it."""
    name = local_launcher_entry.__name__
    server = local_fork.ForkServer(
        [name],
        env=dict(os.environ),
        sys_path=sys.path,
        relay=f"{name}:echo",
        relay_restart_interval=0.0,
    )
    server.start()
    assert server.pid is not None
    try:
        (relay,) = _children(server.pid)
        release = tmp_path / "release"
        a, a_done, a_go = _fork_waiting(server, tmp_path, "a", {"ENTRY_WAIT_FOR": str(release)})
        os.write(a_go, b"\n")
        os.close(a_go)
        os.kill(relay, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while relay in _children(server.pid):  # reaped by the server on its SIGCHLD
            assert time.monotonic() < deadline, "the killed relay was not reaped"
            time.sleep(0.01)
        b, b_done, b_go = _fork_waiting(server, tmp_path, "b", {})
        os.close(b_go)  # EOF: b exits without running anything
        assert os.read(b_done, 1) == b""
        os.close(b_done)
        (successor,) = _children(server.pid) - {a, b}
        assert successor != relay
        release.touch()
        ready, _, _ = select.select([a_done], [], [], 10)
        assert ready, "a's done pipe never reached EOF"
        assert os.read(a_done, 1) == b""
        os.close(a_done)
        assert (tmp_path / "a.exit").read_text() == "0"
    finally:
        server.close()


async def test_python_fork_kill(make_launcher: Factory, tmp_path: Path) -> None:
    launcher = await make_launcher(python_mode="fork")
    spec = TaskSpec(
        key=key(), kind="python", fileloc="d.py", env={"ENTRY_WAIT_FOR": str(tmp_path / "never")}
    )
    [result] = await launcher.launch([spec])
    await wait_line(launcher, key(), "entry waiting")
    await launcher.kill(key(), result.handle, reason="stop")
    event = await exited(launcher)
    assert (event.reason, event.exit_code) == ("Killed", 143)


async def test_forked_attempt_force_killed_reports_137(
    make_launcher: Factory, tmp_path: Path
) -> None:
    launcher = await make_launcher(python_mode="fork", grace_period=60)
    spec = TaskSpec(
        key=key(), kind="python", fileloc="d.py", env={"ENTRY_WAIT_FOR": str(tmp_path / "never")}
    )
    [result] = await launcher.launch([spec])
    await wait_line(launcher, key(), "entry waiting")
    await launcher.kill(key(), result.handle, reason="zombie", force=True)
    event = await exited(launcher)  # the wrapper died too: no exit file, yet a code
    assert (event.reason, event.exit_code) == ("Killed", 137)


async def test_forked_attempt_killed_by_a_signal_reports_128_plus_n(
    make_launcher: Factory, tmp_path: Path
) -> None:
    launcher = await make_launcher(python_mode="fork")
    spec = TaskSpec(
        key=key(), kind="python", fileloc="d.py", env={"ENTRY_WAIT_FOR": str(tmp_path / "never")}
    )
    [result] = await launcher.launch([spec])
    await wait_line(launcher, key(), "entry waiting")
    os.kill(int((result.handle or "").partition(":")[2]), signal.SIGSEGV)
    event = await exited(launcher)
    assert (event.exit_code, event.reason) == (139, "Error")
    # recorded by the forkserver, which reaped it (the attempt itself could not)
    assert local_procs.AttemptPaths.of(launcher.state_dir, key()).exit.read_text() == "139"


async def test_forked_attempts_outlive_the_launcher_and_its_forkserver(
    make_launcher: Factory, tmp_path: Path
) -> None:
    first = await make_launcher(python_mode="fork")
    server = first._forkserver
    assert server is not None and server.pid is not None
    server_pid = server.pid
    go = tmp_path / "go"
    env = {"ENTRY_WAIT_FOR": str(go), "ENTRY_CODE": "6"}
    [result] = await first.launch([TaskSpec(key=key(), kind="python", fileloc="d.py", env=env)])
    await wait_line(first, key(), "entry waiting")
    await first.close()
    assert local_procs.proc_stat(server_pid) is None  # the forkserver left (and was reaped)
    pid = int((result.handle or "").partition(":")[2])
    assert local_procs.proc_stat(pid) is not None  # the attempt did not

    second = await make_launcher()  # adopts it from the live index, at start
    started = await next_event(second)
    assert isinstance(started, AttemptStarted) and started.handle == result.handle
    go.touch()
    event = await exited(second)
    assert (event.key, event.exit_code, event.reason) == (key(), 6, "Error")


async def test_a_dead_forkserver_falls_back_to_exec(make_launcher: Factory, tmp_path: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # for exec mode
    launcher = await make_launcher(python_mode="fork", worker_env=env)
    go = tmp_path / "go"
    waiting = TaskSpec(
        key=key("waiting"),
        kind="python",
        fileloc="d.py",
        env={"ENTRY_WAIT_FOR": str(go), "ENTRY_CODE": "4"},
    )
    await launcher.launch([waiting])
    await wait_line(launcher, waiting.key, "entry waiting")
    server = launcher._forkserver
    assert server is not None and server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    # Its done pipes end with it; the attempt that runs on is followed by its pid.
    spec = TaskSpec(key=key(), kind="python", fileloc="d.py", env={"ENTRY_MARK": "after"})
    [result] = await launcher.launch([spec])
    assert result.error is None and launcher.python_mode == "exec"
    event = await exited(launcher, spec.key)
    assert event.exit_code == 0 and "entry mark: after" in (event.log_tail or "")
    assert [a.key for a in await launcher.alive()] == [waiting.key]
    go.touch()
    assert (await exited(launcher, waiting.key)).exit_code == 4


async def test_missing_worker_falls_back_to_exec(make_launcher: Factory) -> None:
    launcher = await make_launcher(python_entry="no_such_module_xyz:main", python_mode="fork")
    assert launcher.python_mode == "exec"


# -- idempotence, adoption ----------------------------------------------------------------


async def test_launch_is_idempotent(make_launcher: Factory, tmp_path: Path) -> None:
    launcher = await make_launcher()
    go = tmp_path / "go"
    spec = bash(f"echo run; while [ ! -e {go} ]; do sleep 0.02; done")
    first, second = await launcher.launch([spec, spec])
    [third] = await launcher.launch([spec])
    assert first.handle == second.handle == third.handle
    alive = await launcher.alive()
    assert [(a.key, a.handle) for a in alive] == [(key(), first.handle)]
    go.touch()
    event = await exited(launcher)
    assert event.exit_code == 0 and event.log_tail == "run"
    # Finished and launched again: still adopted (the marker), never re-run, and its
    # exit not reported twice before the scheduler acknowledged it...
    [again] = await launcher.launch([spec])
    assert again.handle == first.handle
    assert launcher.events.empty()
    # ...after that (its exit committed), a launch of the same try is a new one: the
    # scheduler launches a try again only when it never started
    await launcher.acknowledge([key()])
    [later] = await launcher.launch([bash("echo again")])
    assert later.handle != first.handle
    event = await exited(launcher)
    assert (event.exit_code, event.log_tail) == (0, "run\nagain")  # the log goes on
    assert await launcher.alive() == []


async def test_adopt_after_restart(make_launcher: Factory, tmp_path: Path) -> None:
    first = await make_launcher()
    go = tmp_path / "go"
    running = bash(f"echo ready; while [ ! -e {go} ]; do sleep 0.02; done; exit 5", task="run")
    finished = bash("exit 4", task="done")
    results = await first.launch([running, finished])
    assert (await exited(first, finished.key)).exit_code == 4
    await wait_line(first, running.key, "ready")
    await first.close()

    second = await make_launcher()
    unknown = key("unknown")
    await second.adopt(
        [(running.key, results[0].handle), (finished.key, results[1].handle), (unknown, None)]
    )
    events = [await next_event(second) for _ in range(3)]
    by_key = {(e.key, e.kind): e for e in events}
    started = by_key[(running.key, "started")]
    assert started.handle == results[0].handle
    done = by_key[(finished.key, "exited")]
    assert isinstance(done, AttemptExited) and (done.exit_code, done.reason) == (4, "Error")
    lost = by_key[(unknown, "exited")]
    assert isinstance(lost, AttemptExited) and (lost.exit_code, lost.reason) == (None, "Lost")
    assert [a.key for a in await second.alive()] == [running.key]

    go.touch()
    event = await exited(second, running.key)
    assert (event.exit_code, event.reason, event.log_tail) == (5, "Error", "ready")
    assert await second.alive() == []


async def test_adopted_attempt_can_be_killed(make_launcher: Factory) -> None:
    first = await make_launcher()
    spec = bash("echo ready; sleep 60")
    [result] = await first.launch([spec])
    await wait_line(first, spec.key, "ready")
    await first.close()
    second = await make_launcher()
    [again] = await second.launch([spec])
    assert again.handle == result.handle
    assert isinstance(await next_event(second), AttemptStarted)
    await second.kill(spec.key, again.handle, reason="sanity")
    event = await exited(second)
    assert (event.reason, event.message) == ("Killed", "sanity")


async def test_adopt_survives_exit_without_exit_file(make_launcher: Factory) -> None:
    first = await make_launcher()
    await first.launch([bash("true")])
    await exited(first)
    paths = local_procs.AttemptPaths.of(first.state_dir, key())
    paths.exit.unlink()
    second = await make_launcher()
    await second.adopt([(key(), None)])
    event = await exited(second)
    assert (event.exit_code, event.reason) == (None, "Lost")


async def test_unacknowledged_exits_are_reported_again_after_a_restart(
    make_launcher: Factory, tmp_path: Path
) -> None:
    first = await make_launcher()
    go = tmp_path / "go"
    finished, running = bash("exit 3", task="done"), bash(f"until [ -e {go} ]; do sleep 0.02; done")
    await first.launch([finished, running])
    assert (await exited(first, finished.key)).exit_code == 3
    await first.close()  # the scheduler died before committing that exit

    second = await make_launcher()  # nobody calls adopt(): the live index is enough
    events = {(e.key, e.kind): e for e in [await next_event(second) for _ in range(2)]}
    done = events[(finished.key, "exited")]
    assert isinstance(done, AttemptExited) and (done.exit_code, done.reason) == (3, "Error")
    assert (running.key, "started") in events
    await second.adopt([(finished.key, None), (running.key, None)])  # already known: no repeat
    assert second.events.empty()
    await second.acknowledge([finished.key, running.key])  # running: not retired
    go.touch()
    assert (await exited(second, running.key)).exit_code == 0
    await second.close()

    third = await make_launcher()  # reports only what was not acknowledged
    event = await exited(third)
    assert (event.key, event.exit_code) == (running.key, 0)
    await third.acknowledge([running.key])
    assert third.events.empty()
    assert list((third.state_dir / "live").iterdir()) == []
    log = local_procs.AttemptPaths.of(third.state_dir, finished.key).log
    assert log.exists()  # logs are kept for `tasks logs`


async def test_a_disowned_exit_is_reported_again_when_adopted_back(
    make_launcher: Factory,
) -> None:
    """A peer adopted the try while this scheduler was paused (its exit event was dropped
    as the peer's), then the peer died and this scheduler adopts the try back: the exit
    must be reported again, or the try never ends."""
    launcher = await make_launcher()
    [result] = await launcher.launch([bash("exit 3")])
    assert (await exited(launcher)).exit_code == 3
    await launcher.disown([key()])  # the peer's now: its evidence stays
    assert local_procs.AttemptPaths.of(launcher.state_dir, key()).exit.exists()
    assert await launcher.alive() == []  # not re-adopted from the live index meanwhile
    assert launcher.events.empty()
    await launcher.adopt([(key(), result.handle)])
    event = await exited(launcher)
    assert (event.key, event.exit_code) == (key(), 3)
    await launcher.acknowledge([key()])
    assert list((launcher.state_dir / "live").iterdir()) == []


async def test_alive_is_a_fresh_look(make_launcher: Factory) -> None:
    launcher = await make_launcher()
    [result] = await launcher.launch([bash("echo ready; sleep 60")])
    await wait_line(launcher, key(), "ready")
    assert [a.handle for a in await launcher.alive()] == [result.handle]
    pid = int((result.handle or "").partition(":")[2])
    os.killpg(pid, signal.SIGKILL)
    _block_until_zombie(pid)  # the launcher has not processed the exit yet
    assert await launcher.alive() == []
    assert (await exited(launcher)).exit_code == 137


def _block_until_zombie(pid: int) -> None:
    """Wait for the kernel to end the process without yielding to the event loop."""
    deadline = time.monotonic() + WAIT
    while (local_procs.proc_stat(pid) or ("Z",))[0] != "Z":
        assert time.monotonic() < deadline, f"{pid} did not end"
        time.sleep(0.005)


async def test_alive_includes_attempts_nobody_adopted(make_launcher: Factory) -> None:
    watching = await make_launcher()
    other = await make_launcher()  # e.g. a previous scheduler, not yet gone
    [result] = await other.launch([bash("echo ready; sleep 60")])
    await wait_line(other, key(), "ready")
    await other.close()
    alive = await watching.alive()
    assert [(a.key, a.handle) for a in alive] == [(key(), result.handle)]
    await watching.kill(key(), result.handle, reason="orphan", force=True)
    event = await exited(watching)
    assert (event.reason, event.message) == ("Killed", "orphan")


# -- the state directory ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["missing parent", "under a file"])
async def test_unusable_state_dir_is_one_clear_error(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("not a directory")
    state = tmp_path / ("missing/state" if where == "missing parent" else "file/state")
    launcher = LocalLauncher(
        state_dir=state, dags_folder=tmp_path, worker_env={}, python_mode="exec"
    )
    with pytest.raises(StateDirError) as info:
        await launcher.start()
    assert str(state) in str(info.value)
    assert not (tmp_path / "missing").exists()


async def test_launch_failing_for_good_is_not_retryable(
    make_launcher: Factory, tmp_path: Path
) -> None:
    launcher = await make_launcher()
    logs = tmp_path / "state" / "logs"
    logs.rmdir()
    logs.write_text("the state dir was broken after start")
    [result] = await launcher.launch([bash("echo never")])
    assert result.handle is None and result.error and not result.retryable
    assert "Not a directory" in result.error


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        (errno.EACCES, True),
        (errno.EROFS, True),
        (errno.ENOENT, True),
        (errno.EAGAIN, False),
        (errno.EMFILE, False),
        (errno.ENOMEM, False),
        (errno.ENOSPC, False),
    ],
)
def test_which_launch_errors_are_permanent(code: int, permanent: bool) -> None:
    assert local_procs.is_permanent(OSError(code, os.strerror(code))) is permanent


# -- logs ---------------------------------------------------------------------------------


async def test_read_logs_tail(make_launcher: Factory) -> None:
    launcher = await make_launcher()
    await launcher.launch([bash("seq 1 10; printf last")])
    await exited(launcher)
    lines = [line async for line in launcher.read_logs(key(), None, tail_lines=3)]
    assert lines == ["9", "10", "last"]
    everything = [line async for line in launcher.read_logs(key(), None)]
    assert everything == [*map(str, range(1, 11)), "last"]


async def test_read_logs_follow(make_launcher: Factory, tmp_path: Path) -> None:
    launcher = await make_launcher()
    go = tmp_path / "go"
    cmd = f"echo one; while [ ! -e {go} ]; do sleep 0.02; done; echo two; sleep 0.2; echo three"
    await launcher.launch([bash(cmd)])
    seen: list[str] = []

    async def follow() -> None:
        async for line in launcher.read_logs(key(), None, follow=True):
            seen.append(line)
            if line == "one":
                go.touch()

    await asyncio.wait_for(follow(), WAIT)
    assert seen == ["one", "two", "three"]


async def test_read_logs_unknown_attempt(make_launcher: Factory) -> None:
    launcher = await make_launcher()
    with pytest.raises(NotFound):
        [line async for line in launcher.read_logs(key("nope"), None)]


def test_safe_component() -> None:
    assert local_procs.safe_component("run:2024+00") == "run:2024+00"
    assert local_procs.safe_component("../x") == "%2E.%2Fx"
    assert local_procs.safe_component("a b") == "a%20b"
    assert local_procs.safe_component("") == "%00"


# --- two launchers of one try ------------------------------------------------------------------


async def _paused_and_peer(
    make_launcher: Factory, tmp_path: Path
) -> tuple[LocalLauncher, LocalLauncher, list[TaskSpec]]:
    """Two launchers on one state directory, and Bash specs each appending its pid to
    `ran-<i>`: more than are launched inline, so the first works in a thread as a round's."""
    paused = await make_launcher()
    paused.set_owner("paused")
    peer = await make_launcher()
    peer.set_owner("peer")
    ran = tmp_path / "ran"
    specs = [bash(f"echo $$ >> {ran}-{i}", task=f"t{i}") for i in range(INLINE_LAUNCHES + 1)]
    return paused, peer, specs


async def _exit_codes(
    launcher: LocalLauncher, specs: list[TaskSpec]
) -> dict[AttemptKey, int | None]:
    """The exit code of each spec's attempt, in whatever order they end."""
    codes: dict[AttemptKey, int | None] = {}
    while len(codes) < len(specs):
        event = await next_event(launcher)
        if isinstance(event, AttemptExited):
            codes[event.key] = event.exit_code
    return codes


def _each_ran_once(tmp_path: Path, specs: list[TaskSpec]) -> None:
    for i in range(len(specs)):
        assert len((tmp_path / f"ran-{i}").read_text().split()) == 1, f"t{i} ran twice"


async def test_a_try_launched_by_a_peer_while_this_launch_was_paused_runs_once(
    make_launcher: Factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A scheduler paused after starting a try's process and before recording it: a peer
    sharing the state directory takes the try over, finds no marker and launches it. When
    the first one resumes, its process must not run: it watches the peer's instead."""
    paused, peer, specs = await _paused_and_peer(make_launcher, tmp_path)
    loop = asyncio.get_running_loop()
    write_marker = local_procs.write_marker
    peer_results: list[Any] = []

    def peer_launches_first(
        path: Path, marker: local_procs.Marker, **kw: Any
    ) -> local_procs.Marker | None:
        if marker.owner == "paused" and marker.task_id == "t0":  # its process is started
            launched = asyncio.run_coroutine_threadsafe(peer.launch(specs[:1]), loop)
            peer_results.extend(launched.result(WAIT))
        return write_marker(path, marker, **kw)

    monkeypatch.setattr(local_procs, "write_marker", peer_launches_first)
    results = await asyncio.wait_for(paused.launch(specs), WAIT * 2)
    [first] = peer_results
    assert first.handle and not first.error, first
    assert results[0].handle == first.handle, "the paused launcher must watch the peer's process"
    assert (await exited(peer, specs[0].key)).exit_code == 0
    assert await _exit_codes(paused, specs) == {s.key: 0 for s in specs}
    _each_ran_once(tmp_path, specs)


async def test_a_try_a_peer_launched_and_finished_while_this_launch_was_paused_is_not_rerun(
    make_launcher: Factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Paused after starting the process: meanwhile a peer launched the try, it ended and
    its exit was recorded (the live entry is gone, the peer's marker stays). Resumed, the
    paused launch must not run its process: the try was the peer's."""
    paused, peer, specs = await _paused_and_peer(make_launcher, tmp_path)
    loop = asyncio.get_running_loop()
    write_marker = local_procs.write_marker

    async def peer_runs_it_to_the_end() -> None:
        [launched] = await peer.launch(specs[:1])
        assert launched.handle, launched
        assert (await exited(peer, specs[0].key)).exit_code == 0
        await peer.acknowledge([specs[0].key])  # its exit is committed

    def peer_first(path: Path, marker: local_procs.Marker, **kw: Any) -> local_procs.Marker | None:
        if marker.owner == "paused" and marker.task_id == "t0":
            asyncio.run_coroutine_threadsafe(peer_runs_it_to_the_end(), loop).result(WAIT)
        return write_marker(path, marker, **kw)

    monkeypatch.setattr(local_procs, "write_marker", peer_first)
    results = await asyncio.wait_for(paused.launch(specs), WAIT * 2)
    assert all(r.handle for r in results), results
    assert await _exit_codes(paused, specs) == {s.key: 0 for s in specs}
    _each_ran_once(tmp_path, specs)


async def test_a_launch_decided_before_a_peer_launched_the_try_is_not_run(
    make_launcher: Factory, tmp_path: Path
) -> None:
    """Paused between deciding a launch and starting it: a peer launched the try and it
    ended meanwhile. The launch that was decided earlier must not run the try again (a
    try launched again on purpose, after a launch that did not start, is decided after it)."""
    paused = await make_launcher()
    paused.set_owner("paused")
    peer = await make_launcher()
    peer.set_owner("peer")
    ran = tmp_path / "ran"
    decided = bash(f"echo $$ >> {ran}")  # decided now, launched after the peer's
    [launched] = await peer.launch([bash(f"echo $$ >> {ran}")])
    assert (await exited(peer, decided.key)).exit_code == 0
    await peer.acknowledge([decided.key])
    [result] = await paused.launch([decided])
    assert result.handle == launched.handle
    assert (await exited(paused, decided.key)).exit_code == 0
    assert len(ran.read_text().split()) == 1, "the try ran twice"
    # Launched again after that (a relaunch decided now): it runs.
    await paused.acknowledge([decided.key])
    [again] = await paused.launch([bash(f"echo $$ >> {ran}")])
    assert again.handle != launched.handle
    assert (await exited(paused, decided.key)).exit_code == 0
    assert len(ran.read_text().split()) == 2


async def test_a_launch_made_long_after_it_was_decided_is_not_started(
    make_launcher: Factory, tmp_path: Path
) -> None:
    """A scheduler paused between deciding a launch and recording it may have had the try
    taken over meanwhile: the launcher does not start it, and says so (`paused`)."""
    launcher = await make_launcher(pause_limit=1.0)
    ran = tmp_path / "ran"
    spec = dataclasses.replace(bash(f"touch {ran}"), decided_at=time.time() - 5)
    [result] = await launcher.launch([spec])
    assert result.paused and result.retryable and result.handle is None, result
    paths = local_procs.AttemptPaths.of(tmp_path / "state", spec.key)
    assert local_procs.read_marker(paths.marker) is None
    assert not local_procs.live_entry(tmp_path / "state", spec.key).exists()
    [again] = await launcher.launch([dataclasses.replace(spec, decided_at=time.time())])
    assert again.handle and not again.paused
    assert (await exited(launcher, spec.key)).exit_code == 0
    assert ran.exists()


def test_a_live_entry_left_by_a_launcher_that_died_mid_record_is_replaced(
    tmp_path: Path,
) -> None:
    """Killed between its live entry and its marker, a launcher leaves a live entry of a
    process that never got its go byte: the next launch of that try takes the entry."""
    folder = tmp_path / "t"
    folder.mkdir()
    live = tmp_path / "live"
    dead = local_procs.Marker(
        pid=2**22 + 1,
        start_time=1,
        boot_id=local_procs.boot_id(),
        kind="bash",
        handle="pid:1",
        launched_at=0.0,
        timeout=None,
        dag_id="d",
        run_id="r",
        task_id="t",
        try_number=1,
    )
    live.write_text(json.dumps(dataclasses.asdict(dead)))
    mine = dataclasses.replace(dead, pid=os.getpid(), handle="pid:2")
    assert local_procs.write_marker(folder / "1.launch", mine, live=live) is None
    assert local_procs.read_marker(live) == mine
    assert local_procs.read_marker(folder / "1.launch") == mine
    assert [p.name for p in folder.iterdir()] == ["1.launch"], "a temporary file was left"


# --- launching off the event loop -------------------------------------------------------------


async def test_launch_leaves_the_event_loop_free_and_keeps_the_order(
    make_launcher: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing each marker waits until the event loop has run a callback: if launch work
    ran on the loop itself, the callback could not run and the launch would fail. The
    attempts still start in the order given, each with its marker written first."""
    import threading

    launcher = await make_launcher()
    loop = asyncio.get_running_loop()
    markers_seen: list[str] = []
    write_marker = local_procs.write_marker

    def write_marker_once_the_loop_ran(
        path: Path, marker: local_procs.Marker, **kw: Any
    ) -> local_procs.Marker | None:
        loop_ran = threading.Event()
        loop.call_soon_threadsafe(loop_ran.set)
        assert loop_ran.wait(WAIT), "the event loop was blocked while launching"
        markers_seen.append(marker.task_id)
        return write_marker(path, marker, **kw)

    monkeypatch.setattr(local_procs, "write_marker", write_marker_once_the_loop_ran)
    specs = [bash("true", task=f"t{i}") for i in range(5)]
    results = await asyncio.wait_for(launcher.launch(specs), WAIT * 2)
    assert [r.key for r in results] == [s.key for s in specs]
    assert all(r.handle and not r.error for r in results), results
    assert markers_seen == [f"t{i}" for i in range(5)]
    started = []
    while len(started) < 5:
        event = await next_event(launcher)
        if isinstance(event, AttemptStarted):
            started.append(event.key.task_id)
    assert started == [f"t{i}" for i in range(5)]


def test_a_forked_attempts_environment_is_exactly_the_one_it_was_given() -> None:
    """`local_fork.replace_environ` changes only what differs, and leaves exactly the
    attempt's environment: for Python (`os.environ`) and for the processes it starts."""
    import subprocess

    saved = dict(os.environ)
    wanted = {**saved, "MF_KEEP": "same", "MF_CHANGED": "new", "MF_ADDED": "x y"}
    wanted.pop("MF_DROPPED", None)
    try:
        os.environ.update({"MF_KEEP": "same", "MF_CHANGED": "old", "MF_DROPPED": "gone"})
        local_fork.replace_environ(wanted)
        assert dict(os.environ) == wanted
        seen = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
        lines = set(seen.splitlines())
        assert {"MF_KEEP=same", "MF_CHANGED=new", "MF_ADDED=x y"} <= lines
        assert not [line for line in lines if line.startswith("MF_DROPPED=")]
    finally:
        local_fork.replace_environ(saved)
    assert dict(os.environ) == saved


FORKED_AHEAD_CHECK = """
import json, os, sys, time
from pathlib import Path
from miniflow.launchers import local_fork

tmp, entry_module = Path(sys.argv[1]), sys.argv[2]
assert local_fork.fork_ahead()
host = {k: v for k, v in os.environ.items() if not k.startswith("MINIFLOW_")}
server = local_fork.ForkServer([entry_module], env=host, sys_path=sys.path)
server.start()
try:  # whatever fails, the attempt is let go and its wait ended: nothing is left running
    go_r, go_w = os.pipe()
    pid, done = server.fork(
        entry_module + ":main", ["run", "--dag-id", "d"], log_path=str(tmp / "a.log"),
        exit_path=str(tmp / "a.exit"), env={"ENTRY_MARK": "a", "ENTRY_WAIT_FOR": str(tmp / "go")},
        go_fd=go_r,
    )
    os.close(go_r)
    os.write(go_w, b"\\n")
    os.close(go_w)
    deadline = time.monotonic() + 30
    log = tmp / "a.log"
    while not log.exists() or "entry argv" not in log.read_text():  # waiting for "go"
        assert time.monotonic() < deadline, "the attempt did not start"
        time.sleep(0.005)
    attempt_title = Path(f"/proc/{pid}/cmdline").read_bytes()
    attempt_environ = Path(f"/proc/{pid}/environ").read_bytes()
    (tmp / "go").touch()
    assert os.read(done, 1) == b""
    print(json.dumps({
        "forked_ahead": server.forked_ahead,
        "parent": int(Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]),
        "me": os.getpid(),
        "title": Path(f"/proc/{server.pid}/cmdline").read_bytes().rstrip(b"\\0").decode(),
        "comm": Path(f"/proc/{server.pid}/comm").read_text().strip(),
        "attempt_title": attempt_title.rstrip(b"\\0").decode(),
        "environ": Path(f"/proc/{server.pid}/environ").read_bytes().decode(errors="replace"),
        "attempt_environ": attempt_environ.decode(errors="replace"),
        "log": (tmp / "a.log").read_text(),
        "exit": (tmp / "a.exit").read_text(),
    }))
finally:
    (tmp / "go").touch()
    server.close()
assert local_fork.fork_ahead()
ahead_pid = local_fork._ahead[1]
local_fork.discard_ahead()
assert not Path(f"/proc/{ahead_pid}").exists(), "a server forked ahead and not taken exits"
"""


def test_a_forkserver_forked_ahead_is_taken_by_the_next_start_and_names_itself(
    tmp_path: Path,
) -> None:
    """`fork_ahead` forks the server from the calling process (a fresh interpreter here:
    it must be single-threaded); the next `ForkServer.start` takes it instead of spawning
    one. The attempt runs as from a spawned server; the server and the attempt show names
    of their own in `ps` (not the forking process' command line, which `pkill -f` would
    match), and /proc shows the server's environment as the one it was given (not the
    forking process' settings), still readable (tools find processes by it)."""
    import json
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", FORKED_AHEAD_CHECK, str(tmp_path), local_launcher_entry.__name__],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "AHEAD_TOKEN": "t0k",
            "MINIFLOW_TEST_SECRET": "hush",  # the forking process' own setting
            "PYTHONPATH": os.pathsep.join(sys.path),
        },
        check=False,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["forked_ahead"] is True
    assert seen["parent"] == seen["me"]
    assert seen["title"] == "miniflow forkserver"
    assert seen["comm"] == "mf-forkserver"
    assert seen["attempt_title"].startswith("miniflow-worker run --dag-id d")
    for environ in (seen["environ"], seen["attempt_environ"]):  # as /proc shows them
        assert "AHEAD_TOKEN=t0k" in environ.split("\0")
        assert "MINIFLOW_TEST_SECRET" not in environ
    assert "entry argv: run --dag-id d" in seen["log"]
    assert "entry mark: a" in seen["log"]
    assert seen["exit"] == "0"
