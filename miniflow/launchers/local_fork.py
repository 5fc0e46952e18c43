"""Python attempts forked from a warm forkserver (the local launcher's "fork" mode).

A cold interpreter that imports the worker (SQLAlchemy, asyncpg...) costs ~0.4 s
of CPU; 100 of them on 2 cores blow the benchmark goal on start-up alone. So
each launcher starts one forkserver: `python -c "...local_fork.serve()"`,
spawned in a session of its own, which imports the preload modules once (the
worker and `miniflow_worker.warm`) and then forks a child per attempt:
milliseconds, and copy-on-write memory. It is a clean process (no event loop,
no scheduler state, no threads), unlike a fork of the running scheduler. `miniflow
scheduler` forks it instead from itself before it starts any thread or event loop
(`fork_ahead`), so that it inherits the imports the two share; the child then
resets what a spawned server would not have.

Why not `multiprocessing`'s forkserver: its children are `multiprocessing`
children of the scheduler, which interpreter exit joins (a `miniflow scheduler`
stopped while a `@task` ran waited for the task to end, and a second Ctrl-C
left the forkserver behind); and preloading and skipping the re-run of
`__main__` needed CPython internals (`_forkserver._preload_modules`,
`Popen._fds`). This module uses public APIs only: `os.posix_spawn`, a Unix
socket with `socket.send_fds`/`recv_fds`, `os.fork`.

Protocol (one stream socketpair, messages = 4-byte length + JSON): the launcher
sends the server's environment, the preload list, its `sys.path`, an optional *prefork hook*
("module:function", from a preloaded module) and optionally the workers' environment
to call it with once at boot (`boot_env`); the server answers `{"ready": true}`
once the preloads are imported and that call returned; then each request carries the
attempt (entry, argv, log and exit paths, the whole environment, its title in `ps`) and,
as SCM_RIGHTS, the read end of the attempt's go pipe; the reply is `{"pid": N}` with the
read end of a *done pipe*, or `{"errno": E, "error": "..."}`. The server exits when the
socket reaches EOF (the launcher closed it, or died), leaving running attempts
alone; being no child of the scheduler, they never hold up its exit.

With a *relay hook* ("module:function", bytes -> bytes), each attempt also gets a
socket, its fd number in `RELAY_FD_ENV`, to a *relay process* the server forked
at start (and again, at most every `RELAY_RESTART_INTERVAL` seconds, if it ended): a
message from the attempt (length + bytes) is passed to the hook there, and its answer
sent back. The worker uses it to have its claim and its
outcome written on one warm database connection instead of opening its own
(`miniflow_worker.relay`). Not the server itself: while an attempt runs, every
page the server writes is copied first (copy-on-write goes both ways), which made
a relayed claim cost more than the child's own; the relay process' pages become
its own once and stay so. The server hands the relay process its end of each
attempt's socket (SCM_RIGHTS) and keeps nothing; an attempt that finds no relay
(EOF) does the work itself.

Before each fork the server calls the prefork hook with the attempt's environment
and DAG file (if the launcher named one): what the hook builds once (the workers'
database engine, its statements compiled; the DAG file's module:
`miniflow_worker.warm.prefork`) every later child inherits instead of building it
itself. An exception from the hook is printed and ignored. The boot call comes before
the relay process is forked, so the relay inherits what it built too.

An attempt is one forked process: a new session, the log on stdout/stderr, then
it waits for the go byte (EOF means the launcher died before recording the
launch: it exits without running anything), then runs `entry(argv)` with
default signal handling and the attempt's environment, and writes its exit code
to the exit file. The server is its parent: it reaps it, writes the exit file
itself if the attempt could not (a death by signal N: 128+N), and only then
closes the done pipe, whose EOF is how the launcher learns of the exit with the
code already on disk. (A launcher that outlives the server, or adopts the
attempt after a restart, watches the pid instead.)

This module is imported by the forkserver (it is its main) and lives on in every
forked child, so it imports nothing heavy. It must never touch asyncio.
"""

from __future__ import annotations

import array
import contextlib
import importlib
import io
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from miniflow.errors import LaunchError
from miniflow.launchers import proc_title

SERVER_FD = 3
"""The forkserver's end of the socket, in the forkserver."""

NOT_STARTED_CODE = 125
"""Exit code of a wrapper whose go pipe reached EOF (same as the `sh` wrapper's)."""

READY_TIMEOUT = 120.0
"""Seconds the forkserver may take to import its preloads (and run its boot call)."""

REPLY_TIMEOUT = 30.0
"""Seconds to wait for the pid of a forked attempt (a fork takes milliseconds)."""

RELAY_FD_ENV = "MINIFLOW_WORKER_RELAY_FD"
"""Set in a forked attempt's environment when it has a relay: its socket's fd."""

RELAY_RESTART_INTERVAL = 5.0
"""Seconds between two starts of the relay process: one that keeps dying costs a fork
now and then, not one per attempt."""

_HEADER = struct.Struct("!I")


class ForkServerGone(LaunchError):
    """The forkserver did not answer (it died, or hangs): fork mode is unusable."""


def load_entry(entry: str) -> Callable[[list[str]], int]:
    """Resolve "package.module:function"."""
    module_name, _, func_name = entry.partition(":")
    module = importlib.import_module(module_name)
    return cast(Callable[[list[str]], int], getattr(module, func_name or "main"))


def exec_python_argv(entry: str, argv: Sequence[str]) -> list[str]:
    """argv of a fresh interpreter that calls `entry(argv)` and exits with its result."""
    module_name, _, func_name = entry.partition(":")
    code = (
        "import importlib, sys; "
        f"sys.exit(getattr(importlib.import_module({module_name!r}), {func_name or 'main'!r})"
        "(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, *argv]


# -- messages -------------------------------------------------------------------------------


def _send(sock: socket.socket, payload: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(payload).encode()
    message = _HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [message], list(fds)) if fds else sock.send(message)
    if sent < len(message):
        sock.sendall(message[sent:])


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket, *, with_fd: bool = False) -> tuple[dict[str, Any], list[int]]:
    """One message (and the fd sent with it); EOFError at end of stream.

    A received fd is close-on-exec (MSG_CMSG_CLOEXEC): it must not leak into the
    processes the launcher spawns.
    """
    fds: list[int] = []
    if with_fd:
        fd_size = array.array("i").itemsize
        head, ancillary, _flags, _addr = sock.recvmsg(
            _HEADER.size, socket.CMSG_SPACE(fd_size), socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", data[: len(data) - len(data) % fd_size])
        if not head:
            for fd in fds:
                os.close(fd)
            raise EOFError
        head += _recv_exactly(sock, _HEADER.size - len(head))
    else:
        head = _recv_exactly(sock, _HEADER.size)
    (size,) = _HEADER.unpack(head)
    return json.loads(_recv_exactly(sock, size)), fds


# -- the launcher's side ------------------------------------------------------------------


class ForkServer:
    """A forkserver process and the launcher's end of its socket (blocking calls)."""

    def __init__(
        self,
        preload: Sequence[str],
        *,
        env: Mapping[str, str],
        sys_path: Sequence[str],
        prefork: str | None = None,
        boot_env: Mapping[str, str] | None = None,
        relay: str | None = None,
        relay_restart_interval: float = RELAY_RESTART_INTERVAL,
    ) -> None:
        self.preload = list(preload)
        self.prefork = prefork
        self.boot_env = dict(boot_env) if boot_env is not None else None
        self.relay = relay
        self.relay_restart_interval = relay_restart_interval
        self.env = dict(env)
        self.sys_path = list(sys_path)
        self.pid: int | None = None
        self.forked_ahead = False
        """Whether the server is the one `fork_ahead` forked (else a new interpreter)."""
        self._sock: socket.socket | None = None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start the server (the one `fork_ahead` forked, if any) and wait until its
        preloads are imported."""
        ahead = _take_ahead()
        self.forked_ahead = ahead is not None
        if ahead is not None:
            self.pid, ours = ahead
        else:
            self.pid, ours = self._spawn()
        self._sock = ours
        ours.settimeout(timeout)
        try:
            _send(
                ours,
                {
                    "env": self.env,
                    "preload": self.preload,
                    "sys_path": self.sys_path,
                    "prefork": self.prefork,
                    "boot_env": self.boot_env,
                    "relay": self.relay,
                    "relay_restart_interval": self.relay_restart_interval,
                },
            )
            _recv(ours)
        except (OSError, EOFError, ValueError) as exc:
            self.close()
            raise ForkServerGone(f"the forkserver did not start: {exc!r}") from exc
        ours.settimeout(REPLY_TIMEOUT)

    def _spawn(self) -> tuple[int, socket.socket]:
        """A new interpreter as the server: (its pid, our end of its socket)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = theirs.fileno()
        moved = os.dup(fd) if fd == SERVER_FD else None  # dup2(3, 3) keeps close-on-exec
        code = f"from {__name__} import serve; serve()"
        try:
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-c", code],
                self.env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, moved if moved is not None else fd, SERVER_FD),
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    # stderr stays ours: a preload that fails to import says why there.
                ],
                setsid=True,  # no terminal's Ctrl-C, no signal meant for our group
                setsigmask=(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            if moved is not None:
                os.close(moved)
        return pid, ours

    def fork(
        self,
        entry: str,
        argv: Sequence[str],
        *,
        log_path: str,
        exit_path: str,
        env: Mapping[str, str],
        go_fd: int,
        dag_file: str | None = None,
        title: str | None = None,
    ) -> tuple[int, int]:
        """Fork an attempt blocked on `go_fd`; (its pid, the read end of its done pipe).
        `title`: its command line in `ps` (default: `miniflow-worker` and `argv`).

        Raises OSError with the server's errno if the fork failed (EAGAIN,
        ENOMEM...), ForkServerGone if the server does not answer.
        """
        if self._sock is None:
            raise ForkServerGone("the forkserver is closed")
        request = {
            "entry": entry,
            "argv": list(argv),
            "log": log_path,
            "exit": exit_path,
            "env": dict(env),
            "dag_file": dag_file,
            "title": title,
        }
        try:
            _send(self._sock, request, [go_fd])
            reply, fds = _recv(self._sock, with_fd=True)
        except (OSError, EOFError, ValueError) as exc:
            self.close(timeout=0.5)
            raise ForkServerGone(f"the forkserver stopped answering: {exc!r}") from exc
        if "pid" in reply and len(fds) == 1:
            return int(reply["pid"]), fds[0]
        for fd in fds:
            os.close(fd)
        raise OSError(int(reply.get("errno", 0)), str(reply.get("error", "fork failed")))

    def close(self, timeout: float = 5.0) -> None:
        """Close the socket (the server exits at EOF) and reap the server."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        pid, self.pid = self.pid, None
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                return
            time.sleep(0.005)


# -- a server forked ahead -----------------------------------------------------------------

_ahead: tuple[int, int, socket.socket] | None = None
"""(the process that forked it, the server's pid, our end of its socket)."""


def fork_ahead() -> bool:
    """Fork the forkserver from this process now; the next `ForkServer.start` in this
    process takes it instead of spawning a new interpreter.

    `miniflow scheduler` has imported SQLAlchemy, its ORM and the store by the time it
    has read its configuration: a server forked then imports only what is the worker's
    own (measured: 0.05 s of CPU, against 0.27 s for a new interpreter importing it
    all), which matters most for a scheduler started while its peers keep the machine
    busy (a rolling restart). Only from a single-threaded process (a fork copies no
    other thread, and whatever lock one held stays held): False, and nothing forked,
    otherwise.
    """
    global _ahead
    if _ahead is not None or threading.active_count() != 1:
        return False
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for stream in (sys.stdout, sys.stderr):  # not written twice, by the child as well
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return False
    if pid == 0:
        try:
            ours.close()
            _become_server(theirs)
            serve()
        finally:
            os._exit(1)
    theirs.close()
    _ahead = (os.getpid(), pid, ours)
    return True


def discard_ahead() -> None:
    """Let a server forked ahead and not taken exit (EOF before its first message)."""
    ahead = _take_ahead()
    if ahead is not None:
        pid, sock = ahead
        sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _take_ahead() -> tuple[int, socket.socket] | None:
    global _ahead
    ahead, _ahead = _ahead, None
    if ahead is None or ahead[0] != os.getpid():  # forked by our parent: its own
        return None
    return ahead[1], ahead[2]


def _become_server(sock: socket.socket) -> None:
    """In the forked child: what a spawned server starts with (`ForkServer._spawn`)."""
    os.setsid()
    fd = sock.detach()
    if fd != SERVER_FD:
        os.dup2(fd, SERVER_FD)
        os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    os.closerange(SERVER_FD + 1, os.sysconf("SC_OPEN_MAX"))  # the parent's files
    logging = sys.modules.get("logging")
    if logging is not None:  # the parent's handlers write its format to what is fd 2
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
    sys.argv[:] = ["-c"]


# -- the forkserver -------------------------------------------------------------------------


@dataclass
class _Child:
    exit_path: str
    done_w: int  # closed once the exit code is on disk


def serve() -> NoReturn:
    """Main of the forkserver process; its first message: preload and sys_path."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=SERVER_FD)
    children: dict[int, _Child] = {}
    try:
        config, _ = _recv(sock)
        proc_title.set_title("miniflow forkserver", "mf-forkserver")
        if isinstance(config.get("env"), dict):
            replace_environ(config["env"])
            proc_title.set_startup_environ(config["env"])  # not its forker's, if forked
        sys.path[:] = config["sys_path"]
        for name in config["preload"]:
            try:
                importlib.import_module(name)
            except Exception:  # the attempt reports it again, in its own log
                traceback.print_exc()
        prefork = _hook(config.get("prefork"))
        if config.get("boot_env") is not None:
            _call_prefork(prefork, {"env": config["boot_env"]})
        relay = _Relay.start(
            _hook(config.get("relay")),
            lambda: sock.close(),
            config.get("relay_restart_interval", RELAY_RESTART_INTERVAL),
        )
        # SIGCHLD wakes the loop through a pipe; the handler itself does nothing.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        _send(sock, {"ready": True})
        while True:
            for ready, _ in selector.select():
                if ready.fileobj is sock:
                    if relay is not None:  # before the request: it holds none of its fds
                        relay.restart_if_ended(lambda: _leave_server(sock, selector, children))
                    request, fds = _recv(sock, with_fd=True)
                    _call_prefork(prefork, request)
                    reply, done_r = _fork_one(request, fds, children, (sock, selector), relay)
                    _send(sock, reply, [done_r] if done_r is not None else [])
                    if done_r is not None:
                        os.close(done_r)
                else:
                    os.read(wake_r, 4096)
                    _reap(children, relay)
    except (OSError, EOFError, ValueError):
        # The launcher closed the socket, or died. Leave without the interpreter's
        # teardown of everything preloaded: nothing here needs flushing.
        os._exit(0)


def _hook(name: str | None) -> Callable[..., Any] | None:
    if not name:
        return None
    try:
        return cast(Callable[..., Any], load_entry(name))
    except Exception:  # forking works without it
        traceback.print_exc()
        return None


def _leave_server(
    sock: socket.socket, selector: selectors.BaseSelector, children: Mapping[int, _Child]
) -> None:
    """In a process forked from the server: close what is the server's (the launcher's
    socket, the wake-up pipe, the attempts' done pipes, whose EOF must come from the
    server alone) and put its signal handling back."""
    os.close(signal.set_wakeup_fd(-1))
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for key in list(selector.get_map().values()):
        if key.fileobj is not sock:
            os.close(key.fd)  # the wake-up pipe's read end
    selector.close()
    sock.close()
    for child in children.values():
        os.close(child.done_w)


class _Relay:
    """The server's side of the relay process: hands it one socket end per attempt."""

    def __init__(self, hook: Callable[[Any], Any], restart_interval: float) -> None:
        self.hook = hook
        self.restart_interval = restart_interval
        self.control: socket.socket | None = None
        self.pid = 0
        self.started = time.monotonic()

    @classmethod
    def start(
        cls,
        hook: Callable[[Any], Any] | None,
        leave_server: Callable[[], None],
        restart_interval: float = RELAY_RESTART_INTERVAL,
    ) -> _Relay | None:
        """Fork the relay process; `leave_server` closes, in it, what is the server's."""
        if hook is None:
            return None
        relay = cls(hook, restart_interval)
        relay._fork(leave_server)
        return relay

    def _fork(self, leave_server: Callable[[], None]) -> None:
        self.started = time.monotonic()
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            return
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return
        if pid == 0:
            ours.close()
            leave_server()
            proc_title.set_title("miniflow forkserver relay", "mf-relay")
            _relay_main(theirs, self.hook)
        theirs.close()
        self.control, self.pid = ours, pid

    def ended(self, pid: int) -> None:
        """`pid` was reaped: if it was the relay process, it needs a successor."""
        if not self.pid or pid != self.pid:
            return
        self.pid = 0
        if self.control is not None:
            self.control.close()
            self.control = None

    def restart_if_ended(self, leave_server: Callable[[], None]) -> None:
        """Start a new relay process if the last one ended (reaped), once per interval: a
        relay that died (killed, out of memory) would otherwise leave every later attempt
        to open its own connection."""
        if self.pid or time.monotonic() - self.started < self.restart_interval:
            return
        print("miniflow forkserver: the relay process ended; starting another", file=sys.stderr)
        self._fork(leave_server)

    def pair(self) -> tuple[socket.socket, socket.socket] | None:
        """(the relay's end, the attempt's end) of a new relay socket; None without one."""
        if self.control is None:
            return None
        try:
            return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:  # out of fds: this attempt does its own work
            return None

    def hand_over(self, end: socket.socket) -> None:
        """Give the relay process its end (and close ours); a relay gone is not retried."""
        try:
            if self.control is not None:
                socket.send_fds(self.control, [b"s"], [end.fileno()])
        except OSError:
            if self.control is not None:
                self.control.close()
            self.control = None
        finally:
            end.close()


def _relay_main(control: socket.socket, hook: Callable[[Any], Any]) -> NoReturn:
    """Main of the relay process: answer attempts' messages until the server is gone."""
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    try:
        while True:
            for ready, _ in selector.select():
                conn = cast(socket.socket, ready.fileobj)
                if conn is control:
                    data, fds, _flags, _addr = socket.recv_fds(control, 1, 1)
                    if not data:
                        os._exit(0)  # the server is gone; attempts left see EOF
                    for fd in fds:
                        selector.register(socket.socket(fileno=fd), selectors.EVENT_READ)
                elif not _relay_one(conn, hook):
                    selector.unregister(conn)
                    conn.close()
    except BaseException:
        traceback.print_exc()
    os._exit(0)


def _relay_one(conn: socket.socket, hook: Callable[[Any], Any]) -> bool:
    """Answer one message on `conn`; False at its end or on any error (the attempt then
    sees EOF and does the work itself)."""
    try:
        (size,) = _HEADER.unpack(_recv_exactly(conn, _HEADER.size))
        answer = hook(_recv_exactly(conn, size))
        if not isinstance(answer, bytes):
            raise TypeError(f"the relay hook answered {type(answer).__name__}, not bytes")
        conn.sendall(_HEADER.pack(len(answer)) + answer)
    except (OSError, EOFError):
        return False
    except Exception:
        traceback.print_exc()
        return False
    return True


def _call_prefork(hook: Callable[..., Any] | None, request: dict[str, Any]) -> None:
    if hook is None or not isinstance(request.get("env"), dict):
        return
    try:
        hook(request["env"], request.get("dag_file"))
    except Exception:  # an optimisation: the fork goes ahead without it
        traceback.print_exc()


def _fork_one(
    request: dict[str, Any],
    fds: list[int],
    children: dict[int, _Child],
    server: tuple[socket.socket, selectors.BaseSelector],
    relay: _Relay | None = None,
) -> tuple[dict[str, Any], int | None]:
    """Fork the attempt (in the server); the reply and the done pipe's read end."""
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return {"errno": 0, "error": "a fork request needs one go pipe"}, None
    go_fd = fds[0]
    done_r, done_w = os.pipe()
    pair = relay.pair() if relay is not None else None
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (go_fd, done_r, done_w):
            os.close(fd)
        for end in pair or ():
            end.close()
        return {"errno": exc.errno, "error": str(exc)}, None
    if pid == 0:
        # The attempt: keep nothing of the server's but stdio and the go pipe.
        _leave_server(*server, children)
        os.close(done_r)
        os.close(done_w)
        if relay is not None and relay.control is not None:
            relay.control.close()
        if pair is not None:
            pair[0].close()
            request["env"] = {**request["env"], RELAY_FD_ENV: str(pair[1].detach())}
        _attempt(request, go_fd)
    os.close(go_fd)
    if relay is not None and pair is not None:
        pair[1].close()
        relay.hand_over(pair[0])
    children[pid] = _Child(request["exit"], done_w)
    return {"pid": pid}, done_r


def _reap(children: dict[int, _Child], relay: _Relay | None = None) -> None:
    """Reap ended attempts: record the code of those that could not, close their done pipe.
    Also reaps the relay process if it ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        child = children.pop(pid, None)
        if child is None:
            if relay is not None:
                relay.ended(pid)
            continue
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
        # 125 without an exit file: the go pipe's EOF, the attempt never ran (no record).
        if code != NOT_STARTED_CODE and not os.path.exists(child.exit_path):
            with contextlib.suppress(OSError), open(child.exit_path, "w") as f:
                f.write(str(code))
        os.close(child.done_w)


def replace_environ(env: Mapping[str, str]) -> None:
    """Make `os.environ` exactly `env`, changing only what differs: an attempt's environment
    is mostly the forkserver's, and clearing and refilling it (every variable unset and
    set again, in pages copied for the child) cost a forked attempt ~0.75 ms of CPU."""
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _attempt(request: dict[str, Any], go_fd: int) -> NoReturn:
    """The forked attempt: wait for go, run `entry(argv)`, record its exit code."""
    code = 1
    try:
        os.setsid()
        title = request.get("title") or " ".join(["miniflow-worker", *request["argv"]])
        proc_title.set_title(title, "miniflow-worker")
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        if os.read(go_fd, 1) != b"\n":
            os._exit(NOT_STARTED_CODE)  # the launcher died before recording the launch
        os.close(go_fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        replace_environ(request["env"])
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, io.TextIOWrapper):
                stream.reconfigure(line_buffering=True)
        try:
            result = load_entry(request["entry"])(request["argv"])
            code = result if isinstance(result, int) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError), open(request["exit"], "w") as f:
            f.write(str(code & 0xFF))
        os._exit(code & 0xFF)
