"""Authoring parity with Airflow (issue #12): `Empty`, branching, short-circuit, task groups.

Definition-time behaviour and the serialized form only; what the scheduler and the
worker do with them is in `tests/integration/test_authoring_runs.py`.
"""

from __future__ import annotations

from datetime import datetime

import pytest

import miniflow
from miniflow import DAG, Bash, Empty
from miniflow.errors import DagDefinitionError
from miniflow.scheduler.readiness import evaluate_run

START = datetime(2026, 1, 1)


def test_public_names_are_exported() -> None:
    from miniflow import DAG, Bash, Pod, task  # noqa: F401  (today's names keep working)

    assert {"Empty"} <= set(miniflow.__all__)


# --- Empty ----------------------------------------------------------------------------------


def test_empty_serializes_as_its_own_kind_with_settings() -> None:
    with DAG("e", start_date=START) as dag:
        a = Bash("a", "true")
        join = Empty("join", trigger_rule="none_failed")
        a >> join
    data = dag.serialize("e.py")["tasks"]["join"]
    assert data["kind"] == "empty"
    assert data["trigger_rule"] == "none_failed"
    assert data["upstream"] == ["a"]
    assert "command" not in data and "image" not in data


def test_empty_rejects_unknown_keywords() -> None:
    with DAG("e2"), pytest.raises(DagDefinitionError, match="unknown keyword argument 'command'"):
        Empty("join", command="echo")


def test_empty_tasks_complete_in_the_readiness_pass() -> None:
    """start (empty) >> work >> end (empty): the root completes at once, with no launch;
    the end completes in the same pass as work's success, and propagates further."""
    with DAG("e3", start_date=START) as d:
        end = Empty("end")
        Empty("start") >> Bash("work", "true") >> end >> Bash("after", "true")
    dag = d.serialize("e3.py")
    assert evaluate_run(dag, "h", {"start": "none", "work": "none", "end": "none",
                                    "after": "none"}) == (
        {"start": "success", "work": "scheduled"}, None
    )  # fmt: skip
    assert evaluate_run(dag, "h", {"start": "success", "work": "success", "end": "none",
                                    "after": "none"}) == (
        {"end": "success", "after": "scheduled"}, None
    )  # fmt: skip


def test_an_empty_task_follows_its_trigger_rule() -> None:
    with DAG("e4", start_date=START) as d:
        Bash("a", "false") >> Empty("join")
        Bash("b", "true") >> Empty("skipme", trigger_rule="one_failed")
    dag = d.serialize("e4.py")
    changes, final = evaluate_run(
        dag, "h", {"a": "failed", "join": "none", "b": "success", "skipme": "none"}
    )
    assert changes == {"join": "upstream_failed", "skipme": "skipped"}
    assert final == "failed"


# --- branching and short-circuit -----------------------------------------------------------


def test_branch_and_short_circuit_serialize_their_mode() -> None:
    from miniflow import task

    with DAG("b", start_date=START) as dag:

        @task.branch(retries=2)
        def pick() -> str:
            return "a"

        @task.short_circuit
        def gate() -> bool:
            return True

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def soft() -> bool:
            return True

        @task
        def plain() -> int:
            return 1

        pick() >> Bash("a", "true")
        gate(), soft(), plain()
    tasks = dag.serialize("b.py")["tasks"]
    assert tasks["pick"]["python_mode"] == "branch" and tasks["pick"]["retries"] == 2
    assert "ignore_downstream_trigger_rules" not in tasks["pick"]
    assert tasks["gate"]["python_mode"] == "short_circuit"
    assert tasks["gate"]["ignore_downstream_trigger_rules"] is True
    assert tasks["soft"]["ignore_downstream_trigger_rules"] is False
    assert "python_mode" not in tasks["plain"]


def test_short_circuit_flag_must_be_a_bool() -> None:
    from miniflow import task

    with pytest.raises(DagDefinitionError, match="ignore_downstream_trigger_rules must be True"):

        @task.short_circuit(ignore_downstream_trigger_rules="no")  # type: ignore[arg-type]
        def gate() -> bool:
            return True


def test_branch_must_decorate_a_function() -> None:
    from miniflow import task

    with pytest.raises(DagDefinitionError, match=r"@task\.branch must decorate a function"):
        task.branch(3)  # type: ignore[call-overload]


# --- task groups ------------------------------------------------------------------------------


def _edges(dag: DAG) -> set[tuple[str, str]]:
    return {(u, t.task_id) for t in dag.tasks.values() for u in t.upstream_ids}


def test_task_group_prefixes_ids_nests_and_wires_roots_and_leaves() -> None:
    from miniflow import TaskGroup

    with DAG("g", start_date=START) as dag:
        start, end = Empty("start"), Empty("end")
        with TaskGroup("extract") as extract:
            a, b = Bash("a", "true"), Bash("b", "true")
            with TaskGroup("inner") as inner:
                c = Bash("c", "true")
            a >> c
        start >> extract >> end
    assert [t.task_id for t in extract.members] == ["extract.a", "extract.b", "extract.inner.c"]
    assert inner.group_id == "extract.inner" and c.task_id == "extract.inner.c"
    assert {t.task_id for t in extract.roots()} == {"extract.a", "extract.b"}
    assert {t.task_id for t in extract.leaves()} == {"extract.b", "extract.inner.c"}
    assert _edges(dag) == {
        ("start", "extract.a"),
        ("start", "extract.b"),
        ("extract.a", "extract.inner.c"),
        ("extract.b", "end"),
        ("extract.inner.c", "end"),
    }
    assert b.task_id in dag.serialize("g.py")["tasks"]


def test_lists_of_groups_and_lshift() -> None:
    from miniflow import TaskGroup

    with DAG("g2", start_date=START) as dag:
        with TaskGroup("x") as x:
            Bash("t", "true")
        with TaskGroup("y") as y:
            Bash("t", "true")  # the same local id in another group is fine
        join = Empty("join")
        join << [x, y]
    assert _edges(dag) == {("x.t", "join"), ("y.t", "join")}


def test_task_functions_in_groups_and_task_group_decorator() -> None:
    from miniflow import task, task_group

    with DAG("g3", start_date=START) as dag:

        @task
        def load(v: int) -> int:
            return v

        @task_group
        def etl(v: int):  # type: ignore[no-untyped-def]
            return load(load(v))

        @task_group(group_id="side")
        def side_effects() -> None:
            Bash("one", "true")
            Bash("two", "true")

        first = etl(1)
        second = etl(2)  # a second call is a second group, as for @task
        group = side_effects()
        first >> group
    assert set(dag.tasks) == {
        "etl.load", "etl.load__1", "etl__1.load", "etl__1.load__1", "side.one", "side.two",
    }  # fmt: skip
    assert dag.tasks["etl.load__1"].serialize()["op_args"] == [{"ref": "etl.load"}]
    assert second.task_id == "etl__1.load__1"  # the function's result stands for the group
    assert _edges(dag) >= {("etl.load__1", "side.one"), ("etl.load__1", "side.two")}


def test_group_errors_name_the_problem() -> None:
    from miniflow import TaskGroup

    with pytest.raises(DagDefinitionError, match="must be created inside a `with DAG"):
        TaskGroup("g")
    with DAG("g4"):
        with pytest.raises(DagDefinitionError, match="invalid task group id 'bad id'"):
            TaskGroup("bad id")
        with TaskGroup("empty") as empty:
            pass
        with pytest.raises(DagDefinitionError, match="task group 'empty' has no tasks"):
            empty >> Bash("t", "true")
        with TaskGroup("x" * 60), pytest.raises(DagDefinitionError, match="invalid task id"):
            Bash("long_name", "true")


# --- get_current_context ----------------------------------------------------------------------


def test_get_current_context_outside_a_task_is_a_clear_error() -> None:
    from miniflow import get_current_context
    from miniflow.authoring.context import NoTaskContext

    with pytest.raises(NoTaskContext, match=r"only while a @task function runs"):
        get_current_context()


def test_bound_context_is_seen_in_threads_and_reset_after() -> None:
    import contextvars
    import threading

    from miniflow import get_current_context
    from miniflow.authoring.context import NoTaskContext, bound

    base = {"dag_id": "d", "run_id": "r", "task_id": "t", "try_number": 2, "params": {"a": 1}}
    seen: list[dict[str, object]] = []
    with bound(base):
        ctx = contextvars.copy_context()  # what the worker's daemon thread runs in
        thread = threading.Thread(target=lambda: seen.append(ctx.run(get_current_context)))
        thread.start()
        thread.join()
        get_current_context()["params"] = "changed"  # a copy
        assert get_current_context()["params"] == {"a": 1}
    (got,) = seen
    assert got["ti"].task_id == "t" and got["ti"].try_number == 2  # type: ignore[attr-defined]
    assert got["task_instance"] is got["ti"] and got["run_id"] == "r"
    with pytest.raises(NoTaskContext):
        get_current_context()


# --- typed params -----------------------------------------------------------------------------


def _typed_dag(**dag_kwargs: object) -> DAG:
    from miniflow import Param

    with DAG(
        "typed",
        params={
            "limit": Param(5, type="integer", minimum=1, description="rows per batch"),
            "mode": Param("fast", enum=["fast", "safe"]),
            "plain": [1, 2],
            "target": Param(type="string", minLength=1, description="table to load"),
        },
        **dag_kwargs,  # type: ignore[arg-type]
    ) as dag:
        Bash("t", "echo {{ params.limit }}")
    return dag


def test_param_serializes_defaults_and_schemas() -> None:
    data = _typed_dag().serialize("typed.py")
    assert data["params"] == {"limit": 5, "mode": "fast", "plain": [1, 2]}  # target: required
    assert data["param_specs"] == {
        "limit": {"schema": {"type": "integer", "minimum": 1}, "description": "rows per batch",
                  "required": False},
        "mode": {"schema": {"enum": ["fast", "safe"]}, "description": None, "required": False},
        "target": {"schema": {"type": "string", "minLength": 1},
                   "description": "table to load", "required": True},
    }  # fmt: skip


def test_param_definition_errors() -> None:
    from miniflow import Param

    with pytest.raises(DagDefinitionError, match="param 'n': default 0 is invalid: 0 is less"):
        DAG("p1", params={"n": Param(0, type="integer", minimum=1)})
    with pytest.raises(DagDefinitionError, match="invalid Param schema"):
        Param(1, type="integr")
    with pytest.raises(DagDefinitionError, match="'target' have none"):
        _typed_dag(schedule="@daily")


@pytest.mark.parametrize(
    ("conf", "error"),
    [
        ('{"target": "t"}', None),
        ('{"target": "t", "limit": 10, "mode": "safe"}', None),
        (None, "param 'target' (table to load) is required: give it in --conf"),
        ('{"limit": 10}', "param 'target' (table to load) is required"),
        ('{"target": ""}', "param 'target' (table to load): '' should be non-empty"),
        ('{"target": "t", "limit": 0}', "param 'limit' (rows per batch): 0 is less than the "
                                        "minimum of 1"),
        ('{"target": "t", "limit": "5"}', "param 'limit' (rows per batch): '5' is not of type "
                                          "'integer'"),
        ('{"target": "t", "mode": "slow"}', "param 'mode': 'slow' is not one of ['fast', 'safe']"),
        ('{"target": "t", "nope": 1}', "has no param(s) 'nope' (declared params: limit, mode, "
                                       "plain, target)"),
    ],
)  # fmt: skip
def test_conf_is_validated_against_typed_params(conf: str | None, error: str | None) -> None:
    from miniflow.errors import ConfValidationError
    from miniflow.scheduler.manual_runs import parse_conf

    dag = _typed_dag().serialize("typed.py")
    if error is None:
        parse_conf(conf, dag)
        return
    with pytest.raises(ConfValidationError) as info:
        parse_conf(conf, dag)
    assert error in str(info.value)


def test_a_dag_stored_before_typed_params_still_parses_conf() -> None:
    from miniflow.scheduler.manual_runs import parse_conf

    with DAG("old", params={"a": 1}) as dag:
        Bash("t", "true")
    data = dict(dag.serialize("old.py"))
    del data["param_specs"]
    assert parse_conf('{"a": 2}', data) == {"a": 2}  # type: ignore[arg-type]


def test_dags_show_names_branch_tasks_and_lists_params() -> None:
    import io

    from rich.console import Console

    from miniflow import task
    from miniflow.cli.views import print_dag_tree

    with DAG("shown", params={"plain": 1}) as dag:

        @task.branch
        def pick() -> str:
            return "a"

        pick() >> Bash("a", "true")
    out = io.StringIO()
    print_dag_tree(dag.serialize("shown.py"), Console(file=out, width=200))
    text = out.getvalue()
    assert "pick (python, branch)" in text
    assert "  plain = 1\n" in text

    typed = io.StringIO()
    print_dag_tree(_typed_dag().serialize("typed.py"), Console(file=typed, width=200))
    assert '  target = required  {"minLength": 1, "type": "string"}  — table to load' in (
        typed.getvalue()
    )


def test_skip_on_exit_code_is_validated_and_serialized() -> None:
    with DAG("sk") as dag:
        Bash("one", "exit 99", skip_on_exit_code=99)
        Bash("many", "exit 3", skip_on_exit_code=[3, 1, 3])
        Bash("none", "true")
        for bad in (0, 256, "99", [1, True], 1.5):
            with pytest.raises(DagDefinitionError, match="skip_on_exit_code must be an exit code"):
                Bash("bad", "true", skip_on_exit_code=bad)  # type: ignore[arg-type]
    tasks = dag.serialize("sk.py")["tasks"]
    assert tasks["one"]["skip_on_exit_code"] == [99]
    assert tasks["many"]["skip_on_exit_code"] == [1, 3]
    assert "skip_on_exit_code" not in tasks["none"]


def test_task_group_settings_are_defaults_between_the_dag_and_the_task() -> None:
    from datetime import timedelta

    from miniflow import TaskGroup, task, task_group

    with DAG("gd", retries=1, env={"A": "dag", "B": "dag"}) as dag:
        with TaskGroup("g", default_args={"retries": 3}, env={"B": "group"}, pool="p"):
            Bash("plain", "true")
            Bash("own", "true", retries=5, env={"A": "task"})
            with TaskGroup("inner", timeout=timedelta(seconds=9)):
                Bash("deep", "true")

        @task_group(retries=4)
        def fn_group() -> None:
            @task
            def py() -> int:
                return 1

            py()

        fn_group()
        Bash("outside", "true")
    tasks = dag.serialize("gd.py")["tasks"]
    assert (tasks["g.plain"]["retries"], tasks["g.plain"]["pool"]) == (3, "p")
    assert tasks["g.plain"]["env"] == {"A": "dag", "B": "group"}
    assert tasks["g.own"]["retries"] == 5 and tasks["g.own"]["env"] == {"A": "task", "B": "group"}
    deep = tasks["g.inner.deep"]
    assert (deep["retries"], deep["pool"], deep["timeout"]) == (3, "p", 9.0)
    assert tasks["fn_group.py"]["retries"] == 4
    assert tasks["outside"]["retries"] == 1 and tasks["outside"]["pool"] is None


def test_task_group_without_prefix_and_bad_settings() -> None:
    from miniflow import TaskGroup

    with DAG("gp") as dag:
        with TaskGroup("outer"), TaskGroup("flat", prefix_group_id=False) as flat:
            t = Bash("t", "true")
        with pytest.raises(DagDefinitionError, match="task group 'bad': unknown keyword"):
            TaskGroup("bad", retrys=2)
        with pytest.raises(DagDefinitionError, match="retries must be an integer"):
            TaskGroup("bad", retries=-1)
    assert t.task_id == "outer.t" and flat.members == [t]
    assert "outer.t" in dag.tasks
