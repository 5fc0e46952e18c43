"""Process-level helpers of the local launcher: files, spawning, signals, logs.

What `LocalLauncher` does with the operating system, kept apart from its event
bookkeeping (the forked-Python side lives in `local_fork`).

Per attempt, next to each other under
`state_dir/logs/<dag_id>/<run_id>/<task_id>/` (components percent-escaped):

- `<try>.log`    stdout + stderr of the attempt (kept: `miniflow tasks logs` reads it);
- `<try>.launch` the launch marker (JSON: the key, pid, the process start time
  from `/proc/<pid>/stat` and the boot id, so a recycled pid or a reboot is
  never mistaken for our process; plus kind, handle, timeout, launch time);
- `<try>.exit`   the exit code, written when the attempt ends (by the `sh`
  wrapper for bash/pod/exec kinds; by a forked Python attempt itself, or the
  forkserver for a death by signal, see `local_fork`), so a restarted
  scheduler that is no longer the parent still learns the code;
- `<try>.termination-log` a `Pod(..., push_result=True)` task's termination
  message file: `/dev/termination-log` in its command and args stands for it
  (the host has no such file to give), created empty before the command runs,
  read (at most 4096 bytes, as the kubelet) when it ends.

And `state_dir/live/<hash of the key>`: a hard link to the marker of every
attempt launched whose exit the scheduler has not acknowledged yet (the
"live index"). A restarted launcher lists it to find every attempt that may
still run or whose exit was never recorded; `acknowledge` unlinks the entry.

**The go pipe.** A process is started blocked on a pipe (fd 3 of the `sh`
wrapper; for forked Python, an fd passed to the forkserver) and runs nothing
until the launcher has written the marker (and the live entry) and then a byte
on the pipe. If the launcher dies in between, the pipe reaches EOF and the
process exits without running the command and without an exit file: "no
marker" always means "never ran", so relaunching such a try can never run it
twice.

Commands are always executed from an argv list, never interpolated into a shell
string. Spawning uses `os.posix_spawn` (vfork+exec in glibc, faster than
`subprocess.Popen`, and no Popen object that warns when left unreaped at
shutdown): the launcher reaps its children itself with `os.waitpid`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import signal
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from miniflow.errors import StateDirError
from miniflow.launchers.base import MAX_TERMINATION_MESSAGE, AttemptKey

LOG_TAIL_LINES = 100
LOG_TAIL_BYTES = 16 * 1024

GO_FD = 3
"""The fd on which a spawned wrapper waits for the launcher's go byte."""

NOT_STARTED_CODE = 125
"""Exit code of a wrapper whose go pipe reached EOF: the command never ran."""

# `sh -c WRAPPER <exitfile> argv...`: wait for the go byte on fd 3 (EOF: the
# launcher died before recording the launch, so run nothing), close fd 3, run
# argv, record its exit code, exit with it. dash starts in well under a
# millisecond; `read` and `printf` are builtins, and the file is written with one
# write(2) (a reader treats an empty/garbled file as "unknown"). `trap : TERM`
# keeps the wrapper alive through the group's SIGTERM until the command has
# finished (a handler, unlike an ignore, is reset in the command), so the command
# gets its whole grace period and its exit code is still recorded.
EXIT_FILE_WRAPPER = (
    f"read -r _ <&{GO_FD} || exit {NOT_STARTED_CODE}; exec {GO_FD}<&-; "
    'trap : TERM; "$@"; rc=$?; printf %s "$rc" > "$0"; exit $rc'
)

PERMANENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.ELOOP}
)
"""Launch failures that will not heal by themselves (a state dir that is not
writable, read-only, or gone; a missing `sh`); EAGAIN, EMFILE, ENOMEM, ENOSPC...
may work on a later try."""


def is_permanent(exc: OSError) -> bool:
    """True if a launch that failed with `exc` cannot succeed by trying again."""
    return exc.errno in PERMANENT_ERRNOS


_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+=:@,")


def check_state_dir(state_dir: Path) -> None:
    """Create the state dir's `logs` and `live` folders and prove both writable.

    The state dir itself may be created, its parent must exist (a missing mount
    point is an error, not something to create). Raises `StateDirError` naming
    the directory and the reason, so an unusable directory is one clear error at
    start instead of a failed launch per task.
    """
    try:
        if not state_dir.is_dir():
            if not state_dir.parent.is_dir():
                raise StateDirError(
                    f"state directory {state_dir} cannot be created: "
                    f"its parent {state_dir.parent} does not exist or is not a directory"
                )
            state_dir.mkdir(exist_ok=True)
        for folder in (state_dir / "logs", live_dir(state_dir)):
            folder.mkdir(exist_ok=True)
            probe = folder / f".probe-{os.getpid()}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            probe.unlink()
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise StateDirError(
            f"state directory {state_dir} is not usable: {exc.strerror or exc}{where}"
        ) from exc


def safe_component(value: str) -> str:
    """A reversible, collision-free file name for an id: unsafe bytes become %XX."""
    out = "".join(ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in value)
    if not out or out.startswith("."):  # "", ".", "..", hidden files
        out = "%2E" + out[1:] if out else "%00"
    return out


@dataclass(frozen=True, slots=True)
class AttemptPaths:
    """The files of one attempt (see the module docstring)."""

    log: Path
    exit: Path
    marker: Path
    termination: Path

    @classmethod
    def of(cls, state_dir: Path, key: AttemptKey) -> AttemptPaths:
        folder = (
            state_dir
            / "logs"
            / safe_component(key.dag_id)
            / safe_component(key.run_id)
            / safe_component(key.task_id)
        )
        if key.map_index >= 0:
            folder = folder / f"map-{int(key.map_index)}"
        stem = str(int(key.try_number))
        return cls(
            log=folder / f"{stem}.log",
            exit=folder / f"{stem}.exit",
            marker=folder / f"{stem}.launch",
            termination=folder / f"{stem}.termination-log",
        )


@dataclass(frozen=True, slots=True)
class Marker:
    """Content of a `<try>.launch` file: enough to find the process again safely."""

    pid: int
    start_time: int | None  # clock ticks since boot (/proc/<pid>/stat field 22)
    boot_id: str
    kind: str
    handle: str
    launched_at: float  # time.time()
    timeout: float | None
    # The key, so a live-index entry (a link to this file) names its attempt.
    # Empty in markers written before the live index existed.
    dag_id: str = ""
    run_id: str = ""
    task_id: str = ""
    try_number: int = 0
    owner: str = ""
    """The scheduler instance that launched it ("" in markers from before owners)."""
    map_index: int = -1

    @property
    def key(self) -> AttemptKey | None:
        if not self.dag_id:
            return None
        return AttemptKey(self.dag_id, self.run_id, self.task_id, self.try_number, self.map_index)


def live_dir(state_dir: Path) -> Path:
    return state_dir / "live"


def live_entry(state_dir: Path, key: AttemptKey) -> Path:
    """The live-index entry of an attempt (a hash: ids may be longer than a file name)."""
    parts: list[object] = [key.dag_id, key.run_id, key.task_id, key.try_number]
    if key.map_index >= 0:
        parts.append(key.map_index)
    raw = json.dumps(parts)
    return live_dir(state_dir) / hashlib.sha256(raw.encode()).hexdigest()[:40]


def write_marker(
    path: Path, marker: Marker, *, live: Path | None = None, replace: bool = True
) -> Marker | None:
    """Write the marker atomically; with `live`, link it into the live index first.

    The live entry is a hard link to the same file, made before the marker gets
    its final name: a crash in between leaves a live entry (enough to adopt the
    attempt), never a marker that the live index does not know.

    Both names are also the launch's claim on the try: the live entry is made only
    where none exists, and without `replace` (the launcher found no marker) so is the
    marker. Of two launchers that start the same try at once (a peer adopted it while
    this scheduler was paused mid-launch, and launched it again) one wins. Returns None
    when this launch won; else the winner's marker, and this launch's process must
    never run.
    """
    # Named per process and thread: two launchers of one try must not share it.
    tmp = path.with_name(f"{os.getpid()}-{threading.get_ident()}.{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(marker)))
        if live is not None:
            other = _claim_live(tmp, live, path)
            if other is not None:
                return other
        try:
            if replace:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)
        except OSError as exc:
            if live is not None:  # ours: a live entry without a marker must not stay
                with contextlib.suppress(FileNotFoundError):
                    live.unlink()
            if isinstance(exc, FileExistsError) and (other := read_marker(path)) is not None:
                return other  # launched, and maybe ended, by a peer since the launcher looked
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left unless it became the marker
    return None


def _claim_live(tmp: Path, live: Path, marker_path: Path) -> Marker | None:
    """Link `tmp` as the live entry; if another launch holds it, that launch's marker."""
    for _ in range(3):
        try:
            os.link(tmp, live)
            return None
        except FileExistsError:
            pass
        other = read_marker(live)
        if other is not None and (marker_process_alive(other) or marker_path.exists()):
            return other
        # Left by a launcher that died between its two links: that process never got
        # its go byte, so it never ran (or the entry went away meanwhile).
        with contextlib.suppress(FileNotFoundError):
            live.unlink()
    other = read_marker(live)
    if other is None:
        raise FileExistsError(errno.EEXIST, "live entry keeps coming back", str(live))
    return other


def read_marker(path: Path) -> Marker | None:
    try:
        data = json.loads(path.read_text())
        return Marker(**data)
    except (OSError, ValueError, TypeError):
        return None


def remove_live(state_dir: Path, key: AttemptKey) -> None:
    """Retire the attempt's live-index entry (its exit is committed)."""
    with contextlib.suppress(FileNotFoundError):
        live_entry(state_dir, key).unlink()


def list_live(state_dir: Path) -> list[Marker]:
    """The markers of every attempt in the live index (unreadable entries skipped)."""
    try:
        entries = list(os.scandir(live_dir(state_dir)))
    except FileNotFoundError:
        return []
    markers = []
    for entry in entries:
        if entry.name.startswith("."):
            continue  # a probe of check_state_dir
        marker = read_marker(Path(entry.path))
        if marker is not None and marker.key is not None:
            markers.append(marker)
    return markers


def forget_exit(paths: AttemptPaths) -> None:
    """Remove what a spent launch left about its end (a new launch of the try writes its
    own); its log stays, the new launch appends to it."""
    for path in (paths.exit, paths.termination):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_exit_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def write_exit_file(path: Path, code: int) -> None:
    with contextlib.suppress(OSError):
        path.write_text(str(code))


_BOOT_ID: str | None = None


def boot_id() -> str:
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            _BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            _BOOT_ID = ""
    return _BOOT_ID


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of a process from /proc, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and ")": split after the last ")".
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):
        return None


def marker_process_alive(marker: Marker) -> bool:
    """True if the marker's pid is still the very process we launched, not a zombie."""
    if marker.start_time is None or marker.boot_id != boot_id():
        return False
    stat = proc_stat(marker.pid)
    return stat is not None and stat[1] == marker.start_time and stat[0] not in ("Z", "X")


def reap_if_our_zombie(marker: Marker) -> int | None:
    """Reap the marker's process if it is a zombie child of ours; its exit code."""
    stat = proc_stat(marker.pid)
    if stat is None or stat[0] != "Z" or stat[1] != marker.start_time:
        return None
    try:
        pid, status = os.waitpid(marker.pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return exit_code_from_status(status) if pid else None


def exit_code_from_status(status: int) -> int:
    """waitpid status → exit code, 128+N for a death by signal N (shell convention)."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def signal_group(pid: int, sig: int) -> bool:
    """Signal the attempt's process group (its pid: each attempt leads its session)."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        pass  # a forked child may not have called setsid() yet: signal it alone
    except PermissionError:
        return False
    try:
        os.kill(pid, sig)
        return True
    except OSError:
        return False


def go_pipe() -> tuple[int, int]:
    """(read, write) ends of a go pipe; both close-on-exec (the read end is dup'ed
    onto the wrapper's fd 3, the write end never leaves the launcher)."""
    return os.pipe()


def send_go(fd: int) -> None:
    """Let the attempt run: one byte, then close (the reader needs only the byte).

    A wrapper that already died (its log could not be opened...) has closed the
    read end: nothing to do, its exit is reported like any other.
    """
    try:
        with contextlib.suppress(BrokenPipeError):
            os.write(fd, b"\n")
    finally:
        os.close(fd)


def spawn_wrapped(
    argv: Sequence[str],
    *,
    sh: str,
    log_path: Path,
    exit_path: Path,
    env: Mapping[str, str],
    go_fd: int,
) -> int:
    """Start `argv` under the exit-file wrapper in a new session; return its pid.

    The wrapper waits for the go byte on `go_fd` (the pipe's read end, dup'ed to
    its fd 3) before running anything. stdin is /dev/null; stdout and stderr
    append to the log file (opened in the child by posix_spawn, so the parent
    never holds the log open).
    """
    moved = None
    if go_fd == GO_FD:  # dup2(3, 3) would leave close-on-exec set: move it first
        moved = go_fd = os.dup(go_fd)
    actions = [
        # First, before the opens below could reuse a low fd number the pipe holds.
        (os.POSIX_SPAWN_DUP2, go_fd, GO_FD),
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        return os.posix_spawn(
            sh,
            ["sh", "-c", EXIT_FILE_WRAPPER, str(exit_path), *argv],
            env,
            file_actions=actions,
            setsid=True,
            setsigmask=(),
            # Python ignores SIGPIPE/SIGXFSZ; restore the defaults like Popen does.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    finally:
        if moved is not None:
            os.close(moved)


def read_termination_message(path: Path) -> str | None:
    """A push_result Pod attempt's termination message (None: no such file, or empty)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TERMINATION_MESSAGE)
    except OSError:
        return None
    return data.decode("utf-8", errors="replace") or None


def read_tail(
    path: Path, *, max_lines: int = LOG_TAIL_LINES, max_bytes: int = LOG_TAIL_BYTES
) -> str | None:
    """The last lines of a log (at most `max_lines` and `max_bytes`), None if no file."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes)
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    if len(data) == max_bytes and size > max_bytes:
        text = text.partition("\n")[2]  # drop the cut first line
    return "\n".join(text.splitlines()[-max_lines:])


def read_from(path: Path, offset: int, limit: int = 1 << 20) -> bytes:
    """Up to `limit` bytes of the file from `offset`; b"" if it does not exist (yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""


def tail_offset(path: Path, lines: int) -> int:
    """Byte offset where the last `lines` lines of the file start (0: whole file)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0
    with f:
        end = f.seek(0, os.SEEK_END)
        if lines <= 0:
            return end
        limit = end
        if end:
            f.seek(end - 1)
            if f.read(1) == b"\n":
                limit = end - 1  # the final newline ends the last line, it starts none
        pos, seen = end, 0
        while pos > 0:
            start = max(0, pos - 8192)
            f.seek(start)
            chunk = f.read(pos - start)
            idx = min(len(chunk), limit - start)
            while (idx := chunk.rfind(b"\n", 0, idx)) >= 0:
                seen += 1
                if seen == lines:
                    return start + idx + 1
            pos = start
        return 0


async def iter_log(
    path: Path, *, done: asyncio.Event | None, tail_lines: int | None, poll: float = 0.1
) -> AsyncIterator[str]:
    """Lines of a log (without "\\n"); while `done` is unset, wait for more.

    A growing file is re-read every `poll` seconds at most; the attempt's exit
    (`done`) ends the wait at once, then the rest of the file is drained.
    """
    offset = tail_offset(path, tail_lines) if tail_lines is not None else 0
    pending = b""
    while True:
        chunk = read_from(path, offset)
        offset += len(chunk)
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
        if chunk:
            continue
        if done is None or done.is_set():
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), poll)
    if pending:
        yield pending.decode("utf-8", errors="replace")
