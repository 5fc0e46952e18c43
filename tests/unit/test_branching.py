"""What a branch / short-circuit result skips (`miniflow_worker.branching`), as a table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from miniflow_worker.branching import BranchError, downstream_map, to_skip

from miniflow import DAG, Bash, Empty, task


def _dag(ignore: bool = True) -> dict[str, Any]:
    """pick → {a, b, grp.x, grp.y}; a >> a2; [a2, b] >> join; check → c >> d."""
    with DAG("br", start_date=datetime(2026, 1, 1)) as dag:

        @task.branch
        def pick() -> str:
            return "a"

        @task.short_circuit(ignore_downstream_trigger_rules=ignore)
        def check() -> bool:
            return False

        p = pick()
        a, b = Bash("a", "true"), Bash("b", "true")
        gx, gy = Empty("grp.x"), Empty("grp.y")
        p >> [a, b, gx, gy]
        a >> Bash("a2", "true") >> Empty("join", trigger_rule="none_failed_min_one_success")
        b >> dag.tasks["join"]
        check() >> Bash("c", "true") >> Bash("d", "true")
    return dag.serialize("br.py")["tasks"]  # type: ignore[return-value]


TASKS = _dag()
DOWN = downstream_map(TASKS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "skipped"),
    [
        ("a", ["b", "grp.x", "grp.y"]),
        (["a", "b"], ["grp.x", "grp.y"]),
        (("b",), ["a", "grp.x", "grp.y"]),
        ("grp", ["a", "b"]),  # a group id follows the group's tasks
        ("grp.y", ["a", "b", "grp.x"]),
        (None, ["a", "b", "grp.x", "grp.y"]),
        ([], ["a", "b", "grp.x", "grp.y"]),
    ],
)
def test_branch_skips_the_direct_downstream_tasks_not_followed(
    value: Any, skipped: list[str]
) -> None:
    assert to_skip(TASKS["pick"], "pick", value, DOWN) == skipped


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a2", "returned 'a2', which is not directly downstream of it; valid task ids: a, b, "
               "grp.x, grp.y"),
        (["a", "nope"], "returned 'nope'"),
        (3, "must return a task id, a list of task ids or None, got 3"),
        (["a", 1], "got ['a', 1]"),
    ],
)  # fmt: skip
def test_an_invalid_branch_result_is_an_error_naming_the_valid_ids(
    value: Any, message: str
) -> None:
    with pytest.raises(BranchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        to_skip(TASKS["pick"], "pick", value, DOWN)


@pytest.mark.parametrize("falsy", [False, None, 0, "", [], {}])
def test_a_falsy_short_circuit_skips_everything_downstream(falsy: Any) -> None:
    assert to_skip(TASKS["check"], "check", falsy, DOWN) == ["c", "d"]


def test_without_ignoring_trigger_rules_only_the_direct_downstream_is_skipped() -> None:
    tasks = _dag(ignore=False)
    assert to_skip(tasks["check"], "check", False, downstream_map(tasks)) == ["c"]  # type: ignore[arg-type]


@pytest.mark.parametrize("truthy", [True, 1, "yes", [0]])
def test_a_truthy_short_circuit_skips_nothing(truthy: Any) -> None:
    assert to_skip(TASKS["check"], "check", truthy, DOWN) == []


def test_a_plain_task_skips_nothing() -> None:
    assert to_skip(TASKS["a"], "a", None, DOWN) == []
