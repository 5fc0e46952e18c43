"""`user_defined_macros` and `user_defined_filters`: JSON values every template of the DAG
sees; function macros and filters rendered by a process that imports the DAG file (the
render child, here called in-process)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from miniflow import DAG, Bash
from miniflow.authoring.loader import import_dag_file
from miniflow.authoring.templates import build_context, render_task_fields
from miniflow.authoring.xcom import XComData
from miniflow.errors import DagDefinitionError
from miniflow.parsing import render_child
from miniflow.scheduler.child_render import ChildRenderer, RenderItem, _item_json, encode_xcom
from miniflow.store.records import RunInfo


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
        ({"user_defined_filters": {"up": "upper"}}, r"user_defined_filters\['up'\] must be a"),
        ({"user_defined_filters": {"a b": str.upper}}, "'a b' is not a template name"),
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


FUNCTIONS_DAG = """
from miniflow import DAG, Bash, Pod

def shout(text):
    return text.upper() + "!"

with DAG("fn", user_defined_macros={"shout": shout, "bucket": "s3://b"},
         user_defined_filters={"twice": lambda v: f"{v}{v}"}):
    Bash("b", "echo {{ shout(bucket) }} {{ ds | twice }} {{ ti.xcom_pull('up') }}")
    Pod("p", image="x", command=["{{ 'a' | twice }}"], env={"K": "{{ shout('k') }}"})
    Bash("bad", "echo {{ nope(1) }}")
"""


def test_function_macros_and_filters_serialize_by_name_only() -> None:
    with DAG("fn", user_defined_macros={"f": len, "v": 1},
             user_defined_filters={"up": str.upper}) as dag:  # fmt: skip
        Bash("t", "echo {{ f('ab') }}")
    data = dag.serialize("fn.py")
    assert data["user_defined_macros"] == {"v": 1}
    assert data["template_functions"] == ["f", "|up"]
    assert "template_functions" not in DAG("plain").serialize("p.py")


def _run() -> RunInfo:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    return RunInfo(1, "fn", "r1", when, when, when, "running", "manual", {}, None, when, None, None)


def _items(tmp_path: Path, task_ids: list[str]) -> tuple[list[RenderItem], DAG]:
    path = tmp_path / "fn.py"
    path.write_text(FUNCTIONS_DAG)
    (dag,) = import_dag_file(path)
    data = dag.serialize("fn.py")
    xcom = XComData(results={("up", -1): 42})
    return [RenderItem(data, _run(), t, 1, -1, None, xcom) for t in task_ids], dag


def test_the_render_child_renders_with_the_dags_functions(tmp_path: Path) -> None:
    items, _ = _items(tmp_path, ["b", "p", "bad"])
    request = {
        "dags_folder": str(tmp_path),
        "path": f"{tmp_path}/fn.py",
        "dag_id": "fn",
        "items": [_item_json(i) for i in items],
    }
    code, out = render_child.run(request)
    assert code == 0 and out is not None
    bash, pod, bad = out["results"]
    assert bash["fields"]["bash_command"] == "echo S3://B! 2026-01-022026-01-02 42"
    assert pod["fields"]["cmds"] == ["aa"] and pod["fields"]["env"] == {"K": "K!"}
    assert "task 'bad': command uses undefined variable 'nope'" in bad["error"]
    assert render_child.run({**request, "dag_id": "gone"}) == (2, None)
    assert encode_xcom(None) is None


def _write(path: Path, text: str) -> None:
    path.write_text(text)


async def test_the_scheduler_renders_through_a_child_with_a_timeout(tmp_path: Path) -> None:
    items, _ = _items(tmp_path, ["b", "bad"])
    renderer = ChildRenderer(tmp_path, timeout=60)
    good, bad = await renderer.render(items)
    assert not isinstance(good, str) and good.bash_command == "echo S3://B! 2026-01-022026-01-02 42"
    assert isinstance(bad, str) and "undefined variable 'nope'" in bad
    _write(tmp_path / "fn.py", "import time\ntime.sleep(30)\n")
    (hung,) = await ChildRenderer(tmp_path, timeout=0.5).render(items[:1])
    assert isinstance(hung, str) and "did not finish within 0.5s" in hung
    _write(tmp_path / "fn.py", "raise RuntimeError('broken file')\n")
    (broken,) = await renderer.render(items[:1])
    assert isinstance(broken, str) and "RuntimeError: broken file" in broken
