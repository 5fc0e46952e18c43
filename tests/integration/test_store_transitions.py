"""State transitions on both backends: conditional, batched, fenced by try number."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.authoring.serialized import FORMAT_VERSION, SerializedDag
from miniflow.store import attempts as store_attempts
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store import states
from miniflow.store import task_instances as store_tis

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _task(task_id: str, upstream: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "kind": "bash",
        "upstream": upstream or [],
        "trigger_rule": "all_success",
        "retries": 1,
        "retry_delay": 1.0,
        "retry_exponential_backoff": False,
        "max_retry_delay": None,
        "timeout": None,
        "pool": None,
        "priority": 1,
        "env": {},
        "pod": {},
        "command": "true",
        **extra,
    }


def make_dag(dag_id: str = "d", n: int = 3) -> SerializedDag:
    tasks = {f"t{i}": _task(f"t{i}") for i in range(n)}
    return {  # type: ignore[return-value]
        "format_version": FORMAT_VERSION,
        "dag_id": dag_id,
        "fileloc": f"{dag_id}.py",
        "lineno": 1,
        "schedule": None,
        "start_date": None,
        "end_date": None,
        "catchup": False,
        "timezone": "UTC",
        "max_active_runs": 16,
        "max_active_tasks": 32,
        "params": {},
        "tags": [],
        "description": None,
        "tasks": tasks,
    }


async def _setup(engine: AsyncEngine, n: int = 3) -> tuple[Any, int]:
    sessions = store_engine.sessionmaker(engine)
    dag = make_dag(n=n)
    async with store_engine.transaction(sessions) as session:
        await store_dags.apply_parse(
            session, [store_dags.ParsedFile("d.py", 1, 1, "h", [dag], None)], [], NOW
        )
        pk = await store_runs.create_run(
            session,
            dag=dag,
            run_id="r1",
            run_type="manual",
            logical_date=NOW,
            interval=(NOW, NOW),
            conf={},
            now=NOW,
        )
    return sessions, pk


async def _queue_all(sessions: Any, pk: int) -> dict[int, int]:
    async with store_engine.transaction(sessions) as session:
        tis = (await store_tis.states_for_runs(session, [pk]))[pk]
        await store_tis.set_states(
            session, [(t.id, states.NONE, states.SCHEDULED) for t in tis], NOW
        )
        return await store_tis.mark_queued(session, [t.id for t in tis], NOW)


async def test_create_run_makes_one_none_instance_per_task(engine: AsyncEngine) -> None:
    sessions, pk = await _setup(engine, n=4)
    async with store_engine.transaction(sessions) as session:
        tis = (await store_tis.states_for_runs(session, [pk]))[pk]
        with pytest.raises(store_runs.RunExists):
            await store_runs.create_run(
                session,
                dag=make_dag(n=4),
                run_id="r1",
                run_type="manual",
                logical_date=NOW,
                interval=(NOW, NOW),
                conf={},
                now=NOW,
            )
    assert sorted(t.task_id for t in tis) == ["t0", "t1", "t2", "t3"]
    assert {t.state for t in tis} == {states.NONE} and {t.max_tries for t in tis} == {1}


async def test_claim_increments_try_and_is_exclusive(engine: AsyncEngine) -> None:
    sessions, pk = await _setup(engine)
    claimed = await _queue_all(sessions, pk)
    assert set(claimed.values()) == {1}
    async with store_engine.transaction(sessions) as session:
        # a second claim of the same instances finds nothing left in `scheduled`
        assert await store_tis.mark_queued(session, list(claimed), NOW) == {}


async def test_stale_try_cannot_overwrite_newer_truth(engine: AsyncEngine) -> None:
    sessions, pk = await _setup(engine, n=1)
    ((ti_id, _),) = (await _queue_all(sessions, pk)).items()
    async with store_engine.transaction(sessions) as session:
        # try 1 fails and is retried; try 2 is claimed
        await store_tis.finish(
            session, [store_tis.Outcome(ti_id, 1, states.UP_FOR_RETRY, next_retry_at=NOW)], NOW
        )
        await store_tis.promote_due_retries(session, NOW)
        assert await store_tis.mark_queued(session, [ti_id], NOW) == {ti_id: 2}
    async with store_engine.transaction(sessions) as session:
        # a late report from try 1 (a stale worker or scheduler) changes nothing
        changed = await store_tis.finish(
            session, [store_tis.Outcome(ti_id, 1, states.SUCCESS)], NOW
        )
        assert changed == set()
        assert not await store_tis.heartbeat(session, ti_id, 1, NOW)
        assert await store_tis.worker_claim(session, "d", "r1", "t0", 1, NOW) is None
        row = (await store_tis.fetch(session, [ti_id]))[ti_id]
        assert (row.state, row.try_number) == (states.QUEUED, 2)
        # the current try's worker claims once; a duplicate worker is refused
        assert await store_tis.worker_claim(session, "d", "r1", "t0", 2, NOW) is not None
        assert await store_tis.worker_claim(session, "d", "r1", "t0", 2, NOW) is None
        assert await store_tis.heartbeat(session, ti_id, 2, NOW + timedelta(seconds=1))
        changed = await store_tis.finish(
            session, [store_tis.Outcome(ti_id, 2, states.SUCCESS)], NOW
        )
        assert changed == {ti_id}


async def test_finish_batches_by_values_and_respects_expected_states(engine: AsyncEngine) -> None:
    sessions, pk = await _setup(engine, n=3)
    claimed = await _queue_all(sessions, pk)
    ids = sorted(claimed)
    async with store_engine.transaction(sessions) as session:
        changed = await store_tis.finish(
            session,
            [store_tis.Outcome(i, 1, states.SUCCESS, exit_code=0) for i in ids[:2]]
            + [store_tis.Outcome(ids[2], 1, states.FAILED, expected=(states.RUNNING,))],
            NOW,
        )
        rows = await store_tis.fetch(session, ids)
    assert changed == set(ids[:2])  # the third expected `running`, it was `queued`
    assert [rows[i].state for i in ids] == [states.SUCCESS, states.SUCCESS, states.QUEUED]
    assert rows[ids[0]].exit_code == 0 and rows[ids[0]].ended_at == NOW


async def test_attempt_rows_are_never_rewritten_after_they_end(engine: AsyncEngine) -> None:
    sessions, pk = await _setup(engine, n=1)
    ((ti_id, _),) = (await _queue_all(sessions, pk)).items()
    async with store_engine.transaction(sessions) as session:
        await store_attempts.open_attempts(
            session, [(ti_id, "d", "r1", "t0", 1, -1)], launcher="x", scheduler_id="s", now=NOW
        )
        await store_attempts.mark_started(session, [(ti_id, 1, "pid:1", NOW)])
        end = store_attempts.AttemptEnd(ti_id, 1, "success", 0, "Completed", None, "tail", NOW)
        await store_attempts.close(session, [end])
        late = store_attempts.AttemptEnd(ti_id, 1, "failed", 1, "Error", "late", None, NOW)
        await store_attempts.close(session, [late])
        await store_attempts.mark_started(session, [(ti_id, 1, "pid:2", NOW)])
        (row,) = await store_attempts.for_task(session, "d", "r1", "t0")
    assert (row.state, row.exit_code, row.reason, row.handle, row.log_tail) == (
        "success",
        0,
        "Completed",
        "pid:1",
        "tail",
    )


async def test_an_outcome_and_its_attempts_end_are_written_together(engine: AsyncEngine) -> None:
    """`finish_and_close` (one statement on PostgreSQL): the attempt ends only where the
    outcome applied, a noted decision's state and reason stay, and an attempt that had
    already ended is never rewritten (the outcome still applies to its task instance)."""
    sessions, pk = await _setup(engine, n=3)
    claimed = await _queue_all(sessions, pk)
    applies, refused, ended = sorted(claimed)
    async with store_engine.transaction(sessions) as session:
        await store_attempts.open_attempts(
            session,
            [(i, "d", "r1", f"t{n}", 1, -1) for n, i in enumerate((applies, refused, ended))],
            launcher="x",
            scheduler_id="s",
            now=NOW,
        )
        await store_attempts.note(session, [(applies, 1, "Lost", "noted first")])
        done = store_attempts.AttemptEnd(ended, 1, "success", 0, "Completed", None, None, NOW)
        await store_attempts.close(session, [done])

        def end(ti_id: int) -> store_attempts.AttemptEnd:
            return store_attempts.AttemptEnd(ti_id, 1, "failed", 2, "Error", "exit 2", "tail", NOW)

        failed = store_tis.Outcome(applies, 1, states.FAILED, exit_code=2, error="exit 2")
        assert await store_attempts.finish_and_close(session, failed, end(applies), NOW) == {
            applies
        }
        late = store_tis.Outcome(refused, 1, states.FAILED, expected=(states.RUNNING,))
        assert await store_attempts.finish_and_close(session, late, end(refused), NOW) == set()
        again = store_tis.Outcome(ended, 1, states.FAILED)
        assert await store_attempts.finish_and_close(session, again, end(ended), NOW) == {ended}
        rows = await store_tis.fetch(session, [applies, refused, ended])
        attempts = {
            a.ti_id: a
            for n in range(3)
            for a in await store_attempts.for_task(session, "d", "r1", f"t{n}")
        }
    assert (rows[applies].state, rows[refused].state) == (states.FAILED, states.QUEUED)
    first = attempts[applies]
    assert (first.state, first.exit_code, first.reason, first.log_tail, first.ended_at) == (
        "failed",
        2,
        "Lost",
        "tail",
        NOW,
    )
    assert first.message == "noted first; exit 2"
    assert attempts[refused].ended_at is None and attempts[refused].state == "queued"
    assert (attempts[ended].state, attempts[ended].exit_code) == ("success", 0)


async def test_a_relaunched_try_belongs_to_the_scheduler_that_claimed_it_again(
    engine: AsyncEngine,
) -> None:
    """A try adopted before it ever started is launched again (same try) by whichever
    scheduler claims it next: that one owns the open row, or its exit would be dropped
    as another scheduler's and the try would never end."""
    sessions, pk = await _setup(engine, n=1)
    ((ti_id, _),) = (await _queue_all(sessions, pk)).items()
    row = (ti_id, "d", "r1", "t0", 1, -1)
    async with store_engine.transaction(sessions) as session:
        await store_attempts.open_attempts(
            session, [row], launcher="local", scheduler_id="first", now=NOW
        )
        await store_attempts.open_attempts(
            session, [row], launcher="local", scheduler_id="second", now=NOW
        )
        assert await store_attempts.owners(session) == {(ti_id, 1): "second"}
        end = store_attempts.AttemptEnd(ti_id, 1, "success", 0, "Completed", None, None, NOW)
        await store_attempts.close(session, [end])
        await store_attempts.open_attempts(  # a late claim never reopens an ended row
            session, [row], launcher="local", scheduler_id="third", now=NOW
        )
        (attempt,) = await store_attempts.for_task(session, "d", "r1", "t0")
    assert (attempt.scheduler_id, attempt.state, attempt.queued_at) == ("second", "success", NOW)


async def test_broken_file_keeps_last_good_version_flagged(engine: AsyncEngine) -> None:
    sessions, _ = await _setup(engine)
    async with store_engine.transaction(sessions) as session:
        await store_dags.apply_parse(
            session, [store_dags.ParsedFile("d.py", 2, 2, "h2", [], "SyntaxError: boom")], [], NOW
        )
        row = await store_dags.get_dag(session, "d")
        errors = await store_dags.import_errors(session)
    assert row.has_import_error and row.is_active and len(row.serialized["tasks"]) == 3
    assert [e.fileloc for e in errors] == ["d.py"] and "boom" in errors[0].error
    async with store_engine.transaction(sessions) as session:
        await store_dags.apply_parse(
            session, [store_dags.ParsedFile("d.py", 3, 3, "h3", [make_dag(n=2)], None)], [], NOW
        )
        row = await store_dags.get_dag(session, "d")
        assert not row.has_import_error and len(row.serialized["tasks"]) == 2
        assert await store_dags.import_errors(session) == []
        await store_dags.apply_parse(session, [], ["d.py"], NOW)
        assert await store_dags.list_dags(session) == []


async def test_clear_resets_finished_tasks_and_reopens_the_run(engine: AsyncEngine) -> None:
    sessions, pk = await _setup(engine, n=2)
    claimed = await _queue_all(sessions, pk)
    async with store_engine.transaction(sessions) as session:
        await store_tis.finish(
            session, [store_tis.Outcome(i, 1, states.FAILED) for i in claimed], NOW
        )
        await store_runs.set_state(session, pk, expected="queued", state="failed", now=NOW)
        n = await store_tis.clear(session, "d", "r1", ["t0"], {"t0": 2})
        rows = {r.task_id: r for r in await store_tis.list_for_run(session, "d", "r1")}
        run = await store_runs.get_run(session, "d", "r1")
    assert n == 1
    assert (rows["t0"].state, rows["t0"].max_tries) == (states.NONE, 3)  # try 1 + 2 more retries
    assert rows["t1"].state == states.FAILED
    assert run.state == "running"


async def test_a_run_ends_only_while_every_task_is_still_finished(engine: AsyncEngine) -> None:
    """The scheduler saw every task finished; a `tasks clear` committed before its update
    put one back to `none`: the run must go on, not end with that task never scheduled."""
    sessions, pk = await _setup(engine, n=2)
    claimed = await _queue_all(sessions, pk)
    async with store_engine.transaction(sessions) as session:
        await store_runs.set_state(
            session, pk, expected=states.RUN_QUEUED, state=states.RUN_RUNNING, now=NOW
        )
        outcomes = [store_tis.Outcome(i, n, states.SUCCESS) for i, n in claimed.items()]
        assert await store_tis.finish(session, outcomes, NOW) == set(claimed)
    # what a concurrent `tasks clear` does to one of them
    async with store_engine.transaction(sessions) as session:
        assert await store_tis.clear(session, "d", "r1", ["t0"], {"t0": 0}) == 1
    async with store_engine.transaction(sessions) as session:
        ended = await store_runs.set_state(
            session,
            pk,
            expected=states.RUN_RUNNING,
            state=states.RUN_SUCCESS,
            now=NOW,
            seen_unfinished=[],  # it saw every task finished
        )
        assert not ended
        assert (await store_runs.get_run(session, "d", "r1")).state == states.RUN_RUNNING
