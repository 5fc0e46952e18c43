"""A stand-in for `miniflow_worker.runner.main` used by the local launcher tests."""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> int:
    """Print the argv and a marker variable, optionally wait, return ENTRY_CODE."""
    print("entry argv:", " ".join(argv))
    print("entry mark:", os.environ.get("ENTRY_MARK", ""), file=sys.stderr)
    wait_for = os.environ.get("ENTRY_WAIT_FOR")
    if wait_for:
        print("entry waiting", flush=True)
        while not os.path.exists(wait_for):
            time.sleep(0.02)
    return int(os.environ.get("ENTRY_CODE", "0"))
