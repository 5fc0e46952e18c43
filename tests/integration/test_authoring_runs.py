"""Issue #12's authoring features through the real scheduler and the LocalLauncher (one
worker process per try), on SQLite and PostgreSQL: the final state of every task."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.helpers import write_dag
from tests.e2e.test_local_scheduler import local_scheduler


async def test_empty_tasks_complete_without_a_process(db_url: str, tmp_path: Path) -> None:
    write_dag(
        tmp_path / "dags",
        "empties.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash, Empty

        with DAG("empties", start_date=datetime(2026, 1, 1)):
            start, join = Empty("start"), Empty("join")
            start >> [Bash("a", "true"), Bash("b", "true")] >> join
            start >> Bash("bad", "exit 1") >> Empty("after_bad")
            Empty("cleanup", trigger_rule="all_done") << join
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("empties")
        tis = await local.tis("empties", run_id)
        attempts = {a.task_id for a in await local.attempts("empties", run_id)}
    assert {t: ti.state for t, ti in tis.items()} == {
        "start": "success",
        "a": "success",
        "b": "success",
        "bad": "failed",
        "after_bad": "upstream_failed",
        "join": "success",
        "cleanup": "success",
    }
    assert state == "failed"  # the leaf after_bad
    assert attempts == {"a", "b", "bad"}  # no try, no process for an Empty task
    assert all(tis[t].try_number == 0 for t in ("start", "join", "cleanup"))
