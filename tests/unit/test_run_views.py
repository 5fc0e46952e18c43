"""`RunView`: deciding downstream of what changed must decide exactly what a full look decides."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

from miniflow import DAG, Bash
from miniflow.authoring.serialized import TRIGGER_RULES, SerializedDag
from miniflow.scheduler import readiness
from miniflow.scheduler.run_views import RunView

S, F, SK, N, SCH = "success", "failed", "skipped", "none", "scheduled"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _view(dag: SerializedDag, dag_hash: str, current: dict[str, str]) -> RunView:
    """A view as the scheduler builds it: after a full look and its decisions."""
    changes, _final = readiness.evaluate_run(dag, dag_hash, current)
    seen = {**current, **changes}
    ids = {task_id: i for i, task_id in enumerate(sorted(seen))}
    return RunView(readiness.graph(dag, dag_hash), dag_hash, ids, seen, NOW)


def _diamond() -> SerializedDag:
    with DAG("view_diamond", start_date=datetime(2026, 1, 1)) as dag:
        a, b = Bash("a", "true"), Bash("b", "true")
        c = Bash("c", "true")
        [a, b] >> c >> Bash("d", "true")
    return dag.serialize("view_diamond.py")


def test_a_task_is_decided_when_its_last_upstream_finishes_in_a_later_round() -> None:
    dag = _diamond()
    view = _view(dag, "diamond-1", {"a": N, "b": N, "c": N, "d": N})
    assert view.states == {"a": SCH, "b": SCH, "c": N, "d": N}
    view.set("a", S)
    assert view.advance(["a"]) == {}  # b still runs
    view.set("b", S)
    assert view.advance(["b"]) == {"c": SCH}  # a finished a round earlier
    assert view.states["d"] == N


def test_a_failure_propagates_down_in_the_same_pass() -> None:
    dag = _diamond()
    view = _view(dag, "diamond-2", {"a": N, "b": N, "c": N, "d": N})
    view.set("a", F)
    assert view.advance(["a"]) == {"c": "upstream_failed", "d": "upstream_failed"}
    assert not view.needs_full_look()  # b still runs
    view.set("b", S)
    assert view.advance(["b"]) == {}
    assert view.needs_full_look()  # nothing open: only a look at all rows may end the run


def test_counts_follow_the_states_and_compare_with_the_database() -> None:
    dag = _diamond()
    view = _view(dag, "diamond-3", {"a": N, "b": N, "c": N, "d": N})
    assert view.counts() == Counter({"open": 2, N: 2})
    assert view.agrees({"queued": 1, "running": 1, N: 2})
    view.set("a", S)
    assert view.agrees({"success": 1, "running": 1, N: 2})
    assert not view.agrees({"running": 1, N: 3})  # a was cleared behind the view's back


def _diamond_after(dag_hash: str, *ends: tuple[str, str]) -> RunView:
    """A diamond's view after its tasks ended as `ends` say, in that order, each decided
    downstream of (the last one's decisions left to the test)."""
    view = _view(_diamond(), dag_hash, {"a": N, "b": N, "c": N, "d": N})
    for i, (task_id, state) in enumerate(ends):
        view.set(task_id, state)
        if i < len(ends) - 1:
            view.advance([task_id])
    return view


def test_decisions_rest_on_fresh_rows_only_when_every_upstream_is_fresh() -> None:
    """The per-state count may be skipped only for decisions whose inputs the deciding
    transaction read: here c waits on a (read a round earlier) and b (read now)."""
    view = _diamond_after("diamond-4", ("a", S), ("b", S))
    decisions = view.advance(["b"])
    assert decisions == {"c": SCH}
    assert not view.rests_on(decisions, {"b"})  # a's success is the view's memory
    assert view.rests_on(decisions, {"a", "b"})
    view.set("c", F)
    further = view.advance(["c"])
    assert further == {"d": "upstream_failed"}
    assert view.rests_on(further, {"c"})


def test_a_decision_resting_on_another_decision_does_not_rest_on_fresh_rows() -> None:
    """a failed: c and d are decided in one pass, d from c's decision, which a worker may
    have made moot (a branch skips tasks in the transaction that records its success)."""
    view = _diamond_after("diamond-5", ("b", S), ("a", F))
    decisions = view.advance(["a"])
    assert decisions == {"c": "upstream_failed", "d": "upstream_failed"}
    assert not view.rests_on(decisions, {"a", "b"})
    assert view.rests_on({"c": "upstream_failed"}, {"a", "b"})


def test_a_teardown_s_decision_rests_on_its_setup_too() -> None:
    with DAG("view_setup", start_date=datetime(2026, 1, 1)) as dag:
        setup, work = Bash("setup", "true"), Bash("work", "true")
        teardown = Bash("teardown", "true").as_teardown(setups=setup)
        setup >> work >> teardown
    view = _view(dag.serialize("view_setup.py"), "setup-1", {t: N for t in dag.tasks})
    decisions = {"teardown": SCH}
    assert view.rests_on(decisions, {"work", "setup"})
    assert not view.rests_on(decisions, {"work"})


RULES = sorted(set(TRIGGER_RULES) - {"all_done_setup_success"})


def _random_dag(rng: random.Random, name: str) -> SerializedDag:
    with DAG(name, start_date=datetime(2026, 1, 1)) as dag:
        tasks: list[Bash] = []
        for i in range(rng.randint(2, 14)):
            role = rng.random()
            if role < 0.15:  # a teardown: its rule is its own
                task = Bash(f"t{i}", "true").as_teardown()
            else:
                task = Bash(f"t{i}", "true", trigger_rule=rng.choice(RULES))
                if role < 0.3:
                    task.as_setup()
            for up in rng.sample(tasks, k=min(len(tasks), rng.randint(0, 3))):
                up >> task
            tasks.append(task)
    return dag.serialize(f"{name}.py")


def test_incremental_decisions_equal_a_full_look_on_random_runs() -> None:
    """Finish open tasks one at a time in random order and outcome; after each, what the
    view decides downstream of that task is exactly what `evaluate_run` decides over
    every state, and the view's states are the full look's."""
    rng = random.Random(20261202)
    for case in range(300):
        dag = _random_dag(rng, f"view_random_{case}")
        dag_hash = f"random-{case}"
        truth = {task_id: N for task_id in dag["tasks"]}
        changes, _ = readiness.evaluate_run(dag, dag_hash, truth)
        truth.update(changes)
        view = _view(dag, dag_hash, {task_id: N for task_id in dag["tasks"]})
        while True:
            assert view.states == truth, case
            running = sorted(t for t, s in truth.items() if s == SCH)
            if not running:
                break
            task_id = rng.choice(running)
            truth[task_id] = rng.choice([S, S, F, SK])
            view.set(task_id, truth[task_id])
            expected, _ = readiness.evaluate_run(dag, dag_hash, truth)
            assert view.advance([task_id]) == expected, (case, task_id)
            truth.update(expected)
        assert view.needs_full_look()


def _fan_in() -> SerializedDag:
    with DAG("view_fan_in", start_date=datetime(2026, 1, 1)) as dag:
        [Bash("a", "true"), Bash("b", "true")] >> Bash("c", "true")
        Bash("x", "true")
    return dag.serialize("view_fan_in.py")


def test_a_view_is_read_again_only_for_finishes_that_may_release_a_task() -> None:
    """Among peers a view misses the finishes of the peers' tries: the sweep reads the run
    again when they may release a waiting task (or end the run), not after every one."""
    view = _view(_fan_in(), "fan-in-1", {"a": N, "b": N, "c": N, "x": N})
    assert view.fewest_open_upstream() == 2  # c waits on a and b
    assert not view.worth_reading({SCH: 3, N: 1})  # as the view holds it
    assert not view.worth_reading({S: 1, SCH: 2, N: 1})  # a or x: c still waits
    assert view.worth_reading({S: 2, SCH: 1, N: 1})  # a and b may be the two
    assert view.worth_reading({S: 3, N: 1})  # nothing open: c is ready, or the run over
    assert view.worth_reading({SCH: 2, N: 2})  # not a finish (a task cleared, say)
    assert view.worth_reading({F: 1, SCH: 2, N: 1})  # a failure decides c at once
    view.set("a", S)
    assert view.worth_reading({SCH: 3, N: 1})  # a finish the database does not have


def test_a_task_waiting_on_a_task_not_started_is_not_released_by_finishes() -> None:
    dag = _diamond()
    view = _view(dag, "diamond-3", {"a": N, "b": N, "c": N, "d": N})
    assert view.fewest_open_upstream() == 2  # c on a and b; d on c, which is not started
    view.set("a", S)
    view.set("b", S)
    view.advance(["a", "b"])  # c scheduled: d waits on it alone
    assert view.fewest_open_upstream() == 1
    view.set("c", S)
    view.advance(["c"])  # d scheduled: nothing waits
    assert view.fewest_open_upstream() is None


def test_a_rule_one_success_decides_waits_on_one_finish() -> None:
    with DAG("view_one_success", start_date=datetime(2026, 1, 1)) as built:
        [Bash("a", "true"), Bash("b", "true")] >> Bash("c", "true", trigger_rule="one_success")
    view = _view(built.serialize("view_one_success.py"), "one-1", {"a": N, "b": N, "c": N})
    assert view.fewest_open_upstream() == 1
    assert view.worth_reading({S: 1, SCH: 1, N: 1})
