"""`miniflow_worker.relay`: what the forkserver's relay process refuses to do."""

from __future__ import annotations

import time
from typing import Any

from miniflow_worker import relay


def test_the_relay_does_not_start_a_step_its_child_may_have_given_up_on() -> None:
    # A child waits `CHILD_TIMEOUT` for its answer, then does the step itself: a step
    # that could still be running then is refused (here: before any engine is made).
    def no_engine(url: str) -> Any:
        raise AssertionError("no step should start")

    late = time.monotonic() + relay.SERVER_TIMEOUT  # less than a step's time left
    message = relay.dumps(("claim", "postgresql+asyncpg://x/y", {}, late))
    assert relay.loads(relay.answer(message, no_engine)) == ("error", "asked too late")
