"""The trigger rules added for Airflow parity, through the scheduler on both databases.

Uses the in-process instant launcher of `test_scheduler_rules` (Bash tasks end with
the exit code their command names), so only readiness and skip propagation are
under test here; branching through real workers is in `test_authoring_runs`.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow import DAG, Bash
from tests.integration.test_scheduler_rules import START, Harness


async def test_new_trigger_rules_end_to_end(engine: AsyncEngine) -> None:
    with DAG("rules2", start_date=START) as dag:
        ok, bad = Bash("ok", "exit 0"), Bash("bad", "exit 1")
        # `skip` is skipped: one_failed with a successful upstream
        skip = ok >> Bash("skip", "exit 0", trigger_rule="one_failed")
        skip >> Bash("all_skipped", "exit 0", trigger_rule="all_skipped")
        [ok, skip] >> Bash("all_skipped_no", "exit 0", trigger_rule="all_skipped")
        [ok, skip] >> Bash("join", "exit 0", trigger_rule="none_failed_min_one_success")
        skip >> Bash("join_all_skipped", "exit 0", trigger_rule="none_failed_min_one_success")
        [ok, bad] >> Bash("join_failed", "exit 0", trigger_rule="none_failed_min_one_success")
        [ok, bad] >> Bash("none_skipped", "exit 0", trigger_rule="none_skipped")
        [ok, skip] >> Bash("none_skipped_no", "exit 0", trigger_rule="none_skipped")
        [bad, skip] >> Bash("one_done", "exit 0", trigger_rule="one_done")
        skip >> Bash("one_done_no", "exit 0", trigger_rule="one_done")
        [ok, bad] >> Bash("min_one", "exit 0", trigger_rule="all_done_min_one_success")
        bad >> Bash("min_one_no", "exit 0", trigger_rule="all_done_min_one_success")
        # Leaves that make the run succeed: everything that failed is caught below.
        everything = list(dag.tasks.values())
        everything >> Bash("cleanup", "exit 0", trigger_rule="all_done")
    async with Harness(engine) as h:
        await h.register(dag)
        run_id, state = await h.run("rules2")
        got = {t: ti.state for t, ti in (await h.tis("rules2", run_id)).items()}
    assert got == {
        "ok": "success",
        "bad": "failed",
        "skip": "skipped",
        "all_skipped": "success",
        "all_skipped_no": "skipped",
        "join": "success",
        "join_all_skipped": "skipped",
        "join_failed": "upstream_failed",
        "none_skipped": "success",
        "none_skipped_no": "skipped",
        "one_done": "success",
        "one_done_no": "skipped",
        "min_one": "success",
        "min_one_no": "upstream_failed",
        "cleanup": "success",
    }
    assert state == "success"  # the only leaf, cleanup, succeeded
    launched = {s.key.task_id for s in h.launcher.launched}
    assert launched.isdisjoint(
        {"skip", "all_skipped_no", "join_all_skipped", "join_failed", "none_skipped_no",
         "one_done_no", "min_one_no"}
    )  # fmt: skip
