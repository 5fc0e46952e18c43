"""Dynamic task mapping through the scheduler (instant launcher), on both databases.

The instant launcher runs nothing: a `@task`'s result is written by the test while its
try is held, as its worker would have recorded it.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

from sqlalchemy import delete, null, update
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.launchers.base import TaskSpec
from miniflow.scheduler.core import Scheduler, SchedulerSettings
from miniflow.store import engine as store_engine
from miniflow.store import mapping as store_mapping
from miniflow.store import task_instances as store_tis
from miniflow.store.models import TaskInstance
from miniflow.store.records import TaskInstanceRecord
from tests.instant_launcher import InstantLauncher
from tests.integration.test_scheduler_instant import _trigger

LITERAL = """
from datetime import datetime
from miniflow import DAG, Bash

with DAG("lit", start_date=datetime(2026, 1, 1)):
    each = Bash.partial("each", env={"A": "1"}).expand(
        command=["echo {{ map_index }} a", "echo {{ map_index }} b", "echo {{ map_index }} c"]
    )
    each >> Bash("after", "true")
"""

FROM_UPSTREAM = """
from datetime import datetime
from miniflow import DAG, task

with DAG("up", start_date=datetime(2026, 1, 1)):
    @task
    def items():
        return []

    @task(max_active_mapped={cap})
    def work(x, y):
        return x

    @task
    def total(xs):
        return xs

    total(work.partial(y=1).expand(x=items()))
"""


def _scheduler(
    engine: AsyncEngine, tmp_path: Path, launcher: InstantLauncher, **kw: Any
) -> Scheduler:
    return Scheduler(
        engine=engine,
        launcher=launcher,
        dags_folder=tmp_path,
        settings=SchedulerSettings(schedule_runs=False, idle_wait=0.05, **kw),
    )


async def _rows(engine: AsyncEngine, dag_id: str, run_id: str) -> list[TaskInstanceRecord]:
    async with store_engine.transaction(store_engine.sessionmaker(engine)) as session:
        return await store_tis.list_for_run(session, dag_id, run_id)


async def test_literal_bash_expansion_runs_each_instance(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "lit.py").write_text(textwrap.dedent(LITERAL))
    launcher = InstantLauncher()
    scheduler = _scheduler(engine, tmp_path, launcher)
    await scheduler.start()
    await scheduler.tick()
    run_id = await _trigger(engine, "lit")
    # A literal list is expanded with the run: its instances are listed at once.
    created = sorted((r.map_index, r.state) for r in await _rows(engine, "lit", run_id))
    assert created == [(-1, "none"), (-1, "none"), (0, "none"), (1, "none"), (2, "none")]
    state = await scheduler.run_until_done("lit", run_id, timeout=30)
    await scheduler.close()
    assert state == "success"
    commands = sorted(
        (s.key.map_index, s.bash_command, s.env.get("MINIFLOW_MAP_INDEX"), s.env.get("A"))
        for s in launcher.launched
        if s.key.task_id == "each"
    )
    assert commands == [
        (0, "echo 0 a", "0", "1"),
        (1, "echo 1 b", "1", "1"),
        (2, "echo 2 c", "2", "1"),
    ]
    rows = await _rows(engine, "lit", run_id)
    each = sorted((r.map_index, r.state) for r in rows if r.task_id == "each")
    assert each == [(-1, "success"), (0, "success"), (1, "success"), (2, "success")]
    assert {r.state for r in rows if r.task_id == "after"} == {"success"}


async def test_a_failed_instance_fails_the_mapped_task(engine: AsyncEngine, tmp_path: Path) -> None:
    (tmp_path / "lit.py").write_text(textwrap.dedent(LITERAL))
    launcher = InstantLauncher(lambda spec: 1 if spec.key.map_index == 1 else 0)
    scheduler = _scheduler(engine, tmp_path, launcher)
    await scheduler.start()
    await scheduler.tick()
    run_id = await _trigger(engine, "lit")
    state = await scheduler.run_until_done("lit", run_id, timeout=30)
    await scheduler.close()
    assert state == "failed"
    rows = {(r.task_id, r.map_index): r for r in await _rows(engine, "lit", run_id)}
    assert rows[("each", -1)].state == "failed"
    assert rows[("each", -1)].error == "1 of 3 mapped instances failed"
    assert rows[("each", 0)].state == "success" and rows[("each", 1)].state == "failed"
    assert rows[("after", -1)].state == "upstream_failed"


async def _run_with_items(
    engine: AsyncEngine, tmp_path: Path, items: Any, *, cap: int = 2, **settings: Any
) -> tuple[str, list[TaskInstanceRecord], InstantLauncher, int]:
    """Run the FROM_UPSTREAM DAG with `items()` returning `items`; also returns the most
    `work` instances the launcher ever held at once."""
    (tmp_path / "up.py").write_text(textwrap.dedent(FROM_UPSTREAM.format(cap=cap)))
    launcher = InstantLauncher(hold=True)
    scheduler = _scheduler(engine, tmp_path, launcher, **settings)
    await scheduler.start()
    await scheduler.tick()
    run_id = await _trigger(engine, "up")
    sessions = store_engine.sessionmaker(engine)
    most = 0

    async def drive() -> None:
        nonlocal most
        while True:
            await scheduler.tick()
            held: list[TaskSpec] = list(launcher.held.values())
            most = max(most, sum(s.key.task_id == "work" for s in held))
            for spec in held:
                if spec.key.task_id == "items":  # what its worker would record
                    async with store_engine.transaction(sessions) as session:
                        await session.execute(
                            update(TaskInstance)
                            .where(TaskInstance.run_id == run_id, TaskInstance.task_id == "items")
                            .values(result=items)
                        )
                launcher.release(spec.key)
            rows = await _rows(engine, "up", run_id)
            if all(r.state in ("success", "failed", "skipped", "upstream_failed") for r in rows):
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(drive(), 30)
    await scheduler.close()
    return run_id, await _rows(engine, "up", run_id), launcher, most


async def test_expansion_over_an_upstream_result_with_a_concurrency_cap(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    _, rows, launcher, most = await _run_with_items(engine, tmp_path, [10, 20, 30, 40, 50])
    work = sorted((r.map_index, r.state, r.map_args) for r in rows if r.task_id == "work")
    assert work[0] == (-1, "success", {"length": 5})
    assert work[1:] == [(i, "success", {"x": x}) for i, x in enumerate([10, 20, 30, 40, 50])]
    assert most == 2, "max_active_mapped=2: never more than two instances at once"
    assert len([s for s in launcher.launched if s.key.task_id == "work"]) == 5
    assert {r.state for r in rows} == {"success"}


async def test_an_empty_list_skips_the_mapped_task(engine: AsyncEngine, tmp_path: Path) -> None:
    _, rows, launcher, _ = await _run_with_items(engine, tmp_path, [])
    states = {(r.task_id, r.map_index): r.state for r in rows}
    assert states == {("items", -1): "success", ("work", -1): "skipped", ("total", -1): "skipped"}
    assert not [s for s in launcher.launched if s.key.task_id == "work"]


async def test_too_long_a_list_fails_with_the_limit_named(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    _, rows, launcher, _ = await _run_with_items(engine, tmp_path, list(range(6)), max_map_length=5)
    work = next(r for r in rows if r.task_id == "work")
    assert work.state == "failed"
    assert work.error == (
        "task 'work': expand(x) gives 6 mapped instances, more than the maximum map length 5 "
        "(MINIFLOW_MAX_MAP_LENGTH)"
    )
    assert not [s for s in launcher.launched if s.key.task_id == "work"]
    assert next(r for r in rows if r.task_id == "total").state == "upstream_failed"


async def test_not_a_list_fails_naming_the_upstream(engine: AsyncEngine, tmp_path: Path) -> None:
    _, rows, _, _ = await _run_with_items(engine, tmp_path, {"a": 1})
    work = next(r for r in rows if r.task_id == "work" and r.map_index == -1)
    assert work.state == "failed"
    assert "needs a list; the result of 'items' is a dict" in (work.error or "")


async def test_downstream_receives_the_list_of_mapped_results(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    run_id, _, _, _ = await _run_with_items(engine, tmp_path, [1, 2, 3])
    sessions = store_engine.sessionmaker(engine)
    async with store_engine.transaction(sessions) as session:
        # the instant launcher records no results: give each instance the one its worker would
        for i in range(3):
            await session.execute(
                update(TaskInstance)
                .where(TaskInstance.task_id == "work", TaskInstance.map_index == i)
                .values(result=i * 10)
            )
        found = await store_tis.upstream_results(session, "up", run_id, ["work", "items"])
    assert found == {"work": [0, 10, 20], "items": [1, 2, 3]}


async def test_expanding_again_creates_each_instance_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A scheduler that died after inserting some instances (its expansion not recorded),
    and another expanding the same task at once: the unique key and `ON CONFLICT DO
    NOTHING` keep one row per map_index, and the expansion is completed."""
    (tmp_path / "lit.py").write_text(textwrap.dedent(LITERAL))
    launcher = InstantLauncher()
    scheduler = _scheduler(engine, tmp_path, launcher)
    await scheduler.start()
    await scheduler.tick()
    run_id = await _trigger(engine, "lit")
    sessions = store_engine.sessionmaker(engine)
    async with store_engine.transaction(sessions) as session:
        # The literal list was expanded with the run; make it a task expanded when it may
        # run (as one over an upstream result is), then what the dead scheduler committed:
        # the task mapped, two of its three instances, its expansion not recorded.
        await session.execute(
            delete(TaskInstance).where(TaskInstance.run_id == run_id, TaskInstance.map_index >= 0)
        )
        rows = await store_tis.list_for_run(session, "lit", run_id)
        parent = next(r for r in rows if r.task_id == "each")
        await session.execute(
            update(TaskInstance)
            .where(TaskInstance.id == parent.id)
            .values(state="mapped", map_args=null())
        )
        task = store_mapping.Unexpanded(
            parent.id, parent.run_pk, "lit", run_id, "each", "bash", 0, 1, None
        )
        await store_mapping.add_instances(session, task, [{"command": "echo dead"}] * 2)
    async with store_engine.transaction(sessions) as session:
        # a second scheduler racing: all three, the first two already there
        await store_mapping.add_instances(session, task, [{"command": "echo peer"}] * 3)
    state = await scheduler.run_until_done("lit", run_id, timeout=30)
    await scheduler.close()
    assert state == "success"
    rows = await _rows(engine, "lit", run_id)
    indexes = sorted(r.map_index for r in rows if r.task_id == "each")
    assert indexes == [-1, 0, 1, 2]
    launched = sorted(
        (s.key.map_index, s.bash_command) for s in launcher.launched if s.key.task_id == "each"
    )
    assert launched == [(0, "echo dead"), (1, "echo dead"), (2, "echo peer")]


async def test_a_cleared_mapped_task_expands_again_with_new_try_keys(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Clearing a mapped task deletes its instances; its next expansion numbers their tries
    after the old ones, so no try key (log file, pod name) is used twice."""
    (tmp_path / "lit.py").write_text(textwrap.dedent(LITERAL))
    launcher = InstantLauncher()
    scheduler = _scheduler(engine, tmp_path, launcher)
    await scheduler.start()
    await scheduler.tick()
    run_id = await _trigger(engine, "lit")
    assert await scheduler.run_until_done("lit", run_id, timeout=30) == "success"
    async with store_engine.transaction(store_engine.sessionmaker(engine)) as session:
        cleared = await store_tis.clear(session, "lit", run_id, ["each", "after"], {})
    assert cleared == 2
    assert sorted(r.map_index for r in await _rows(engine, "lit", run_id)) == [-1, -1]
    assert await scheduler.run_until_done("lit", run_id, timeout=30) == "success"
    await scheduler.close()
    keys = [s.key for s in launcher.launched if s.key.task_id == "each"]
    assert len(keys) == 6 and len(set(keys)) == 6
    assert sorted((k.map_index, k.try_number) for k in keys) == [
        (i, n) for i in range(3) for n in (1, 2)
    ]


async def test_instances_made_with_the_run_follow_a_task_that_will_not_run(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "lit.py").write_text(
        textwrap.dedent(
            """
            from datetime import datetime
            from miniflow import DAG, Bash

            with DAG("lit", start_date=datetime(2026, 1, 1)):
                Bash("first", "exit 1") >> Bash.partial("each").expand(command=["a", "b"])
            """
        )
    )
    launcher = InstantLauncher(lambda spec: 1 if spec.key.task_id == "first" else 0)
    scheduler = _scheduler(engine, tmp_path, launcher)
    await scheduler.start()
    await scheduler.tick()
    run_id = await _trigger(engine, "lit")
    assert await scheduler.run_until_done("lit", run_id, timeout=30) == "failed"
    for _ in range(3):
        await scheduler.tick()  # a sweep after the run ended changes nothing more
    await scheduler.close()
    states = sorted((r.task_id, r.map_index, r.state) for r in await _rows(engine, "lit", run_id))
    assert states == [
        ("each", -1, "upstream_failed"),
        ("each", 0, "upstream_failed"),
        ("each", 1, "upstream_failed"),
        ("first", -1, "failed"),
    ]
    assert [s.key.task_id for s in launcher.launched] == ["first"]
