"""Scheduler rules end-to-end on real databases, with the in-process instant launcher.

DAGs are built in the test process and stored as the parse loop would store
them (no parse subprocess), exit codes are scripted through the rendered Bash
command (`exit N`), and the scheduler is driven tick by tick.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow import DAG, Bash
from miniflow.cli.operations import downstream_of
from miniflow.errors import ConfValidationError
from miniflow.launchers.base import TaskSpec
from miniflow.scheduler import manual_runs
from miniflow.scheduler.clock import Clock, ManualClock
from miniflow.scheduler.core import Scheduler, SchedulerSettings
from miniflow.store import attempts as store_attempts
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import pools as store_pools
from miniflow.store import runs as store_runs
from miniflow.store import task_instances as store_tis
from miniflow.store.records import TaskInstanceRecord
from tests.instant_launcher import InstantLauncher

START = datetime(2026, 1, 1, tzinfo=UTC)


def exit_from_command(spec: TaskSpec) -> int:
    """`... exit N` → N; anything else succeeds."""
    match = re.search(r"exit (\d+)\s*$", spec.bash_command or "")
    return int(match.group(1)) if match else 0


class Harness:
    """A scheduler over `engine` with an instant launcher; DAGs registered in-process."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        hold: bool = False,
        clock: Clock | None = None,
        exit_code: Callable[[TaskSpec], int] = exit_from_command,
        **settings: Any,
    ) -> None:
        self.engine = engine
        self.sessions = store_engine.sessionmaker(engine)
        self.launcher = InstantLauncher(exit_code, hold=hold)
        base: dict[str, Any] = {
            "schedule_runs": False,
            "idle_wait": 0.05,
            "run_check_interval": 0.1,
            "full_sweep_interval": 0.2,
        }
        self.scheduler = Scheduler(
            engine=engine,
            launcher=self.launcher,
            dags_folder=None,
            settings=SchedulerSettings(**{**base, **settings}),
            clock=clock,
        )

    async def __aenter__(self) -> Harness:
        await self.scheduler.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.scheduler.close()

    async def register(self, *dags: DAG) -> None:
        parsed = [
            store_dags.ParsedFile(
                f"{d.dag_id}.py", 1, 1, "0" * 64, [d.serialize(f"{d.dag_id}.py")], None
            )
            for d in dags
        ]
        async with store_engine.transaction(self.sessions) as session:
            await store_dags.apply_parse(session, parsed, [], datetime.now(UTC))
        self.scheduler.dags.invalidate([d.dag_id for d in dags])

    async def trigger(
        self, dag_id: str, conf_json: str | None = None, run_id: str | None = None
    ) -> str:
        async with store_engine.transaction(self.sessions) as session:
            return await manual_runs.trigger(
                session, dag_id, conf_json=conf_json, now=self.scheduler.clock.now(), run_id=run_id
            )

    async def run(self, dag_id: str, conf_json: str | None = None) -> tuple[str, str]:
        run_id = await self.trigger(dag_id, conf_json)
        return run_id, await self.scheduler.run_until_done(dag_id, run_id, timeout=30)

    async def tis(self, dag_id: str, run_id: str) -> dict[str, TaskInstanceRecord]:
        async with store_engine.transaction(self.sessions) as session:
            return {t.task_id: t for t in await store_tis.list_for_run(session, dag_id, run_id)}

    async def run_state(self, dag_id: str, run_id: str) -> str:
        async with store_engine.transaction(self.sessions) as session:
            return (await store_runs.get_run(session, dag_id, run_id)).state

    async def all_runs(self, dag_id: str) -> list[Any]:
        async with store_engine.transaction(self.sessions) as session:
            return await store_runs.list_runs(session, dag_id, limit=1000)


# --- trigger rules --------------------------------------------------------------------------


async def test_each_trigger_rule_end_to_end(engine: AsyncEngine) -> None:
    with DAG("rules", start_date=START) as dag:
        ok, bad = Bash("ok", "exit 0"), Bash("bad", "exit 1")
        [ok, bad] >> Bash("all_success", "exit 0")
        bad >> Bash("all_failed", "exit 0", trigger_rule="all_failed")
        [ok, bad] >> Bash("all_failed_skip", "exit 0", trigger_rule="all_failed")
        [ok, bad] >> Bash("all_done", "exit 0", trigger_rule="all_done")
        [ok, bad] >> Bash("one_success", "exit 0", trigger_rule="one_success")
        [ok, bad] >> Bash("one_failed", "exit 0", trigger_rule="one_failed")
        skip = ok >> Bash("one_failed_skip", "exit 0", trigger_rule="one_failed")
        [ok, skip] >> Bash("none_failed", "exit 0", trigger_rule="none_failed")
        bad >> Bash("none_failed_uf", "exit 0", trigger_rule="none_failed")
        bad >> Bash("always", "exit 0", trigger_rule="always")
        skip >> Bash("after_skip", "exit 0")
    async with Harness(engine) as h:
        await h.register(dag)
        run_id, state = await h.run("rules")
        got = {t: ti.state for t, ti in (await h.tis("rules", run_id)).items()}
    assert got == {
        "ok": "success",
        "bad": "failed",
        "all_success": "upstream_failed",
        "all_failed": "success",
        "all_failed_skip": "skipped",
        "all_done": "success",
        "one_success": "success",
        "one_failed": "success",
        "one_failed_skip": "skipped",
        "none_failed": "success",
        "none_failed_uf": "upstream_failed",
        "always": "success",
        "after_skip": "skipped",
    }
    assert state == "failed"  # leaves all_success / none_failed_uf did not succeed
    launched = {s.key.task_id for s in h.launcher.launched}
    assert launched.isdisjoint(
        {"all_success", "all_failed_skip", "one_failed_skip", "after_skip", "none_failed_uf"}
    )


async def test_upstream_failed_propagates_down_a_chain(engine: AsyncEngine) -> None:
    with DAG("chain_fail", start_date=START) as dag:
        Bash("a", "exit 3") >> Bash("b", "exit 0") >> Bash("c", "exit 0") >> Bash("d", "exit 0")
    async with Harness(engine) as h:
        await h.register(dag)
        run_id, state = await h.run("chain_fail")
        tis = await h.tis("chain_fail", run_id)
    assert state == "failed"
    assert tis["a"].state == "failed" and tis["a"].exit_code == 3
    assert [tis[t].state for t in "bcd"] == ["upstream_failed"] * 3
    assert [s.key.task_id for s in h.launcher.launched] == ["a"]


# --- retries --------------------------------------------------------------------------------


async def test_failing_twice_then_succeeding_retries(engine: AsyncEngine) -> None:
    with DAG("flaky", start_date=START) as dag:
        Bash(
            "flaky",
            "exit {{ 0 if try_number >= 3 else 7 }}",
            retries=3,
            retry_delay=timedelta(seconds=0.05),
        )
    async with Harness(engine) as h:
        await h.register(dag)
        run_id, state = await h.run("flaky")
        ti = (await h.tis("flaky", run_id))["flaky"]
        async with store_engine.transaction(h.sessions) as session:
            attempts = await store_attempts.for_task(session, "flaky", run_id, "flaky")
    assert state == "success"
    assert (ti.state, ti.try_number, ti.exit_code) == ("success", 3, 0)
    assert [(a.try_number, a.exit_code) for a in attempts] == [(1, 7), (2, 7), (3, 0)]
    assert [a.state for a in attempts] == ["up_for_retry", "up_for_retry", "success"]
    assert all(a.ended_at is not None for a in attempts)


async def test_retries_exhausted_fail(engine: AsyncEngine) -> None:
    with DAG("hopeless", start_date=START) as dag:
        Bash("t", "exit 1", retries=1, retry_delay=timedelta(seconds=0.01))
    async with Harness(engine) as h:
        await h.register(dag)
        run_id, state = await h.run("hopeless")
        ti = (await h.tis("hopeless", run_id))["t"]
    assert state == "failed"
    assert (ti.state, ti.try_number) == ("failed", 2)


async def _tick_until(h: Harness, predicate: Callable[[], Any], ticks: int = 100) -> None:
    for _ in range(ticks):
        await h.scheduler.tick()
        if await predicate():
            return
    raise AssertionError("condition not reached")


async def test_exponential_backoff_sets_next_retry_at(engine: AsyncEngine) -> None:
    delay, cap = 10.0, 30.0
    with DAG("backoff", start_date=START) as dag:
        Bash(
            "t",
            "exit 1",
            retries=5,
            retry_delay=timedelta(seconds=delay),
            retry_exponential_backoff=True,
            max_retry_delay=timedelta(seconds=cap),
        )
    clock = ManualClock(datetime(2026, 3, 1, tzinfo=UTC))
    async with Harness(engine, clock=clock) as h:
        await h.register(dag)
        run_id = await h.trigger("backoff")
        for n in range(1, 6):

            async def up_for_retry(n: int = n) -> bool:
                ti = (await h.tis("backoff", run_id))["t"]
                return ti.state == "up_for_retry" and ti.try_number == n

            await _tick_until(h, up_for_retry)
            ti = (await h.tis("backoff", run_id))["t"]
            waited = (ti.next_retry_at - clock.now()).total_seconds()
            low = min(delay / 2 * 2 ** (n - 1), cap)
            high = min(delay * 2 ** (n - 1), cap)
            assert low <= waited <= high, (n, waited)
            # not promoted before it is due, promoted once it is
            await h.scheduler.tick()
            assert (await h.tis("backoff", run_id))["t"].state == "up_for_retry"
            clock.advance(waited + 0.001)

        # the last try (6) fails for good
        async def failed() -> bool:
            return (await h.tis("backoff", run_id))["t"].state == "failed"

        await _tick_until(h, failed)
        assert (await h.tis("backoff", run_id))["t"].try_number == 6


# --- limits ---------------------------------------------------------------------------------


async def _drain(
    h: Harness,
    runs: list[tuple[str, str]],
    observe: Callable[[], None],
    release: int = 1,
    ticks: int = 400,
) -> None:
    """Tick; observe; release `release` held attempts; until every run finished."""
    for _ in range(ticks):
        await h.scheduler.tick()
        observe()
        if all([await h.run_state(d, r) in ("success", "failed") for d, r in runs]):
            return
        for key in list(h.launcher.held)[:release]:
            h.launcher.release(key)
    raise AssertionError("runs did not finish")


async def test_parallelism_never_exceeded(engine: AsyncEngine) -> None:
    with DAG("wide", start_date=START) as dag:
        for i in range(10):
            Bash(f"t{i}", "exit 0")
    async with Harness(engine, hold=True, parallelism=3) as h:
        await h.register(dag)
        run_id = await h.trigger("wide")
        peak: list[int] = []
        await _drain(h, [("wide", run_id)], lambda: peak.append(len(h.launcher.held)))
        tis = await h.tis("wide", run_id)
    assert max(peak) == 3
    assert {ti.state for ti in tis.values()} == {"success"}
    assert len(h.launcher.launched) == 10


async def test_max_active_tasks_is_per_dag(engine: AsyncEngine) -> None:
    # More of narrow's tasks wait (older run, same priority) than one claim's candidate
    # window holds ((parallelism - active) * 2 + 16 = 32): free's tasks are not in the
    # first window and must still get the slots narrow's limit leaves free.
    parallelism = 8
    with DAG("narrow", start_date=START, max_active_tasks=2) as narrow:
        for i in range(parallelism * 2 + 16 + 8):
            Bash(f"n{i}", "exit 0")
    with DAG("free", start_date=START) as free:
        for i in range(4):
            Bash(f"f{i}", "exit 0")
    async with Harness(engine, hold=True, parallelism=parallelism) as h:
        await h.register(narrow, free)
        runs = [("narrow", await h.trigger("narrow")), ("free", await h.trigger("free"))]
        per_dag: list[dict[str, int]] = []

        def observe() -> None:
            counts: dict[str, int] = {}
            for key in h.launcher.held:
                counts[key.dag_id] = counts.get(key.dag_id, 0) + 1
            per_dag.append(counts)

        await _drain(h, runs, observe, release=2)
        for dag_id, run_id in runs:
            assert await h.run_state(dag_id, run_id) == "success"
    assert max(c.get("narrow", 0) for c in per_dag) == 2
    assert max(c.get("free", 0) for c in per_dag) == 4  # the other DAG is not held back


async def test_pool_slots_never_exceeded_across_dags(engine: AsyncEngine) -> None:
    dags = []
    for name in ("p1", "p2"):
        with DAG(name, start_date=START) as dag:
            for i in range(4):
                Bash(f"pooled{i}", "exit 0", pool="db")
            Bash("unpooled", "exit 0")
        dags.append(dag)
    async with Harness(engine, hold=True) as h:
        async with store_engine.transaction(h.sessions) as session:
            await store_pools.set_pool(session, "db", 2, "two connections")
        await h.register(*dags)
        runs = [(d, await h.trigger(d)) for d in ("p1", "p2")]
        pooled: list[int] = []
        unpooled: list[int] = []

        def observe() -> None:
            pooled.append(sum(k.task_id.startswith("pooled") for k in h.launcher.held))
            unpooled.append(sum(k.task_id == "unpooled" for k in h.launcher.held))

        await _drain(h, runs, observe)
        for dag_id, run_id in runs:
            assert await h.run_state(dag_id, run_id) == "success"
    assert max(pooled) == 2
    assert max(unpooled) == 2  # tasks outside the pool are not limited by it


async def test_higher_priority_launched_first(engine: AsyncEngine) -> None:
    with DAG("prio", start_date=START) as dag:
        for p in (3, 1, 5, 2, 4):
            Bash(f"p{p}", "exit 0", priority=p)
    async with Harness(engine, hold=True, parallelism=1) as h:
        await h.register(dag)
        run_id = await h.trigger("prio")
        await _drain(h, [("prio", run_id)], lambda: None)
    assert [s.key.task_id for s in h.launcher.launched] == ["p5", "p4", "p3", "p2", "p1"]


# --- scheduled runs: catchup, max_active_runs, paused ---------------------------------------

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _daily(dag_id: str, *, catchup: bool, max_active_runs: int = 16) -> DAG:
    with DAG(
        dag_id,
        schedule="@daily",
        start_date=datetime(2026, 3, 5),
        catchup=catchup,
        max_active_runs=max_active_runs,
    ) as dag:
        Bash("t", "echo {{ ds }}")
    return dag


async def test_catchup_creates_every_missed_interval_within_max_active_runs(
    engine: AsyncEngine,
) -> None:
    clock = ManualClock(NOW)
    async with Harness(engine, hold=True, clock=clock, schedule_runs=True) as h:
        await h.register(_daily("daily", catchup=True, max_active_runs=2))
        unfinished: list[int] = []
        for _ in range(10):  # nothing finishes: the limit must hold
            await h.scheduler.tick()
            clock.advance(1)
            runs = await h.all_runs("daily")
            unfinished.append(sum(r.state in ("queued", "running") for r in runs))
        assert len(await h.all_runs("daily")) == 2
        for _ in range(200):
            await h.scheduler.tick()
            clock.advance(1)
            runs = await h.all_runs("daily")
            unfinished.append(sum(r.state in ("queued", "running") for r in runs))
            if len(runs) == 5 and all(r.state == "success" for r in runs):
                break
            h.launcher.release()
        runs = await h.all_runs("daily")
    assert max(unfinished) == 2
    assert sorted(r.logical_date for r in runs) == [
        datetime(2026, 3, d, tzinfo=UTC) for d in range(5, 10)
    ]
    assert {(r.run_type, r.state) for r in runs} == {("scheduled", "success")}
    rendered = sorted(s.bash_command for s in h.launcher.launched)
    assert rendered == [f"echo 2026-03-0{d}" for d in range(5, 10)]


async def test_no_catchup_creates_only_the_latest_interval(engine: AsyncEngine) -> None:
    clock = ManualClock(NOW)
    async with Harness(engine, clock=clock, schedule_runs=True) as h:
        await h.register(_daily("daily_nc", catchup=False))
        for _ in range(5):
            await h.scheduler.tick()
            clock.advance(1)
        runs = await h.all_runs("daily_nc")
    assert [(r.logical_date, r.data_interval_end) for r in runs] == [
        (datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC))
    ]


async def test_paused_dag_gets_no_scheduled_runs(engine: AsyncEngine) -> None:
    clock = ManualClock(NOW)
    async with Harness(engine, clock=clock, schedule_runs=True) as h:
        await h.register(_daily("sleepy", catchup=False))
        async with store_engine.transaction(h.sessions) as session:
            await store_dags.set_paused(session, "sleepy", True)
        for _ in range(5):
            await h.scheduler.tick()
            clock.advance(1)
        assert await h.all_runs("sleepy") == []
        async with store_engine.transaction(h.sessions) as session:
            await store_dags.set_paused(session, "sleepy", False)
        for _ in range(3):
            await h.scheduler.tick()
            clock.advance(1)
        assert len(await h.all_runs("sleepy")) == 1


# --- manual triggers with conf --------------------------------------------------------------


def _greeter() -> DAG:
    with DAG("greet", start_date=START, params={"name": "world", "times": 1}) as dag:
        Bash("hello", "echo hello {{ params.name }} x{{ params.times }}")
    return dag


async def test_trigger_conf_is_merged_over_params(engine: AsyncEngine) -> None:
    async with Harness(engine) as h:
        await h.register(_greeter())
        _, state = await h.run("greet", '{"name": "miniflow"}')
        _, state_default = await h.run("greet")
    assert (state, state_default) == ("success", "success")
    assert [s.bash_command for s in h.launcher.launched] == [
        "echo hello miniflow x1",
        "echo hello world x1",
    ]


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ('{"name": ', "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('"hi"', "must be a JSON object, got str"),
        ('{"nmae": "x"}', "has no param(s) 'nmae' (declared params: name, times)"),
    ],
)
async def test_trigger_conf_validation(engine: AsyncEngine, conf: str, message: str) -> None:
    async with Harness(engine) as h:
        await h.register(_greeter())
        with pytest.raises(ConfValidationError) as info:
            await h.trigger("greet", conf)
        assert message in str(info.value)
        assert await h.all_runs("greet") == []  # nothing created


async def _test_run(h: Harness, dag_id: str, *, live_threshold: float = 30.0) -> bool:
    async with store_engine.transaction(h.sessions) as session:
        return await manual_runs.trigger_test(
            session,
            dag_id,
            conf_json=None,
            now=h.scheduler.clock.now(),
            logical_date=START,
            live_threshold=live_threshold,
        )


async def test_a_test_run_replaces_the_earlier_one_of_its_date(engine: AsyncEngine) -> None:
    with DAG("tested", start_date=START) as dag:
        Bash("flaky", "exit 0", retries=2)
    run_id = manual_runs.dags_test_run_id(START)
    async with Harness(engine) as h:
        await h.register(dag)
        assert await _test_run(h, "tested") is False
        assert await h.scheduler.run_until_done("tested", run_id, timeout=30) == "success"
        assert await _test_run(h, "tested") is True  # the same date again: no RunExists
        (run,) = await h.all_runs("tested")
        assert (run.run_id, run.run_type, run.state) == (run_id, "test", "queued")
        assert await h.scheduler.run_until_done("tested", run_id, timeout=30) == "success"
        ti = (await h.tis("tested", run_id))["flaky"]
    # Its tries come after the replaced run's: try 1's key (log file, pod) is never reused,
    # and the retries are all still there.
    assert (ti.try_number, ti.max_tries) == (2, 3)
    assert [s.key.try_number for s in h.launcher.launched] == [1, 2]


async def test_a_test_run_a_live_scheduler_still_follows_is_not_replaced(
    engine: AsyncEngine,
) -> None:
    with DAG("tested", start_date=START) as dag:
        Bash("t", "exit 0")
    run_id = manual_runs.dags_test_run_id(START)
    async with Harness(engine, hold=True) as h:  # the try stays open, owned by h.scheduler
        await h.register(dag)
        await _test_run(h, "tested")
        for _ in range(4):
            await h.scheduler.tick()
        assert h.launcher.held
        with pytest.raises(manual_runs.BusyTestRun, match="is still running"):
            await _test_run(h, "tested")
        assert (await h.tis("tested", run_id))["t"].state == "running"  # untouched
        # Once its scheduler is taken for dead (silent for longer than the threshold),
        # the run it left is replaced.
        assert await _test_run(h, "tested", live_threshold=-1) is True
        assert (await h.tis("tested", run_id))["t"].try_number == 1


# --- clear and re-run, template errors ------------------------------------------------------


async def test_clear_downstream_reruns_with_a_new_try(engine: AsyncEngine) -> None:
    with DAG("clearme", start_date=START) as dag:
        Bash("a", "exit 0") >> Bash("b", "exit 0") >> Bash("c", "exit 0")
        Bash("other", "exit 0")
    async with Harness(engine) as h:
        await h.register(dag)
        run_id, state = await h.run("clearme")
        assert state == "success"
        serialized = dag.serialize("clearme.py")
        task_ids = downstream_of(serialized, "b")  # type: ignore[arg-type]
        assert task_ids == ["b", "c"]
        async with store_engine.transaction(h.sessions) as session:
            cleared = await store_tis.clear(session, "clearme", run_id, task_ids, {"b": 0, "c": 0})
        assert cleared == 2
        assert await h.run_state("clearme", run_id) == "running"
        state = await h.scheduler.run_until_done("clearme", run_id, timeout=30)
        tis = await h.tis("clearme", run_id)
        async with store_engine.transaction(h.sessions) as session:
            attempts = await store_attempts.for_task(session, "clearme", run_id, "c")
    assert state == "success"
    assert {t: (ti.state, ti.try_number) for t, ti in tis.items()} == {
        "a": ("success", 1),
        "b": ("success", 2),
        "c": ("success", 2),
        "other": ("success", 1),
    }
    assert [a.try_number for a in attempts] == [1, 2]


async def test_template_error_fails_the_try_naming_the_variable(engine: AsyncEngine) -> None:
    with DAG("badtpl", start_date=START) as dag:
        Bash("t", "echo {{ params.missing_thing }}")
    async with Harness(engine) as h:
        await h.register(dag)
        run_id, state = await h.run("badtpl")
        ti = (await h.tis("badtpl", run_id))["t"]
        async with store_engine.transaction(h.sessions) as session:
            (attempt,) = await store_attempts.for_task(session, "badtpl", run_id, "t")
    assert state == "failed"
    assert ti.state == "failed"
    assert "params.missing_thing" in (ti.error or "")
    assert "params.missing_thing" in (attempt.message or "")
    assert attempt.ended_at is not None
    assert h.launcher.launched == []  # never handed to the launcher


async def test_a_dag_at_its_limit_does_not_starve_the_others(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """`narrow` (max_active_tasks=1, 60 waiting, the older run) fills any candidate window;
    the free slots still go to `other` in the same claim."""
    (tmp_path / "two.py").write_text(
        "from datetime import datetime\nfrom miniflow import DAG, Bash\n"
        'with DAG("narrow", start_date=datetime(2026, 1, 1), max_active_tasks=1):\n'
        '    [Bash(f"n{i}", "true") for i in range(60)]\n'
        'with DAG("other", start_date=datetime(2026, 1, 1)):\n'
        '    [Bash(f"o{i}", "true") for i in range(5)]\n'
    )
    launcher = InstantLauncher(hold=True)
    scheduler = Scheduler(
        engine=engine,
        launcher=launcher,
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, parallelism=4),
    )
    await scheduler.start()
    try:
        await scheduler.tick()  # parse
        sessions = store_engine.sessionmaker(engine)
        now = datetime.now(UTC)
        async with store_engine.transaction(sessions) as session:
            for dag_id, when in (("narrow", now - timedelta(days=1)), ("other", now)):
                dag = await store_dags.get_dag(session, dag_id)
                await store_runs.create_run(
                    session,
                    dag=dag.serialized,  # type: ignore[arg-type]
                    run_id="r",
                    run_type="manual",
                    logical_date=when,
                    interval=(when, when),
                    conf={},
                    now=now,
                )
        for _ in range(4):  # start the runs, make the tasks ready, claim
            await scheduler.tick()
            if launcher.launched:
                break
        dags = [s.key.dag_id for s in launcher.launched]
        assert (dags.count("narrow"), dags.count("other")) == (1, 3)  # no slot left idle
        async with store_engine.transaction(sessions) as session:
            total, _, _ = await store_tis.active_counts(session)
        assert total == 4
    finally:
        await scheduler.close()
