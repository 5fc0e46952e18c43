"""Console entry point `miniflow-worker` (see `miniflow_worker.runner` for the run itself).

`runner.main` returns an exit code instead of exiting so the local launcher
can call it in a forked, pre-warmed process. Here, in a process of its own,
one more thing matters: a Python task runs in a daemon thread that cannot be
killed, so when the worker gives up on it (fenced out, SIGTERM, timeout) the
process leaves with `os._exit` after flushing, instead of letting interpreter
shutdown wait for, or tear down under, user code still running.

The cyclic garbage collector is off while the worker's modules are imported:
SQLAlchemy, the store and the DAG API leave ~95,000 long-lived container
objects and almost no garbage (the ~130 collections that ran during the
import freed ~600 objects), and those collections were about a fifth of the
import's CPU time. The survivors are then frozen (`gc.freeze`), so later
collections in the run, user code's included, do not walk them again.
"""

from __future__ import annotations

import gc
import os
import sys


def main() -> None:
    gc.disable()
    try:
        from miniflow_worker import runner
    finally:
        gc.freeze()
        gc.enable()

    code = runner.main(sys.argv[1:])
    if runner.abandoned_threads():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed pipe must not change the exit code
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
