"""`user_defined_macros`: JSON values every template of the DAG sees; functions and
filters are refused with the reason."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from miniflow import DAG, Bash
from miniflow.authoring.templates import build_context, render_task_fields
from miniflow.errors import DagDefinitionError


def test_macros_are_serialized_and_rendered() -> None:
    with DAG("mac", user_defined_macros={"bucket": "s3://b", "limits": {"rows": 5}}) as dag:
        Bash("t", "cp {{ bucket }}/{{ ds }} . && head -n {{ limits.rows }}")
    data = dag.serialize("mac.py")
    assert data["user_defined_macros"] == {"bucket": "s3://b", "limits": {"rows": 5}}
    context = build_context(
        dag_id="mac",
        run_id="r",
        task_id="t",
        try_number=1,
        logical_date=datetime(2026, 1, 2, tzinfo=UTC),
        data_interval_start=datetime(2026, 1, 2, tzinfo=UTC),
        data_interval_end=datetime(2026, 1, 3, tzinfo=UTC),
        params={},
        user_macros=data["user_defined_macros"],
    )
    rendered = render_task_fields(data["tasks"]["t"], context)
    assert rendered.bash_command == "cp s3://b/2026-01-02 . && head -n 5"


def test_a_dag_without_macros_serializes_none() -> None:
    with DAG("nomac") as dag:
        Bash("t", "true")
    assert "user_defined_macros" not in dag.serialize("n.py")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user_defined_macros": {"f": len}}, r"user_defined_macros\['f'\] is a function"),
        ({"user_defined_filters": {"up": str.upper}}, "user_defined_filters are not supported"),
        ({"user_defined_macros": {"ds": "x"}}, "'ds' is a name of the template context"),
        ({"user_defined_macros": {"a-b": 1}}, "'a-b' is not a template name"),
        ({"user_defined_macros": ["x"]}, "user_defined_macros must be a dict"),
        ({"user_defined_macros": {"when": datetime.now()}}, "must be JSON-serializable"),
    ],
)
def test_macro_mistakes_say_why(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DagDefinitionError, match=message) as info:
        DAG("bad", **kwargs)  # type: ignore[arg-type]
    assert info.value.filename == __file__
