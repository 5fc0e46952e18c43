"""What `dags test` prints as its run goes (`miniflow.cli.stream`), on real databases.

The scheduler is driven tick by tick and the stream polled by hand, so which
states it sees is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow import DAG, Bash
from miniflow.cli.stream import RunStream
from miniflow.errors import NotFound
from miniflow.launchers.base import AttemptExited, AttemptKey, TaskSpec
from tests.instant_launcher import InstantLauncher
from tests.integration.test_scheduler_rules import START, Harness


class LoggingLauncher(InstantLauncher):
    """A held try logs one line while followed, until released; a finished try's log is
    gone (as a deleted pod's), only the tail saved on its attempt is left."""

    def __init__(self) -> None:
        super().__init__(hold=True)
        self.released: dict[AttemptKey, asyncio.Event] = {}

    def _finish(self, spec: TaskSpec) -> None:
        self.released.setdefault(spec.key, asyncio.Event()).set()
        self.events.put_nowait(
            AttemptExited(
                spec.key,
                f"instant:{spec.key}",
                0,
                "Completed",
                datetime.now(UTC),
                log_tail=f"saved {spec.key.task_id}",
            )
        )

    async def read_logs(
        self,
        key: AttemptKey,
        handle: str | None,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
    ) -> AsyncIterator[str]:
        if not (follow and key in self.held):
            raise NotFound(f"no log for {key}")
        yield f"live {key.task_id}"
        await self.released.setdefault(key, asyncio.Event()).wait()


def _untimed(lines: list[str]) -> list[str]:
    """State lines without their HH:MM:SS prefix; log lines as they are."""
    return [line.split(" ", 1)[1] if line[:2].isdigit() else line for line in lines]


async def test_states_and_logs_live_and_the_saved_tail_of_a_try_seen_only_ended(
    engine: AsyncEngine,
) -> None:
    with DAG("streamed", start_date=START) as dag:
        Bash("a", "true") >> Bash("b", "true")
    h = Harness(engine)
    h.launcher = h.scheduler.launcher = launcher = LoggingLauncher()
    async with h:
        await h.register(dag)
        run_id = await h.trigger("streamed")
        lines: list[str] = []
        printed = asyncio.Event()  # a's live line is out

        def out(line: str) -> None:
            lines.append(line)
            if line == "a | live a":
                printed.set()

        stream = RunStream(h.sessions, launcher, ("streamed", run_id), out)

        async def tick_until(check: Callable[[], bool]) -> None:
            for _ in range(20):
                if check():
                    return
                await h.scheduler.tick()
            raise AssertionError("the scheduler did not get there")

        await tick_until(lambda: len(launcher.held) == 1)  # a launched...
        await h.scheduler.tick()  # ...and its start recorded
        await stream.poll_once()  # sees a running: follows its log
        await asyncio.wait_for(printed.wait(), 10)
        launcher.release()
        await tick_until(lambda: len(launcher.held) == 1 and len(launcher.launched) == 2)
        launcher.release()  # b ends before the stream ever sees it running
        state = await h.scheduler.run_until_done("streamed", run_id, timeout=30)
        done = asyncio.Event()
        done.set()
        await stream.run(done)  # the last look, then the logs still owed
    assert state == "success"
    assert _untimed(lines) == [
        "a: running (try 1)",
        "a | live a",
        "a: success (try 1)",
        "b: success (try 1)",
        "b | saved b",  # its pod is gone: the tail saved on its attempt
    ]
