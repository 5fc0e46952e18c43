"""One worker try forked from a real forkserver with its relay, as the local launcher does.

Run as `python -m tests.integration.forked_worker run --dag-id ...` (the worker's
arguments) with the worker's environment: it starts `local_fork.ForkServer` with
the local launcher's preloads, prefork and relay hooks, forks one attempt of
`entry` (the real `runner.main`), lets it go, waits for its exit code and exits
with it. The attempt's log goes to stderr.

`FORKED_DAG_FILE`: the DAG file the fork request names (the forkserver imports it
before forking, as for the local launcher's Python tries); `FORKED_ALSO`: task ids
of the same run forked afterwards from the same forkserver, one after another
(the exit code is the first non-zero one); `FORKED_TOUCH_BETWEEN`: a file whose
content is changed (a comment appended) between two forks.

`entry` says "miniflow-test: the worker connected" whenever the forked worker
opens a database connection of its own. `FORKED_RELAY_DIES` = "<step>:before" or
"<step>:after" (step: claim / record) makes the relay process die at that step,
before doing it or after committing it without answering; with
`FORKED_RELAY_DIES_ONCE` (a file's path) only the first time (the file says it
happened), and the forkserver starts another relay process without waiting.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from miniflow.launchers import local, local_fork

HOOKS = "tests.integration.forked_worker"


def entry(argv: list[str]) -> int:
    from miniflow_worker import runner
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def connected(*_args: object) -> None:
        print("miniflow-test: the worker connected", file=sys.stderr, flush=True)

    event.listen(Engine, "connect", connected)
    code: int = runner.main(argv)
    return code


def relay(message: bytes) -> bytes:
    """The production relay hook, dying where `FORKED_RELAY_DIES` says."""
    from miniflow_worker import relay as relay_steps
    from miniflow_worker import warm

    step, _, when = os.environ.get("FORKED_RELAY_DIES", "").partition(":")
    op = relay_steps.loads(message)[0]
    once = os.environ.get("FORKED_RELAY_DIES_ONCE")
    if once and op == step:
        if os.path.exists(once):
            step = ""  # died once already: a relay like any other
        else:
            Path(once).touch()
    if op == step and when == "before":
        os._exit(9)
    answer = warm.relay(message)
    if op == step and when == "after":
        os._exit(9)
    return answer


def main() -> int:
    argv = sys.argv[1:]
    dies = bool(os.environ.get("FORKED_RELAY_DIES"))
    server = local_fork.ForkServer(
        ["miniflow_worker.runner", "miniflow_worker.warm", HOOKS],
        env=dict(os.environ),
        sys_path=sys.path,
        prefork=local.PREFORK_HOOK,
        relay=f"{HOOKS}:relay" if dies else local.RELAY_HOOK,
        relay_restart_interval=(
            0.0 if os.environ.get("FORKED_RELAY_DIES_ONCE") else local_fork.RELAY_RESTART_INTERVAL
        ),
    )
    server.start()
    tasks = [argv[argv.index("--task-id") + 1], *os.environ.get("FORKED_ALSO", "").split()]
    codes = []
    try:
        for i, task_id in enumerate(tasks):
            if i and os.environ.get("FORKED_TOUCH_BETWEEN"):
                with open(os.environ["FORKED_TOUCH_BETWEEN"], "a") as f:
                    f.write(f"# changed before try {i}\n")
            task_argv = list(argv)
            task_argv[argv.index("--task-id") + 1] = task_id
            codes.append(_fork_one(server, task_argv))
    finally:
        server.close()
    return next((code for code in codes if code), 0)


def _fork_one(server: local_fork.ForkServer, argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="mf-forked-") as tmp:
        log_path, exit_path = Path(tmp) / "log", Path(tmp) / "exit"
        go_r, go_w = os.pipe()
        _pid, done = server.fork(
            f"{HOOKS}:entry",
            argv,
            log_path=str(log_path),
            exit_path=str(exit_path),
            env=dict(os.environ),
            go_fd=go_r,
            dag_file=os.environ.get("FORKED_DAG_FILE"),
        )
        os.close(go_r)
        os.write(go_w, b"\n")
        os.close(go_w)
        os.read(done, 1)  # EOF: the attempt's exit code is on disk
        os.close(done)
        sys.stderr.write(log_path.read_text())
        return int(exit_path.read_text())


if __name__ == "__main__":
    sys.exit(main())
