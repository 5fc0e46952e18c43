"""`@task`: refs become upstreams and `{"ref": ...}`, literals `{"value": ...}`, ids `f__1`."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from miniflow import DAG, Bash, task
from miniflow.authoring.taskflow import PythonTask, TaskRef
from miniflow.errors import DagDefinitionError


@task
def extract() -> list[int]:
    return [1, 2, 3]


@task(task_id="sum-it", retries=4, retry_delay=timedelta(seconds=10), pool="cpu")
def total(values: list[int], scale: int = 1, *, offset: int = 0) -> int:
    return sum(values) * scale + offset


def test_refs_become_upstreams_and_refs() -> None:
    with DAG("d", retries=1) as dag:
        values = extract()
        result = total(values, 2, offset=extract())
    assert isinstance(result, TaskRef)
    assert result.task_id == "sum-it"
    data = dag.serialize("f.py")
    t = data["tasks"]["sum-it"]
    assert t["kind"] == "python"
    assert t["upstream"] == ["extract", "extract__1"]
    assert t["op_args"] == [{"ref": "extract"}, {"value": 2}]
    assert t["op_kwargs"] == {"offset": {"ref": "extract__1"}}
    assert t["python_callable"] == "total"
    assert (t["retries"], t["retry_delay"], t["pool"]) == (4, 10.0, "cpu")
    assert data["tasks"]["extract"]["retries"] == 1
    json.dumps(data)


def test_override_makes_another_task_of_the_same_function() -> None:
    with DAG("d", retries=1) as dag:
        eu = total.override(task_id="sum-eu", retries=7)([1], offset=1)
        us = total.override(pool="gpu")([2])
        plain = extract.override()()
    assert (eu.task_id, us.task_id, plain.task_id) == ("sum-eu", "sum-it", "extract")
    tasks = dag.serialize("f.py")["tasks"]
    assert (tasks["sum-eu"]["retries"], tasks["sum-eu"]["pool"]) == (7, "cpu")
    assert (tasks["sum-it"]["retries"], tasks["sum-it"]["pool"]) == (4, "gpu")
    assert tasks["sum-eu"]["python_callable"] == tasks["sum-it"]["python_callable"] == "total"
    assert total.task_id == "sum-it" and total.settings["retries"] == 4  # unchanged
    with pytest.raises(DagDefinitionError, match="retries"):
        total.override(retries=-1)


def test_repeated_calls_get_numbered_ids() -> None:
    with DAG("d") as dag:
        ids = [extract().task_id for _ in range(3)]
    assert ids == ["extract", "extract__1", "extract__2"]
    assert list(dag.tasks) == ids


def test_function_is_exposed_for_the_worker() -> None:
    with DAG("d") as dag:
        total(extract())
    t = dag.get_task("sum-it")
    assert isinstance(t, PythonTask)
    assert t.function([1, 2], 3, offset=1) == 10
    assert total.function is t.function


def test_refs_support_dependency_operators() -> None:
    with DAG("d") as dag:
        a = Bash("a", "true")
        z = Bash("z", "true")
        ref = a >> extract() >> z
        assert ref is z
        [a] >> total([1]) << extract()
    up = {tid: t["upstream"] for tid, t in dag.serialize("f.py")["tasks"].items()}
    assert up == {
        "a": [],
        "extract": ["a"],
        "z": ["extract"],
        "sum-it": ["a", "extract__1"],
        "extract__1": [],
    }


def test_decorator_without_parentheses_uses_function_name() -> None:
    @task
    def my_step() -> None:
        return None

    with DAG("d") as dag:
        my_step()
    assert list(dag.tasks) == ["my_step"]


def test_call_outside_dag_is_an_error() -> None:
    with pytest.raises(DagDefinitionError, match=r"called outside a `with DAG\(\.\.\.\):` block"):
        extract()


def test_call_outside_dag_names_the_line() -> None:
    with pytest.raises(DagDefinitionError) as info:
        extract()
    assert info.value.filename is not None and info.value.filename.endswith("test_taskflow.py")
    assert info.value.lineno is not None


def test_non_json_argument_is_rejected() -> None:
    with DAG("d"), pytest.raises(DagDefinitionError, match="argument 0 must be JSON-serializable"):
        total({1, 2})


def test_results_inside_lists_and_dicts_are_refs_and_upstreams() -> None:
    """Airflow resolves XComArgs nested in a list or dict argument (`summarize([a(), b()])`);
    a list or dict without one stays a literal value."""
    with DAG("d") as dag:
        a, b = extract(), extract()
        total([a, 1, (b, 2)], offset={"x": {"y": [a]}, "z": 3})
        total([1, 2], offset={"plain": [3]})
    tasks = dag.serialize("f.py")["tasks"]
    t = tasks["sum-it"]
    assert t["upstream"] == ["extract", "extract__1"]
    assert t["op_args"] == [
        {
            "items": [
                {"ref": "extract"},
                {"value": 1},
                {"items": [{"ref": "extract__1"}, {"value": 2}]},
            ]
        }
    ]
    assert t["op_kwargs"] == {
        "offset": {
            "fields": {"x": {"fields": {"y": {"items": [{"ref": "extract"}]}}}, "z": {"value": 3}}
        }
    }
    plain = tasks["sum-it__1"]
    assert plain["upstream"] == []
    assert plain["op_args"] == [{"value": [1, 2]}]
    assert plain["op_kwargs"] == {"offset": {"value": {"plain": [3]}}}


def test_a_result_inside_a_dict_needs_string_keys() -> None:
    with DAG("d"), pytest.raises(DagDefinitionError, match=r"keys must be strings.*got 1"):
        total({1: extract()})


def test_a_plain_task_inside_a_list_is_rejected_with_its_place() -> None:
    with DAG("d"), pytest.raises(DagDefinitionError, match=r"argument 0\[1\] is the task 'b'"):
        total([extract(), Bash("b", "true")])


def test_plain_task_as_argument_is_rejected() -> None:
    with DAG("d"), pytest.raises(DagDefinitionError, match="only results of @task functions"):
        total(Bash("b", "true"))


def test_wrong_arguments_are_reported_at_definition() -> None:
    with DAG("d"), pytest.raises(DagDefinitionError, match="bad arguments"):
        total(1, 2, 3)


def test_unknown_setting_in_decorator() -> None:
    with pytest.raises(DagDefinitionError, match="unknown keyword argument 'retry'"):

        @task(retry=3)
        def f() -> None:
            return None


def test_invalid_function_name_needs_task_id() -> None:
    with pytest.raises(DagDefinitionError, match="invalid task id '_private'"):

        @task
        def _private() -> None:
            return None


def test_forgetting_to_call_is_explained() -> None:
    with DAG("d"):
        a = Bash("a", "true")
        with pytest.raises(DagDefinitionError, match="must be called"):
            a >> extract  # type: ignore[operator]
