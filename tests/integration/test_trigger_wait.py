"""`dags trigger --wait` (`views.follow_run`) against real databases: what it reads."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow import DAG, Bash
from miniflow.cli import main as cli_main
from miniflow.cli import views
from miniflow.config import load_config
from miniflow.store import engine as store_engine
from tests.integration.test_scheduler_rules import START, Harness

LOOKS = 3


async def test_following_a_run_counts_its_states_and_reads_its_rows_once_at_the_end(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    # Each look at the progress is one grouped count; the rows (for the final table) are
    # read once, after the run ended, not at every look on the cores the tasks run on.
    with DAG("followed", start_date=START) as dag:
        for n in range(50):
            Bash(f"t{n}", "true")
    h = Harness(engine, hold=True)
    async with h:
        await h.register(dag)
        run_id = await h.trigger("followed")
        await h.scheduler.tick()  # the run starts; its tries are held running
        counted, rows_read = [], []
        enough = asyncio.Event()

        def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            flat = " ".join(statement.split())
            if "GROUP BY task_instance.state" in flat:
                counted.append(flat)
                if len(counted) >= LOOKS:
                    enough.set()
            elif "FROM task_instance" in flat and "ORDER BY task_instance.id" in flat:
                rows_read.append(flat)

        event.listen(Engine, "before_cursor_execute", seen)
        try:
            config = load_config({"MINIFLOW_DATABASE_URL": db_url, "MINIFLOW_HOME": str(tmp_path)})
            following = asyncio.create_task(views.follow_run(config, "followed", run_id))
            await asyncio.wait_for(enough.wait(), 30)
            assert rows_read == []
            async with store_engine.transaction(h.sessions) as session:
                await session.execute(
                    text("UPDATE dag_run SET state = 'failed' WHERE run_id = :run_id"),
                    {"run_id": run_id},
                )
            assert await asyncio.wait_for(following, 30) == "failed"
        finally:
            event.remove(Engine, "before_cursor_execute", seen)
    assert len(rows_read) == 1
    assert len(counted) >= LOOKS


def test_trigger_wait_follows_the_run_on_the_engine_that_created_it(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dags trigger --wait` opens one engine: the follower does not connect, check the
    schema and initialise a dialect again."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "w.py").write_text(
        "from datetime import datetime\n"
        "from miniflow import DAG, Bash\n"
        "with DAG('waited', start_date=datetime(2026, 1, 1)):\n"
        "    Bash('t', 'true')\n"
    )
    made: list[AsyncEngine] = []
    create = store_engine.create_engine

    def counted(*args: Any, **kwargs: Any) -> AsyncEngine:
        made.append(create(*args, **kwargs))
        return made[-1]

    followed: list[tuple[str, AsyncEngine | None]] = []

    async def follow(config: Any, dag_id: str, run_id: str, engine: Any = None) -> str:
        followed.append((dag_id, engine))
        return "success"

    monkeypatch.setattr(store_engine, "create_engine", counted)
    monkeypatch.setattr(views, "follow_run", follow)
    env = {"MINIFLOW_DATABASE_URL": db_url, "MINIFLOW_HOME": str(tmp_path)}
    done = CliRunner().invoke(cli_main.main, ["dags", "trigger", "waited", "--wait"], env=env)
    assert done.exit_code == 0, done.output
    assert "created run" in done.output
    assert len(made) == 1
    assert followed == [("waited", made[0])]
