"""The mapping and XCom definition API, and the pure parts of expansion and pulls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from miniflow import DAG, Bash, Pod, task
from miniflow.authoring.mapping import MapError, apply_map_args, expand_values, max_map_length
from miniflow.authoring.serialized import SerializedTask
from miniflow.authoring.xcom import XComData, XComError, check_value, pushed_line, uses_xcom
from miniflow.scheduler import readiness
from miniflow.store import mapping as store_mapping
from tests.unit.test_dag import assert_located, definition_error


def _tasks(dag: DAG) -> dict[str, SerializedTask]:
    return dag.serialize("x.py")["tasks"]


def test_expand_partial_and_expand_kwargs_serialize() -> None:
    with DAG("d", schedule=None) as dag:

        @task
        def nums() -> list[int]:
            return [1, 2]

        @task(max_active_mapped=3)
        def add(x: int, y: int = 0) -> int:
            return x + y

        @task
        def total(xs: list[int]) -> int:
            return sum(xs)

        add.expand(x=[1, 2])
        total(add.partial(y=10).expand(x=nums()))
        add.expand_kwargs([{"x": 1}, {"x": 2, "y": 3}])
        Bash.partial("echo", env={"A": "1"}).expand(command=["echo 1", "echo 2"])
        Pod.partial("pod", image="busybox").expand(args=[["a"], ["b"]])
    tasks = _tasks(dag)
    assert tasks["add"]["expand"] == {"mode": "product", "args": {"x": {"value": [1, 2]}}}
    assert tasks["add"]["max_active_mapped"] == 3
    assert tasks["add__1"]["expand"] == {"mode": "product", "args": {"x": {"ref": "nums"}}}
    assert tasks["add__1"]["op_kwargs"] == {"y": {"value": 10}}
    assert tasks["add__1"]["upstream"] == ["nums"]
    assert tasks["total"]["upstream"] == ["add__1"]
    assert tasks["add__2"]["expand"] == {
        "mode": "kwargs",
        "source": {"value": [{"x": 1}, {"x": 2, "y": 3}]},
    }
    assert tasks["echo"]["expand"]["args"]["command"] == {"value": ["echo 1", "echo 2"]}
    assert tasks["echo"]["env"] == {"A": "1"}
    assert tasks["pod"]["image"] == "busybox"
    assert "expand" not in tasks["nums"] and "max_active_mapped" not in tasks["nums"]


@pytest.mark.parametrize(
    ("source", "line", "message"),
    [
        (
            """
            with DAG("d", schedule=None):
                @task
                def f(x): ...
                f.expand(y=[1])
            """,
            5,
            "bad arguments",
        ),
        (
            """
            with DAG("d", schedule=None):
                @task
                def f(x): ...
                f.expand(x="abc")
            """,
            5,
            "expand(x=...) needs a list or the result of a @task",
        ),
        (
            """
            with DAG("d", schedule=None):
                @task
                def f(x): ...
                f.partial(x=1).expand(x=[2])
            """,
            5,
            "x given to both partial() and expand()",
        ),
        (
            """
            with DAG("d", schedule=None):
                Bash.partial("b").expand(timeout=[1])
            """,
            3,
            "'timeout' cannot be mapped on a Bash task; mappable: command, env",
        ),
        (
            """
            with DAG("d", schedule=None):
                Bash.partial("b").expand(command=["echo", ""])
            """,
            3,
            "expand(command=...) item 1: command must be a non-empty string",
        ),
        (
            """
            with DAG("d", schedule=None):
                Pod.partial("p", image="i").expand(args=["not-a-list"])
            """,
            3,
            "args must be a list of strings",
        ),
        (
            """
            with DAG("d", schedule=None):
                @task
                def f(x): ...
                f.expand_kwargs([{"x": 1}, 5])
            """,
            5,
            "expand_kwargs item 1 must be a dict",
        ),
        (
            """
            with DAG("d", schedule=None):
                @task
                def f(x): ...
                f.expand(x=[1, [f.override(task_id="up")(2)]])
            """,
            5,
            "expand(x=...) holds the result of 'up': a task's result is mapped over as a whole",
        ),
        (
            """
            with DAG("d", schedule=None):
                @task
                def f(x): ...
                f.expand_kwargs([{"x": 1}, {"x": {"deep": f.override(task_id="up")(2)}}])
            """,
            5,
            "expand_kwargs item 1: x holds a task result",
        ),
        (
            """
            with DAG("d", schedule=None):
                @task
                def f(x): ...
                f.expand()
            """,
            5,
            "expand() needs at least one argument",
        ),
        (
            """
            with DAG("d", schedule=None):
                Bash.partial("b").expand_kwargs([{"command": "echo"}, {"env": {"A": "a"}}])
            """,
            3,
            "expand_kwargs item 1 gives no command (nor does partial())",
        ),
        (
            """
            with DAG("d", schedule=None):
                @task.branch
                def f(x): ...
                f.expand(x=[1])
            """,
            5,
            "a @task.branch task cannot be mapped",
        ),
        (
            """
            with DAG("d", schedule=None):
                @task(max_active_mapped=0)
                def f(x): ...
            """,
            3,
            "max_active_mapped must be an integer >= 1",
        ),
    ],
)
def test_definition_errors_name_file_and_line(
    tmp_path: Path, source: str, line: int, message: str
) -> None:
    err = definition_error(tmp_path, source)
    assert message in str(err)
    assert_located(err, line)


def test_literal_lists_longer_than_the_limit_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIFLOW_MAX_MAP_LENGTH", "3")
    err = definition_error(
        tmp_path,
        """
        with DAG("d", schedule=None):
            @task
            def f(x, y): ...
            f.expand(x=[1, 2], y=[1, 2])
        """,
    )
    assert "expand(x, y) gives 4 mapped instances, more than the maximum map length 3" in str(err)
    assert_located(err, 5)
    assert max_map_length({}) == 1024
    with pytest.raises(MapError, match="MINIFLOW_MAX_MAP_LENGTH must be at least 1"):
        max_map_length({"MINIFLOW_MAX_MAP_LENGTH": "0"})


def _mapped(kind: str, expansion: dict[str, Any]) -> SerializedTask:
    return {"task_id": "t", "kind": kind, "expand": expansion, "env": {"A": "a"}}  # type: ignore[typeddict-item]


def test_expand_values_is_a_product_in_order() -> None:
    task = _mapped(
        "python",
        {"mode": "product", "args": {"x": {"value": [1, 2]}, "y": {"ref": "up"}}},
    )
    found = expand_values(task, lambda ref: ref.get("value", ["a", "b"]), 10)
    assert found == [{"x": 1, "y": "a"}, {"x": 1, "y": "b"}, {"x": 2, "y": "a"}, {"x": 2, "y": "b"}]
    with pytest.raises(MapError, match="expand\\(x, y\\) gives 4 mapped instances"):
        expand_values(task, lambda ref: ref.get("value", ["a", "b"]), 3)
    with pytest.raises(MapError, match="needs a list; the result of 'up' is None"):
        expand_values(task, lambda ref: ref.get("value"), 10)


def test_expand_values_checks_bash_items_and_kwargs() -> None:
    bash = _mapped("bash", {"mode": "kwargs", "source": {"ref": "up"}})
    with pytest.raises(MapError, match="item 1 of the result of 'up': no command"):
        expand_values(bash, lambda ref: [{"command": "echo"}, {"env": {"B": "b"}}], 10)
    bash["command"] = "echo fixed"  # given to partial()
    ok = expand_values(bash, lambda ref: [{"command": "echo"}, {"env": {"B": "b"}}], 10)
    assert ok == [{"command": "echo"}, {"env": {"B": "b"}}]
    with pytest.raises(MapError, match="item 0 of the result of 'up': env must be a dict"):
        expand_values(bash, lambda ref: [{"env": "x"}], 10)
    with pytest.raises(MapError, match="item 1 of the result of 'up' is not a dict"):
        expand_values(bash, lambda ref: [{}, 3], 10)
    assert apply_map_args(bash, {"env": {"B": "b"}, "command": "echo"})["env"] == {
        "A": "a",
        "B": "b",
    }
    pod = _mapped("pod", {"mode": "product", "args": {}})
    assert apply_map_args(pod, {"command": ["sh"], "args": ["-c", "x"]})["cmds"] == ["sh"]


def test_a_mapped_task_that_may_run_is_mapped_and_combines_its_instances() -> None:
    assert readiness.settle("scheduled", instant=False, mapped=True) == "mapped"
    assert readiness.settle("skipped", instant=False, mapped=True) == "skipped"
    assert store_mapping.combined({"success": 3}) == "success"
    assert store_mapping.combined({"success": 1, "skipped": 2}) == "success"
    assert store_mapping.combined({"skipped": 2}) == "skipped"
    assert store_mapping.combined({"success": 2, "failed": 1}) == "failed"
    assert store_mapping.combined({"success": 2, "running": 1}) is None
    assert store_mapping.combined({"up_for_retry": 1}) is None


def test_xcom_pulls() -> None:
    data = XComData(
        results={("a", -1): [1], ("m", -1): None, ("m", 0): "x", ("m", 1): "y"},
        values={("a", -1, "k"): 5, ("m", 1, "k"): "b", ("m", 0, "k"): "a"},
    )
    assert data.pull("a") == [1]
    assert data.pull("a", key="k") == 5
    assert data.pull(["a", "m"]) == [[1], ["x", "y"]]
    assert data.pull("m", key="k") == ["a", "b"]
    assert data.pull("m", map_indexes=1) == "y"
    assert data.pull("m", map_indexes=[1, 5], default=0) == ["y", 0]
    assert data.pull("gone", default="d") == "d"
    with pytest.raises(XComError, match="needs task_ids"):
        data.pull(None)


def test_a_bash_result_is_its_last_line_as_json_or_text() -> None:
    assert pushed_line('working\n{"n": 2}\n\n') == {"n": 2}
    assert pushed_line("a\nlast words  \n") == "last words"
    assert pushed_line("") is None
    assert uses_xcom({"command": "echo {{ ti.xcom_pull(task_ids='a') }}", "env": {}})
    assert not uses_xcom({"command": "echo", "env": {"A": "b"}})


def test_pushed_values_are_json_within_the_size_limit() -> None:
    assert check_value({"a": (1, 2)}, 100, "xcom 'k'") == {"a": [1, 2]}
    with pytest.raises(XComError, match="xcom 'k' is 12 bytes as JSON, more than the limit 10"):
        check_value("x" * 10, 10, "xcom 'k'")
    with pytest.raises(XComError, match="must be JSON-serializable"):
        check_value(object(), 100, "xcom 'k'")
