"""`depends_on_past` / `wait_for_downstream` on real databases, with the instant launcher:
a try is claimed only once the same task of the previous run (by logical date) succeeded
or was skipped; a first run is not held; `dags test` runs neither hold nor are held."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow import DAG, Bash, Empty
from miniflow.launchers.base import TaskSpec
from miniflow.scheduler import manual_runs
from miniflow.store import engine as store_engine
from miniflow.store import task_instances as store_tis
from tests.integration.test_scheduler_rules import START, Harness


class Outcomes:
    """Exit codes by (run_id, task_id): 1 where listed in `failing`, else 0."""

    def __init__(self, *failing: tuple[str, str]) -> None:
        self.failing = set(failing)

    def __call__(self, spec: TaskSpec) -> int:
        return 1 if (spec.key.run_id, spec.key.task_id) in self.failing else 0


async def _trigger(h: Harness, run_id: str, hours: int) -> str:
    async with store_engine.transaction(h.sessions) as session:
        return await manual_runs.trigger(
            session, "past", conf_json=None, now=START + timedelta(hours=hours), run_id=run_id
        )


async def _states(h: Harness, run_id: str) -> dict[str, str]:
    return {t: ti.state for t, ti in (await h.tis("past", run_id)).items()}


def _launched(h: Harness, run_id: str) -> set[str]:
    return {s.key.task_id for s in h.launcher.launched if s.key.run_id == run_id}


async def test_depends_on_past_holds_a_task_until_the_previous_run_succeeded(
    engine: AsyncEngine,
) -> None:
    outcomes = Outcomes(("first", "gate"))
    with DAG("past", start_date=START) as dag:
        Bash("gate", "echo gate", depends_on_past=True) >> Bash("after", "echo after")
        Bash("free", "echo free")
    assert dag.serialize("past.py")["tasks"]["gate"]["depends_on_past"] is True
    async with Harness(engine, exit_code=outcomes) as h:
        await h.register(dag)
        first = await _trigger(h, "first", 1)  # a first run is not held
        assert await h.scheduler.run_until_done("past", first, timeout=30) == "failed"
        second = await _trigger(h, "second", 2)
        for _ in range(6):
            await h.scheduler.tick()
        assert await _states(h, second) == {"gate": "scheduled", "after": "none", "free": "success"}
        assert _launched(h, second) == {"free"}
        # The previous run's task succeeds on a second go: the held one runs.
        outcomes.failing.clear()
        async with store_engine.transaction(h.sessions) as session:
            await store_tis.clear(session, "past", first, ["gate", "after"], {})
        assert await h.scheduler.run_until_done("past", first, timeout=30) == "success"
        assert await h.scheduler.run_until_done("past", second, timeout=30) == "success"
        assert _launched(h, second) == {"free", "gate", "after"}


async def test_depends_on_past_holds_an_empty_task_too(engine: AsyncEngine) -> None:
    """An `Empty` task completes without a try, but not before its previous run's
    instance succeeded or was skipped (Airflow holds an EmptyOperator the same way)."""
    outcomes = Outcomes(("first", "up"))
    with DAG("past", start_date=START) as dag:
        Bash("up", "echo up") >> Empty("join", depends_on_past=True) >> Bash("after", "echo")
    async with Harness(engine, exit_code=outcomes) as h:
        await h.register(dag)
        first = await _trigger(h, "first", 1)  # up fails: join is upstream_failed
        assert await h.scheduler.run_until_done("past", first, timeout=30) == "failed"
        assert (await _states(h, first))["join"] == "upstream_failed"
        second = await _trigger(h, "second", 2)
        for _ in range(6):
            await h.scheduler.tick()
        assert await _states(h, second) == {"up": "success", "join": "scheduled", "after": "none"}
        # The previous run's join succeeds once up does: the held join completes (no
        # launch: an Empty task never has a try) and its downstream runs.
        outcomes.failing.clear()
        async with store_engine.transaction(h.sessions) as session:
            await store_tis.clear(session, "past", first, ["up", "join", "after"], {})
        assert await h.scheduler.run_until_done("past", first, timeout=30) == "success"
        assert await h.scheduler.run_until_done("past", second, timeout=30) == "success"
        assert _launched(h, second) == {"up", "after"}
        assert (await h.tis("past", second))["join"].try_number == 0


async def test_wait_for_downstream_also_waits_for_the_previous_runs_downstream(
    engine: AsyncEngine,
) -> None:
    outcomes = Outcomes(("first", "after"))
    with DAG("past", start_date=START) as dag:
        Bash("gate", "echo gate", wait_for_downstream=True) >> Bash("after", "echo after")
    assert dag.serialize("past.py")["tasks"]["gate"]["depends_on_past"] is True
    async with Harness(engine, exit_code=outcomes) as h:
        await h.register(dag)
        first = await _trigger(h, "first", 1)
        assert await h.scheduler.run_until_done("past", first, timeout=30) == "failed"
        second = await _trigger(h, "second", 2)
        for _ in range(6):
            await h.scheduler.tick()
        # gate succeeded in the first run, but its downstream task there failed
        assert await _states(h, second) == {"gate": "scheduled", "after": "none"}


async def test_dags_test_runs_neither_hold_nor_are_held(engine: AsyncEngine) -> None:
    outcomes = Outcomes(("first", "up"))
    with DAG("past", start_date=START) as dag:
        Bash("up", "echo up") >> Bash("gate", "echo gate", depends_on_past=True)
    async with Harness(engine, exit_code=outcomes) as h:
        await h.register(dag)
        first = await _trigger(h, "first", 1)
        assert await h.scheduler.run_until_done("past", first, timeout=30) == "failed"
        assert (await _states(h, first))["gate"] == "upstream_failed"
        when = START + timedelta(hours=2)
        async with store_engine.transaction(h.sessions) as session:
            await manual_runs.trigger_test(
                session, "past", conf_json=None, now=when, logical_date=when, live_threshold=60
            )
        test_run = manual_runs.dags_test_run_id(when)
        assert await h.scheduler.run_until_done("past", test_run, timeout=30) == "success"
        second = await _trigger(h, "second", 3)
        for _ in range(6):
            await h.scheduler.tick()
        # held by "first" (upstream_failed there), not let go by the test run's success
        assert await _states(h, second) == {"up": "success", "gate": "scheduled"}
