"""`{{ ti.xcom_push(key, value) }}` in templates: a Bash task's pushes are collected with
its rendered fields (for the scheduler to store before launching the try, in-process or
through the render child); elsewhere a push is a template error."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from miniflow import DAG, Bash, Pod
from miniflow.authoring.serialized import SerializedDag
from miniflow.authoring.xcom import XComData
from miniflow.errors import TemplateError
from miniflow.parsing import render_child
from miniflow.scheduler.child_render import RenderItem, _item_json
from miniflow.scheduler.specs import build_spec, render_fields
from miniflow.store.records import RunInfo

WHEN = datetime(2024, 5, 1, tzinfo=UTC)
RUN = RunInfo(1, "push", "r1", WHEN, WHEN, WHEN, "running", "manual", {}, None, WHEN, None, None)


def _dag() -> SerializedDag:
    with DAG("push") as dag:
        Bash("b", "echo {{ ti.xcom_push('day', ds) }} {{ ti.xcom_pull(task_ids='up') }}",
             env={"N": "{{ ti.xcom_push(key='n', value=3) }}"})  # fmt: skip
        Bash("reserved", "echo {{ ti.xcom_push('return_value', 1) }}")
        Pod("p", image="i", command=["{{ ti.xcom_push('k', 1) }}"])
    return dag.serialize("push.py")


def test_a_bash_tasks_pushes_come_with_its_fields() -> None:
    dag = _dag()
    rendered = render_fields(dag, RUN, "b", 1, xcom=XComData(results={("up", -1): 7}))
    assert rendered.bash_command == "echo None 7"  # a push renders as None, as in Airflow
    assert rendered.env == {"N": "None"}
    assert rendered.pushes == {"day": "2024-05-01", "n": 3}
    spec = build_spec(dag, RUN, "b", 1, rendered=rendered)
    assert spec.bash_command == "echo None 7"


@pytest.mark.parametrize(
    ("task_id", "message"),
    [
        ("p", "only a Bash task's fields may push"),
        ("reserved", "xcom_push key must be a non-empty string other than 'return_value'"),
    ],
)
def test_other_pushes_are_template_errors(task_id: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_fields(_dag(), RUN, task_id, 1)


def test_the_render_child_returns_a_bash_tasks_pushes(tmp_path: Path) -> None:
    (tmp_path / "fn.py").write_text(
        "from miniflow import DAG, Bash\n"
        "with DAG('fn', user_defined_filters={'up': str.upper}):\n"
        "    Bash('b', \"echo {{ ti.xcom_push('who', 'me' | up) }}\")\n"
    )
    from miniflow.authoring.loader import import_dag_file

    (dag,) = import_dag_file(tmp_path / "fn.py")
    item = RenderItem(dag.serialize("fn.py"), RUN, "b", 1, -1, None, None)
    request = {"dags_folder": str(tmp_path), "path": f"{tmp_path}/fn.py", "dag_id": "fn",
               "items": [_item_json(item)]}  # fmt: skip
    code, out = render_child.run(request)
    assert code == 0 and out is not None
    (answer,) = out["results"]
    assert answer["fields"]["pushes"] == {"who": "ME"}
