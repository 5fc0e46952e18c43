"""Supervision of a launcher's long-lived background loops (watches, sweepers).

Such a loop is often the only channel a status arrives by: if it died on an
unexpected exception (a malformed answer, a missing key, a bug in a
callback), every attempt it follows would hang with nobody noticing. So it
never runs bare: `supervise` logs the exception with its traceback and runs
the loop again after a capped exponential back-off. Loops are written to be
restartable: they rebuild what they need on entry (a watch relists first).
Cancellation is the only way out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between restarts: `base`, doubled per consecutive crash, at most `cap`."""

    base: float = 0.1
    cap: float = 30.0

    def delay(self, crashes: int) -> float:
        return min(self.cap, self.base * 2.0 ** min(crashes - 1, 30))


async def supervise(
    name: str,
    loop: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run ``loop()`` until cancelled, restarting it whenever it raises or returns.

    A run that lasted longer than the back-off cap counts as healthy: the next
    crash starts the back-off from `backoff.base` again.
    """
    crashes = 0
    while True:
        began = clock()
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting it", name)
        else:
            log.error("%s returned, which it never should; restarting it", name)
        if clock() - began > backoff.cap:
            crashes = 0
        crashes += 1
        await sleep(backoff.delay(crashes))
