"""`miniflow_worker.relay`: what the forkserver's relay process refuses to do."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest
from miniflow_worker import relay


def test_the_relay_does_not_start_a_step_its_child_may_have_given_up_on() -> None:
    # A child waits `CHILD_TIMEOUT` for its answer, then does the step itself: a step
    # that could still be running then is refused (here: before any engine is made).
    def no_engine(url: str) -> Any:
        raise AssertionError("no step should start")

    late = time.monotonic() + relay.SERVER_TIMEOUT  # less than a step's time left
    message = relay.dumps(("claim", "postgresql+asyncpg://x/y", {}, late))
    assert relay.loads(relay.answer(message, no_engine)) == ("error", "asked too late")


def _pair(monkeypatch: pytest.MonkeyPatch, timeout: float) -> tuple[relay.Relay, socket.socket]:
    """A child's relay socket (as the forkserver hands it over) and the relay's end."""
    monkeypatch.setattr(relay, "CHILD_TIMEOUT", timeout)
    ours, theirs = socket.socketpair()
    monkeypatch.setenv(relay.RELAY_FD_ENV, str(ours.detach()))
    child = relay.Relay.from_environ("postgresql+asyncpg://x/y")
    assert child is not None and relay.RELAY_FD_ENV not in os.environ
    return child, theirs


def test_a_child_gives_up_on_a_relay_that_does_not_answer_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    child, theirs = _pair(monkeypatch, 0.3)
    started = time.monotonic()
    with pytest.raises(relay.RelayUnavailable, match="no answer"):
        asyncio.run(child.record(None, []))  # type: ignore[arg-type]
    assert 0.25 < time.monotonic() - started < 5
    size = relay._HEADER.unpack(theirs.recv(relay._HEADER.size))[0]
    op, _url, _args, deadline = relay.loads(theirs.recv(size))
    assert op == "record" and deadline <= started + 0.31  # what the relay is told
    theirs.close()


def test_a_child_reads_its_answer_or_the_relays_end(monkeypatch: pytest.MonkeyPatch) -> None:
    child, theirs = _pair(monkeypatch, 5.0)
    answer = relay.dumps(("ok", [7]))
    theirs.sendall(relay._HEADER.pack(len(answer)) + answer)
    assert asyncio.run(child.record(None, [])) == {7}  # type: ignore[arg-type]
    theirs.close()
    with pytest.raises(relay.RelayUnavailable, match="no answer from the relay process"):
        asyncio.run(child.record(None, []))  # type: ignore[arg-type]
