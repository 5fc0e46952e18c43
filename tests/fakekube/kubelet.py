"""A fake kubelet: runs each pod's first container as a local subprocess.

Fakes: scheduling onto one node, ``command`` + ``args`` (command replaces the
entrypoint; without a command the image must be in the ``entrypoints`` map or
the pod fails with ``ContainerCannotRun``), ``$(VAR)`` expansion, ``env``
(``value``, ``valueFrom.secretKeyRef`` / ``configMapKeyRef`` / ``fieldRef``)
and ``envFrom``, a missing secret holding the pod in
``CreateContainerConfigError``, stdout+stderr captured as the log, exit codes
(signal N -> 128+N), graceful deletion (SIGTERM to the process group, SIGKILL
after the grace period), ``activeDeadlineSeconds`` (SIGTERM, then SIGKILL after
``terminationGracePeriodSeconds``), the termination message and the fault switches.

The termination message: a real kubelet bind-mounts a fresh empty file at the
container's ``terminationMessagePath``; with no mount namespace here, the path is
a per-pod host file and every occurrence of ``terminationMessagePath`` in the
command and args is rewritten to it (what a shell command writes there lands in
the file). When the container ends, up to 4096 bytes of the file become
``state.terminated.message`` (the kubelet's cap); with ``FallbackToLogsOnError``
an empty file of a failed container is replaced by the log's last 80 lines (at
most 2048 bytes), as the kubelet does.
Every status change is a real store write.  Deliberately does not fake: images
(commands run on the host), restartPolicy restarts, init/sidecar containers,
probes, resources/OOM accounting, volumes, or a deadline while still Pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import podstatus
from .faults import Faults
from .store import Event, Key, Obj, Store

MAX_MESSAGE_BYTES = 4096  # the kubelet's cap on one container's termination message
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048  # FallbackToLogsOnError: the log's tail


class LogBuffer:
    """Captured container output; followers wait for more data or the end."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done = False
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def append(self, chunk: bytes) -> None:
        self.data += chunk
        self._notify()

    def close(self) -> None:
        self.done = True
        self._notify()

    async def wait_beyond(self, offset: int) -> None:
        while len(self.data) <= offset and not self.done:
            await self._changed.wait()


@dataclass(eq=False)
class PodRun:
    key: Key
    uid: str
    log: LogBuffer = field(default_factory=LogBuffer)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    spawning: bool = False
    started: bool = False
    kill_reason: str | None = None
    kill_message: str | None = None
    term_sent: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    message_file: str | None = None  # the host file standing for terminationMessagePath
    message_policy: str = "File"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: int) -> None:
        if self.alive and self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)


class Kubelet:
    def __init__(
        self,
        store: Store,
        faults: Faults,
        *,
        secrets: dict[tuple[str, str], dict[str, str]] | None = None,
        configmaps: dict[tuple[str, str], dict[str, str]] | None = None,
        entrypoints: dict[str, list[str]] | None = None,
        base_env: dict[str, str] | None = None,
        node_name: str = "fake-node",
        poll_interval: float = 0.05,
    ) -> None:
        self.store, self.faults = store, faults
        self.secrets = secrets if secrets is not None else {}
        self.configmaps = configmaps if configmaps is not None else {}
        self.entrypoints = entrypoints if entrypoints is not None else {}
        self.base_env = (
            base_env if base_env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        )
        self.node_name, self.poll = node_name, poll_interval
        self.runs: dict[Key, PodRun] = {}
        self._live: set[PodRun] = set()  # runs whose task has not finished yet
        self._ips = 0
        self._stopping = False

    def start(self) -> None:
        self.store.add_listener(self._on_event)

    # ------------------------------------------------------------ public API
    def is_running(self, name: str, namespace: str = "default") -> bool:
        run = self.runs.get((namespace, name))
        return run is not None and (run.alive or run.spawning)

    def log(self, name: str, namespace: str = "default") -> LogBuffer | None:
        run = self.runs.get((namespace, name))
        return run.log if run is not None and run.started else None

    async def kill_with(
        self, namespace: str, name: str, reason: str, message: str | None = None
    ) -> Obj:
        run = self.runs.get((namespace, name))
        if run is None:
            raise LookupError(f"pod {namespace}/{name} is not known to the kubelet")
        if run.alive or run.spawning:
            run.kill_reason, run.kill_message = reason, message
            run.signal(signal.SIGKILL)  # if still spawning, _lifecycle kills it at once
        elif reason == "Evicted" and run.task is not None and not run.done.is_set():
            run.task.cancel()
            await asyncio.wait([run.task])
            self._write(
                run,
                lambda p: podstatus.terminated(
                    p,
                    137,
                    "ContainerStatusUnknown",
                    phase="Failed",
                    pod_reason="Evicted",
                    pod_message=message,
                ),
            )
        else:
            raise RuntimeError(f"pod {namespace}/{name} is not running")
        await asyncio.wait_for(run.done.wait(), 30)
        return self.store.get(name, namespace) or {}

    async def stop(self) -> None:
        self._stopping = True
        tasks = []
        for run in list(self._live):
            for t in run.timers:
                t.cancel()
            run.signal(signal.SIGKILL)
            if run.task is not None:
                if run.proc is None and not run.spawning:
                    run.task.cancel()  # held/pending: nothing to reap
                tasks.append(run.task)
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    # ----------------------------------------------------------- event hook
    def _on_event(self, ev: Event) -> None:
        meta = ev.obj["metadata"]
        key = (meta["namespace"], meta["name"])
        run = self.runs.get(key)
        if ev.type == "ADDED" and not self._stopping:
            run = PodRun(key, meta["uid"])
            self.runs[key] = run
            self._live.add(run)
            run.task = asyncio.get_running_loop().create_task(self._run(run))
        elif run is None or run.uid != meta.get("uid"):
            return
        elif ev.type == "DELETED":
            del self.runs[key]
            if run.alive:
                run.signal(signal.SIGKILL)
            elif run.task is not None and not run.spawning:
                run.task.cancel()
        elif meta.get("deletionTimestamp") and run.alive:
            grace = int(meta.get("deletionGracePeriodSeconds") or 0)
            self._terminate(run, grace)

    def _terminate(self, run: PodRun, grace: float) -> None:
        if not run.term_sent:
            run.term_sent = True
            run.signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        run.timers.append(loop.call_later(grace, run.signal, signal.SIGKILL))

    # ------------------------------------------------------------ pod life
    def _pod(self, run: PodRun) -> Obj | None:
        pod = self.store.get(run.key[1], run.key[0])
        if pod is None or pod["metadata"].get("uid") != run.uid:
            return None
        return pod

    def _write(self, run: PodRun, fn: Callable[[Obj], Any]) -> Obj | None:
        pod = self._pod(run)
        if pod is None:
            return None
        fn(pod)
        return self.store.write(pod)

    async def _hold(
        self,
        run: PodRun,
        check: Callable[[Obj], Any],
        apply: Callable[[Obj, Any, int], None],
    ) -> Obj | None:
        """While *check* says so, keep writing *apply* and polling; return the pod."""
        n = 0
        while True:
            pod = self._pod(run)
            if pod is None:
                return None
            msg = check(pod)
            if msg is None:
                return pod
            self._write(run, lambda p, m=msg, i=n: apply(p, m, i))
            n += 1
            await asyncio.sleep(self.poll)

    async def _run(self, run: PodRun) -> None:
        try:
            await self._lifecycle(run)
        finally:
            for t in run.timers:
                t.cancel()
            if run.message_file is not None:  # the container never finished
                with contextlib.suppress(OSError):
                    os.unlink(run.message_file)
            run.log.close()
            run.done.set()
            self._live.discard(run)

    async def _lifecycle(self, run: PodRun) -> None:
        if self.faults.start_delay > 0:
            await asyncio.sleep(self.faults.start_delay)
        pod = await self._hold(
            run, self.faults.unschedulable_message, lambda p, m, i: podstatus.unschedulable(p, m)
        )
        if pod is None:
            return
        self._ips += 1
        ip = f"10.244.0.{self._ips % 250 + 2}"
        self._write(run, lambda p: podstatus.scheduled(p, self.node_name, "192.168.49.2"))
        pod = await self._hold(
            run,
            self.faults.image_pull_message,
            lambda p, m, i: podstatus.waiting(
                p, "ErrImagePull" if i == 0 else "ImagePullBackOff", m
            ),
        )
        if pod is None:
            return
        pod = await self._hold(
            run,
            self.faults.waiting_state,
            lambda p, state, i: podstatus.waiting(p, state[0], state[1]),
        )
        if pod is None:
            return
        env: dict[str, str] | None = None
        while env is None:
            env, err = self._resolve_env(pod)
            if err is not None:
                self._write(
                    run, lambda p, m=err: podstatus.waiting(p, "CreateContainerConfigError", m)
                )
                await asyncio.sleep(self.poll)
                if (pod := self._pod(run)) is None:
                    return
        argv = self._argv(pod, env)
        if argv is not None:
            argv = self._mount_termination_message(run, pod, argv)
        if argv is None:
            self._cannot_run(run, "no command specified and the image has no entrypoint")
            return
        run.spawning = True
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                cwd=self._cwd(pod),
            )
        except OSError as exc:
            self._cannot_run(run, f"failed to start container: {exc}")
            return
        finally:
            run.spawning = False
        run.proc, run.started = proc, True
        cid = f"fake://{proc.pid}"
        if self._stopping or self._pod(run) is None or run.kill_reason:
            run.signal(signal.SIGKILL)
        pump = asyncio.create_task(self._pump(proc, run.log))
        pod = self._write(run, lambda p: podstatus.running(p, ip, cid))
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            self._terminate(run, int(pod["metadata"].get("deletionGracePeriodSeconds") or 0))
        deadline = (pod or {}).get("spec", {}).get("activeDeadlineSeconds")
        if deadline is not None:
            run.timers.append(
                asyncio.get_running_loop().call_later(
                    float(deadline),
                    self._deadline,
                    run,
                    float((pod or {})["spec"].get("terminationGracePeriodSeconds", 30)),
                )
            )
        rc = await proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the container ends: so do its children
        await pump
        self._finish(run, rc, cid)

    def _deadline(self, run: PodRun, grace: float) -> None:
        if run.alive and run.kill_reason is None:
            run.kill_reason = "DeadlineExceeded"
            run.kill_message = "Pod was active on the node longer than the specified deadline"
            self._terminate(run, grace)

    def _mount_termination_message(self, run: PodRun, pod: Obj, argv: list[str]) -> list[str]:
        container = pod["spec"]["containers"][0]
        path = container.get("terminationMessagePath") or "/dev/termination-log"
        run.message_policy = container.get("terminationMessagePolicy") or "File"
        fd, run.message_file = tempfile.mkstemp(prefix="fakekube-termination-")
        os.close(fd)
        return [a.replace(path, run.message_file) for a in argv]

    def _termination_message(self, run: PodRun, code: int) -> str | None:
        if run.message_file is None:
            return None
        try:
            with open(run.message_file, "rb") as f:
                data = f.read(MAX_MESSAGE_BYTES)
        except OSError:
            data = b""
        finally:
            with contextlib.suppress(OSError):
                os.unlink(run.message_file)
            run.message_file = None
        if not data and code != 0 and run.message_policy == "FallbackToLogsOnError":
            tail = b"\n".join(bytes(run.log.data).splitlines()[-FALLBACK_LINES:])
            data = tail[-FALLBACK_BYTES:]
        return data.decode(errors="replace") or None

    def _finish(self, run: PodRun, rc: int, cid: str) -> None:
        code = rc if rc >= 0 else 128 - rc
        message = self._termination_message(run, code)
        reason = "Completed" if code == 0 else "Error"
        pod_reason = pod_message = None
        if run.kill_reason == "OOMKilled":
            code, reason = 137, "OOMKilled"
        elif run.kill_reason in ("Evicted", "DeadlineExceeded"):
            pod_reason, pod_message = run.kill_reason, run.kill_message
        phase = "Succeeded" if code == 0 and pod_reason is None else "Failed"
        pod = self._write(
            run,
            lambda p: podstatus.terminated(
                p,
                code,
                reason,
                phase=phase,
                cid=cid,
                message=message,
                pod_reason=pod_reason,
                pod_message=pod_message,
            ),
        )
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            self.store.remove(run.key[1], run.key[0])

    def _cannot_run(self, run: PodRun, message: str) -> None:
        run.started = True
        self._write(
            run,
            lambda p: podstatus.terminated(
                p, 128, "ContainerCannotRun", phase="Failed", message=message
            ),
        )
        pod = self._pod(run)
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            self.store.remove(run.key[1], run.key[0])

    @staticmethod
    async def _pump(proc: asyncio.subprocess.Process, log: LogBuffer) -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            log.append(chunk)

    # ------------------------------------------------------- container spec
    @staticmethod
    def _cwd(pod: Obj) -> str | None:
        wd = pod["spec"]["containers"][0].get("workingDir")
        return wd if wd and os.path.isdir(wd) else None

    def _argv(self, pod: Obj, env: dict[str, str]) -> list[str] | None:
        c = pod["spec"]["containers"][0]
        command, args = c.get("command"), c.get("args") or []
        if not command:
            command = self.entrypoints.get(c.get("image", ""))
            if not command:
                return None
        return [_expand(str(a), env) for a in [*command, *args]]

    def _lookup(
        self, store: dict[tuple[str, str], dict[str, str]], kind: str, ns: str, ref: dict[str, Any]
    ) -> tuple[str | None, str | None]:
        data = store.get((ns, ref.get("name", "")))
        if data is None:
            return None, f'{kind.lower()} "{ref.get("name")}" not found'
        if "key" in ref and ref["key"] not in data:
            return None, f"couldn't find key {ref['key']} in {kind} {ns}/{ref.get('name')}"
        return data.get(ref.get("key", "")), None

    def _resolve_env(self, pod: Obj) -> tuple[dict[str, str] | None, str | None]:
        ns, c = pod["metadata"]["namespace"], pod["spec"]["containers"][0]
        env = dict(self.base_env)
        env["HOSTNAME"] = pod["metadata"]["name"]
        for src in c.get("envFrom") or []:
            for kind, store, rkey in (
                ("Secret", self.secrets, "secretRef"),
                ("ConfigMap", self.configmaps, "configMapRef"),
            ):
                if rkey in src:
                    data = store.get((ns, src[rkey].get("name", "")))
                    if data is None and not src[rkey].get("optional"):
                        return None, f'{kind.lower()} "{src[rkey].get("name")}" not found'
                    for k, v in (data or {}).items():
                        env[src.get("prefix", "") + k] = v
        for item in c.get("env") or []:
            name, vf = item.get("name", ""), item.get("valueFrom")
            if vf is None:
                env[name] = _expand(str(item.get("value", "")), env)
                continue
            for kind, store, rkey in (
                ("Secret", self.secrets, "secretKeyRef"),
                ("ConfigMap", self.configmaps, "configMapKeyRef"),
            ):
                if rkey in vf:
                    value, err = self._lookup(store, kind, ns, vf[rkey])
                    if err is not None and not vf[rkey].get("optional"):
                        return None, err
                    if value is not None:
                        env[name] = value
            if "fieldRef" in vf:
                env[name] = _field_ref(pod, vf["fieldRef"].get("fieldPath", ""))
        return env, None


def _field_ref(pod: Obj, path: str) -> str:
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((pod["metadata"].get(m.group(1)) or {}).get(m.group(2), ""))
    cur: Any = pod
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(
        r"\$\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: m.group(0)[1:] if m.group(1) else env.get(m.group(2), m.group(0)),
        text,
    )
