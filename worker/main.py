"""Console entry point `miniflow-worker` (see `miniflow_worker.runner` for the run itself).

`runner.main` returns an exit code instead of exiting so the local launcher
can call it in a forked, pre-warmed process. Here, in a process of its own,
one more thing matters: a Python task runs in a daemon thread that cannot be
killed, so when the worker gives up on it (fenced out, SIGTERM, timeout) the
process leaves with `os._exit` after flushing, instead of letting interpreter
shutdown wait for, or tear down under, user code still running.

The cyclic garbage collector is off during start-up, until the try is claimed
(`runner.main(..., resume_gc=True)`): importing SQLAlchemy, the store and the
DAG API leaves ~95,000 long-lived container objects and almost no garbage (the
~130 collections that ran during the import freed ~600 objects), and those
collections were about a fifth of the import's CPU time; connecting and
claiming add more of the same. The survivors are then frozen (`gc.freeze`) and
collection resumes before any user code runs, so later collections, user
code's included, do not walk them again.
"""

from __future__ import annotations

import gc
import os
import sys


def main() -> None:
    gc.disable()
    from miniflow_worker import runner

    code = runner.main(sys.argv[1:], resume_gc=True)
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
