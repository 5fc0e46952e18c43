"""Setup / teardown tasks: the definition API, the teardown rule, the run's outcome, and
what a clear brings along (setups, teardowns, a branch's earlier skips)."""

from __future__ import annotations

from datetime import datetime

import pytest

from miniflow import DAG, Bash, Empty, TaskGroup, task
from miniflow.authoring.serialized import SerializedDag
from miniflow.errors import DagDefinitionError
from miniflow.scheduler.readiness import decide, evaluate_run, graph
from miniflow.scheduler.run_views import RunView
from miniflow.store.clearing import selection

S, F, UF, SK, N, R = "success", "failed", "upstream_failed", "skipped", "none", "running"
SCH = "scheduled"
RULE = "all_done_setup_success"


def _pipeline(dag_id: str, *, fail_dagrun: bool = False) -> SerializedDag:
    """setup >> work >> teardown (decorated), and `after` downstream of work."""
    with DAG(dag_id, start_date=datetime(2026, 1, 1)) as dag:

        @task.setup
        def setup() -> str:
            return "r"

        @task
        def work(resource: str) -> None:
            pass

        @task.teardown(on_failure_fail_dagrun=fail_dagrun)
        def teardown() -> None:
            pass

        s = setup()
        w = work(s)
        w >> teardown()
    return dag.serialize(f"{dag_id}.py")


# --- the definition API ---------------------------------------------------------------------


def test_decorators_mark_tasks_and_the_teardown_gets_its_rule() -> None:
    tasks = _pipeline("st_api")["tasks"]
    assert tasks["setup"].get("setup") is True and "teardown" not in tasks["setup"]
    assert tasks["teardown"].get("teardown") is True
    assert tasks["teardown"]["trigger_rule"] == RULE
    assert "on_failure_fail_dagrun" not in tasks["teardown"]
    assert tasks["work"]["trigger_rule"] == "all_success" and "setup" not in tasks["work"]
    assert _pipeline("st_api2", fail_dagrun=True)["tasks"]["teardown"]["on_failure_fail_dagrun"]


def test_as_teardown_marks_its_setups_and_links_them() -> None:
    with DAG("st_methods") as dag:
        lock = Bash("lock", "true")
        unlock = Bash("unlock", "true").as_teardown(setups=lock)
        lock >> Bash("work", "true") >> unlock

        @task
        def make() -> int:
            return 1

        @task
        def drop(x: int) -> None:
            pass

        made = make()
        dropped = drop(made).as_teardown(setups=made, on_failure_fail_dagrun=True)
        assert dropped.task_id == "drop"  # a task result stays a task result
    tasks = dag.serialize("m.py")["tasks"]
    assert tasks["lock"].get("setup") and tasks["make"].get("setup")
    assert tasks["unlock"]["upstream"] == ["lock", "work"]
    assert tasks["drop"]["on_failure_fail_dagrun"] is True


def test_setup_and_teardown_mistakes_name_the_line() -> None:
    with DAG("st_bad"):
        s = Bash("s", "true").as_setup()
        with pytest.raises(DagDefinitionError, match="'s' is a setup: it cannot be a teardown"):
            s.as_teardown()
        t = Bash("t", "true").as_teardown()
        with pytest.raises(DagDefinitionError, match="'t' is a teardown: it cannot be a setup"):
            t.as_setup()
        with pytest.raises(DagDefinitionError, match="a teardown's trigger rule is always"):
            Bash("u", "true", trigger_rule="all_done").as_teardown()
        with pytest.raises(DagDefinitionError, match="is the rule of teardown tasks") as info:
            Bash("v", "true", trigger_rule=RULE)
        assert info.value.filename == __file__
        with pytest.raises(DagDefinitionError, match="on_failure_fail_dagrun must be True or"):
            Bash("w", "true").as_teardown(on_failure_fail_dagrun="yes")  # type: ignore[arg-type]


# --- the teardown rule ----------------------------------------------------------------------

TEARDOWN_TABLE: list[tuple[list[str], list[str], str | None]] = [
    # (upstream states, setup states) → decision
    ([S, F], [S], SCH),  # the work failed: the teardown still runs
    ([S, UF], [S], SCH),
    ([S, R], [S], None),  # work still running: wait
    ([F, UF], [F], SK),  # its setup failed: nothing to tear down
    ([SK, SK], [SK], SK),
    ([S, S], [S, F], SCH),  # one setup of two succeeded
    ([S, S], [S, R], None),  # a setup (not a direct upstream) still running
    ([F, S], [], SCH),  # no setup upstream: all_done
]


@pytest.mark.parametrize(("upstream", "setups", "expected"), TEARDOWN_TABLE, ids=str)
def test_teardown_rule(upstream: list[str], setups: list[str], expected: str | None) -> None:
    assert decide(RULE, upstream, setups) == expected


def test_work_failure_runs_the_teardown_and_fails_the_run() -> None:
    dag = _pipeline("st_ev1")
    changes, final = evaluate_run(dag, "h", {"setup": S, "work": F, "teardown": N})
    assert changes == {"teardown": SCH} and final is None
    _, final = evaluate_run(dag, "h", {"setup": S, "work": F, "teardown": S})
    assert final == "failed"  # the work is a leaf for the outcome, the teardown is not


def test_a_teardown_failure_does_not_fail_the_run_unless_asked() -> None:
    done = {"setup": S, "work": S, "teardown": F}
    assert evaluate_run(_pipeline("st_ev2"), "h", done)[1] == "success"
    assert evaluate_run(_pipeline("st_ev3", fail_dagrun=True), "h", done)[1] == "failed"


def test_setup_failure_skips_the_teardown() -> None:
    dag = _pipeline("st_ev4")
    changes, final = evaluate_run(dag, "h", {"setup": F, "work": N, "teardown": N})
    assert changes == {"work": UF, "teardown": SK}
    assert final == "failed"


def test_the_incremental_view_decides_the_teardown_like_a_full_look() -> None:
    dag = _pipeline("st_view")
    ids = {"setup": 1, "work": 2, "teardown": 3}
    view = RunView(
        graph(dag, "h"), "h", ids, {"setup": S, "work": R, "teardown": N}, datetime(2026, 1, 1)
    )
    view.set("work", F)
    assert view.advance(["work"]) == {"teardown": SCH}


# --- clearing -------------------------------------------------------------------------------


def _found(states: dict[str, str]) -> dict[str, tuple[str, int]]:
    return {t: (s, 0 if s in (N, SK, UF) else 1) for t, s in states.items()}


def test_clearing_work_clears_its_setup_and_teardown() -> None:
    dag = _pipeline("st_clear")
    found = _found({"setup": S, "work": F, "teardown": S})
    assert selection(dag, "work", False, found) == ["setup", "work", "teardown"]
    assert selection(dag, "setup", False, found) == ["setup", "teardown"]
    assert selection(dag, "teardown", False, found) == ["teardown"]


def _branchy() -> SerializedDag:
    with DAG("st_branch") as dag:

        @task.branch
        def pick() -> str:
            return "a"

        with TaskGroup("g") as g:
            Bash("b1", "true") >> Bash("b2", "true")
        a = Bash("a", "true")
        selfskip = Bash("self_skip", "exit 99", skip_on_exit_code=99)
        join = Empty("join", trigger_rule="none_failed_min_one_success")
        pick() >> [a, g, selfskip] >> join
    return dag.serialize("b.py")


def test_clearing_a_branch_resets_what_its_result_skipped() -> None:
    dag = _branchy()
    found: dict[str, tuple[str, int]] = {
        "pick": (S, 1),
        "a": (S, 1),
        "g.b1": (SK, 0),  # skipped by pick's result
        "g.b2": (SK, 0),  # skipped by propagation
        "self_skip": (SK, 1),  # skipped itself: keeps its skip
        "join": (S, 0),
    }
    assert selection(dag, "pick", False, found) == ["g.b1", "g.b2", "pick"]  # DAG order
    # A plain task keeps its downstream skips.
    assert selection(dag, "a", False, found) == ["a"]


# --- dags show ------------------------------------------------------------------------------


def test_dags_show_lists_grouped_tasks_under_their_group() -> None:
    import io

    from rich.console import Console

    from miniflow.cli.views import print_dag_tree

    out = io.StringIO()
    print_dag_tree(_branchy(), Console(file=out, width=200, no_color=True))
    lines = out.getvalue().splitlines()

    def indent(name: str) -> int:
        line = next(x for x in lines if f"{name} (" in x)
        return len(line) - len(line.lstrip("│├└─ "))

    assert indent("g") == indent("a")  # the group is a node beside the other branches
    assert indent("g.b1") > indent("g") and indent("g.b2") > indent("g.b1")
    assert any("g (task group)" in x for x in lines)


def test_dags_show_marks_setup_and_teardown() -> None:
    import io

    from rich.console import Console

    from miniflow.cli.views import print_dag_tree

    out = io.StringIO()
    print_dag_tree(_pipeline("st_show"), Console(file=out, width=200, no_color=True))
    text = out.getvalue()
    assert "setup (python, setup)" in text
    assert "teardown (python, teardown)" in text
    assert RULE not in text


def test_a_teardown_block_puts_its_tasks_between_setup_and_teardown() -> None:
    with DAG("st_block") as dag:

        @task
        def create() -> str:
            return "c"

        @task
        def delete(name: str) -> None:
            pass

        made = create()
        with delete(made).as_teardown(setups=made):
            first = Bash("first", "true")
            first >> Bash("second", "true")
            Bash("alone", "true")
        with pytest.raises(DagDefinitionError, match="only a teardown task opens a block"):
            with Bash("plain", "true"):
                pass
    tasks = dag.serialize("blk.py")["tasks"]
    assert tasks["first"]["upstream"] == ["create"]
    assert tasks["second"]["upstream"] == ["first"]
    assert tasks["alone"]["upstream"] == ["create"]
    assert tasks["delete"]["upstream"] == ["alone", "create", "second"]
    assert tasks["create"].get("setup") and tasks["delete"].get("teardown")
