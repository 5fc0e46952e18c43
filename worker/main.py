"""Console entry point `miniflow-worker` (see `miniflow_worker.runner` for the run itself).

`runner.main` returns an exit code instead of exiting so the local launcher
can call it in a forked, pre-warmed process. Here, in a process of its own,
one more thing matters: a Python task runs in a daemon thread that cannot be
killed, so when the worker gives up on it (fenced out, SIGTERM, timeout) the
process leaves with `os._exit` after flushing, instead of letting interpreter
shutdown wait for, or tear down under, user code still running.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from miniflow_worker import runner

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
