"""Trigger rules as a table, and how `evaluate_run` propagates decisions through a run."""

from __future__ import annotations

from datetime import datetime

import pytest

from miniflow import DAG, Bash
from miniflow.authoring.serialized import TRIGGER_RULES
from miniflow.scheduler.readiness import decide, evaluate_run

S, F, UF, SK = "success", "failed", "upstream_failed", "skipped"
N, SCH, Q, R, RETRY = "none", "scheduled", "queued", "running", "up_for_retry"
RUN = "scheduled"  # decide()'s "ready to run"
WAIT = None

TABLE: list[tuple[str, list[str], str | None]] = [
    # all_success: everything succeeded; a failure fails it at once, a skip skips it
    ("all_success", [S, S], RUN),
    ("all_success", [S, R], WAIT),
    ("all_success", [S, N], WAIT),
    ("all_success", [S, RETRY], WAIT),
    ("all_success", [S, F], UF),
    ("all_success", [R, F], UF),
    ("all_success", [S, UF], UF),
    ("all_success", [S, SK], SK),
    ("all_success", [SK, SK], SK),
    # all_failed: every upstream failed (or upstream_failed)
    ("all_failed", [F, F], RUN),
    ("all_failed", [F, UF], RUN),
    ("all_failed", [F, R], WAIT),
    ("all_failed", [F, RETRY], WAIT),
    ("all_failed", [F, S], SK),
    ("all_failed", [F, SK], SK),
    # all_done: everything finished, whatever the outcome
    ("all_done", [S, F], RUN),
    ("all_done", [SK, UF], RUN),
    ("all_done", [S, R], WAIT),
    ("all_done", [S, Q], WAIT),
    ("all_done", [F, RETRY], WAIT),
    ("all_done", [S, SCH], WAIT),
    # one_success: as soon as one succeeded
    ("one_success", [S, R], RUN),
    ("one_success", [F, S], RUN),
    ("one_success", [F, R], WAIT),
    ("one_success", [N, N], WAIT),
    ("one_success", [F, F], UF),
    ("one_success", [F, SK], UF),
    ("one_success", [SK, SK], SK),
    # one_failed: as soon as one failed; skipped when all finished without failure
    ("one_failed", [F, R], RUN),
    ("one_failed", [UF, N], RUN),
    ("one_failed", [S, R], WAIT),
    ("one_failed", [S, RETRY], WAIT),  # a retry pending is not a failure
    ("one_failed", [S, S], SK),
    ("one_failed", [S, SK], SK),
    # none_failed: all finished and none failed (skips are fine)
    ("none_failed", [S, SK], RUN),
    ("none_failed", [SK, SK], RUN),
    ("none_failed", [S, R], WAIT),
    ("none_failed", [S, F], UF),
    ("none_failed", [UF, R], UF),
    # all_skipped: every upstream skipped; any other outcome skips it at once
    ("all_skipped", [SK, SK], RUN),
    ("all_skipped", [SK, R], WAIT),
    ("all_skipped", [S, R], SK),
    ("all_skipped", [F, SK], SK),
    ("all_skipped", [UF, SK], SK),
    # all_done_min_one_success: everything finished, at least one succeeded
    ("all_done_min_one_success", [S, F], RUN),
    ("all_done_min_one_success", [S, SK], RUN),
    ("all_done_min_one_success", [S, R], WAIT),
    ("all_done_min_one_success", [F, UF], UF),
    ("all_done_min_one_success", [SK, F], UF),
    ("all_done_min_one_success", [SK, SK], SK),
    # one_done: as soon as one succeeded or failed (upstream_failed does not count)
    ("one_done", [S, R], RUN),
    ("one_done", [F, N], RUN),
    ("one_done", [UF, R], WAIT),
    ("one_done", [SK, RETRY], WAIT),
    ("one_done", [SK, UF], SK),
    ("one_done", [SK, SK], SK),
    # none_failed_min_one_success: the join after a branch
    ("none_failed_min_one_success", [S, SK], RUN),
    ("none_failed_min_one_success", [S, S], RUN),
    ("none_failed_min_one_success", [S, R], WAIT),
    ("none_failed_min_one_success", [SK, R], WAIT),
    ("none_failed_min_one_success", [SK, SK], SK),
    ("none_failed_min_one_success", [F, R], UF),
    ("none_failed_min_one_success", [SK, UF], UF),
    # none_skipped: all finished, none skipped (failures are fine)
    ("none_skipped", [S, F], RUN),
    ("none_skipped", [UF, S], RUN),
    ("none_skipped", [S, R], WAIT),
    ("none_skipped", [SK, R], SK),
    # all_done_setup_success (teardowns) without setups upstream: all_done
    ("all_done_setup_success", [S, F], RUN),
    ("all_done_setup_success", [S, R], WAIT),
    # always: immediately
    ("always", [N, N], RUN),
    ("always", [F, R], RUN),
    ("always", [UF, SK], RUN),
]


@pytest.mark.parametrize(("rule", "upstream", "expected"), TABLE, ids=lambda v: str(v))
def test_decide(rule: str, upstream: list[str], expected: str | None) -> None:
    assert decide(rule, upstream) == expected


def test_table_covers_every_rule() -> None:
    assert {rule for rule, _, _ in TABLE} == set(TRIGGER_RULES)


@pytest.mark.parametrize("rule", TRIGGER_RULES)
def test_no_upstream_runs_at_once(rule: str) -> None:
    assert decide(rule, []) == RUN


def test_unknown_rule_is_an_error() -> None:
    with pytest.raises(ValueError, match="nope"):
        decide("nope", [S])


# --- evaluate_run ---------------------------------------------------------------------------


def _chain(dag_id: str, cleanup_rule: str | None = None) -> dict:  # type: ignore[type-arg]
    """a >> b >> c, optionally c >> cleanup(cleanup_rule)."""
    with DAG(dag_id, start_date=datetime(2026, 1, 1)) as dag:
        a, b, c = Bash("a", "true"), Bash("b", "true"), Bash("c", "true")
        a >> b >> c
        if cleanup_rule:
            c >> Bash("cleanup", "true", trigger_rule=cleanup_rule)
    return dag.serialize(f"{dag_id}.py")  # type: ignore[return-value]


def test_roots_are_scheduled_first() -> None:
    dag = _chain("ev_roots")
    changes, final = evaluate_run(dag, "h1", {"a": N, "b": N, "c": N})
    assert changes == {"a": SCH}
    assert final is None


def test_upstream_failed_propagates_down_the_chain_in_one_pass() -> None:
    dag = _chain("ev_uf")
    changes, final = evaluate_run(dag, "h1", {"a": F, "b": N, "c": N})
    assert changes == {"b": UF, "c": UF}
    assert final == "failed"


def test_skipped_propagates_and_the_run_succeeds() -> None:
    dag = _chain("ev_skip")
    changes, final = evaluate_run(dag, "h1", {"a": SK, "b": N, "c": N})
    assert changes == {"b": SK, "c": SK}
    assert final == "success"


def test_all_done_cleanup_runs_after_propagated_failure() -> None:
    dag = _chain("ev_cleanup", cleanup_rule="all_done")
    changes, final = evaluate_run(dag, "h1", {"a": F, "b": N, "c": N, "cleanup": N})
    assert changes == {"b": UF, "c": UF, "cleanup": SCH}
    assert final is None  # cleanup still has to run


def test_run_state_follows_the_leaves() -> None:
    dag = _chain("ev_leaves", cleanup_rule="all_done")
    # the only leaf (cleanup) succeeded: success, even though a failed earlier
    assert evaluate_run(dag, "h1", {"a": F, "b": UF, "c": UF, "cleanup": S}) == ({}, "success")
    assert evaluate_run(dag, "h1", {"a": S, "b": S, "c": S, "cleanup": F}) == ({}, "failed")
    assert evaluate_run(dag, "h1", {"a": S, "b": S, "c": S, "cleanup": SK}) == ({}, "success")


def test_run_not_final_while_anything_is_active() -> None:
    dag = _chain("ev_active")
    for state in (SCH, Q, R, RETRY):
        changes, final = evaluate_run(dag, "h1", {"a": S, "b": S, "c": state})
        assert (changes, final) == ({}, None), state


def test_all_success_chain_ends_in_success() -> None:
    dag = _chain("ev_ok")
    assert evaluate_run(dag, "h1", {"a": S, "b": S, "c": S}) == ({}, "success")
    assert evaluate_run(dag, "h1", {"a": S, "b": S, "c": N}) == ({"c": SCH}, None)


def test_fan_in_with_mixed_rules() -> None:
    with DAG("ev_fan", start_date=datetime(2026, 1, 1)) as dag:
        ok, bad = Bash("ok", "true"), Bash("bad", "false")
        [ok, bad] >> Bash("one_ok", "true", trigger_rule="one_success")
        [ok, bad] >> Bash("all_ok", "true")
        [ok, bad] >> Bash("on_fail", "true", trigger_rule="one_failed")
    ser = dag.serialize("ev_fan.py")
    changes, final = evaluate_run(
        ser,
        "h1",
        {"ok": S, "bad": F, "one_ok": N, "all_ok": N, "on_fail": N},  # type: ignore[arg-type]
    )
    assert changes == {"one_ok": SCH, "all_ok": UF, "on_fail": SCH}
    assert final is None


# --- never a silent skip ----------------------------------------------------------------------


def test_a_waiting_task_the_version_lacks_keeps_the_run_from_succeeding() -> None:
    """A row in `none` that the run's version does not define can never run: the run must
    not end success as if it were done (it fails, and says which task)."""
    dag = _chain("ev_unknown")
    assert evaluate_run(dag, "h1", {"a": S, "b": S, "c": S, "ghost": N}) == ({}, "failed")
    # ... but not while anything else is still going on
    assert evaluate_run(dag, "h1", {"a": S, "b": S, "c": R, "ghost": N}) == ({}, None)


def test_a_finished_row_the_version_lacks_does_not_decide_the_outcome() -> None:
    dag = _chain("ev_extra")
    assert evaluate_run(dag, "h1", {"a": S, "b": S, "c": S, "old": F}) == ({}, "success")


def test_an_undecidable_waiting_task_fails_the_run() -> None:
    """c waits on b, which waits on a task in `none` the version does not know: nothing is
    running, so nothing will ever change; success would silently skip b and c."""
    with DAG("ev_stuck", start_date=datetime(2026, 1, 1)) as d:
        Bash("a", "true") >> Bash("b", "true") >> Bash("c", "true")
    dag = d.serialize("ev_stuck.py")
    dag["tasks"]["b"]["upstream"] = ["a", "ghost"]  # type: ignore[index]
    changes, final = evaluate_run(dag, "h2", {"a": S, "ghost": N, "b": N, "c": N})  # type: ignore[arg-type]
    assert (changes, final) == ({}, "failed")
