"""`Pod(..., push_result=True)`: the definition, the manifest and reading the result."""

from __future__ import annotations

from datetime import datetime

import pytest

from miniflow import DAG, Pod, task
from miniflow.errors import DagDefinitionError
from miniflow.scheduler.pod_results import ResultError, read_result
from tests.unit.test_pods import build, main, pod_spec


def test_push_result_serializes_and_output_passes_the_result_to_a_task() -> None:
    with DAG("d", start_date=datetime(2026, 1, 1)) as dag:
        measure = Pod("measure", image="busybox:1.36", command=["true"], push_result=True)
        plain = Pod("plain", image="busybox:1.36")

        @task
        def report(measured: dict) -> None: ...

        report(measure.output)
    tasks = dag.serialize("d.py")["tasks"]
    assert tasks["measure"]["push_result"] is True
    assert "push_result" not in tasks["plain"]
    assert tasks["report"]["op_args"] == [{"ref": "measure"}]
    assert tasks["report"]["upstream"] == ["measure"]
    with pytest.raises(DagDefinitionError, match="create it with push_result=True"):
        plain.output  # noqa: B018


def test_a_pod_task_itself_is_not_an_argument_and_push_result_is_a_bool() -> None:
    with DAG("d", start_date=datetime(2026, 1, 1)):
        measure = Pod("measure", image="busybox:1.36", push_result=True)

        @task
        def report(measured: dict) -> None: ...

        with pytest.raises(DagDefinitionError, match=r"`Pod\(..., push_result=True\)`'s `.output`"):
            report(measure)
        with pytest.raises(DagDefinitionError, match="push_result must be True or False"):
            Pod("other", image="busybox:1.36", push_result="yes")  # type: ignore[arg-type]


def test_manifest_sets_the_termination_message_file_only_for_push_result() -> None:
    c = main(build(pod_spec(cmds=["sh", "-c", "echo 1 > /dev/termination-log"], push_result=True)))
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "File"  # never the log's tail
    plain = main(build(pod_spec(cmds=["true"])))
    assert "terminationMessagePath" not in plain and "terminationMessagePolicy" not in plain


def test_read_result_parses_json() -> None:
    assert read_result('{"rows": 42, "ok": true}\n', 65536) == {"rows": 42, "ok": True}
    assert read_result("[1, 2]", 65536) == [1, 2]
    assert read_result('"text"', 65536) == "text"


@pytest.mark.parametrize(
    ("message", "limit", "says"),
    [
        (None, 65536, "wrote no result to /dev/termination-log"),
        ("  \n", 65536, "wrote no result"),
        ("rows=42", 65536, "is not valid JSON"),
        ('{"x": NaN}', 65536, "is not valid JSON (NaN is not valid JSON)"),
        ('{"rows": 4', 65536, "is not valid JSON"),
        ("x" * 4096, 65536, "Kubernetes keeps at most 4,096 bytes"),
        ('"' + "x" * 100 + '"', 50, "over the limit of 50 bytes (MINIFLOW_MAX_RESULT_BYTES)"),
    ],
)
def test_read_result_refuses_what_is_not_a_result(
    message: str | None, limit: int, says: str
) -> None:
    with pytest.raises(ResultError, match=re_escape(says)):
        read_result(message, limit)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_result_file_names_another_termination_message_path() -> None:
    with DAG("d", start_date=datetime(2026, 1, 1)) as dag:
        Pod("airflowish", image="img", push_result=True, result_file="/airflow/xcom/return.json")
        with pytest.raises(DagDefinitionError, match="result_file must be an absolute path"):
            Pod("relative", image="img", push_result=True, result_file="return.json")
        with pytest.raises(DagDefinitionError, match="with push_result=True"):
            Pod("no_push", image="img", result_file="/out.json")
    assert (
        dag.serialize("d.py")["tasks"]["airflowish"]["result_file"] == "/airflow/xcom/return.json"
    )
    spec = pod_spec(cmds=["true"], push_result=True, result_file="/airflow/xcom/return.json")
    assert main(build(spec))["terminationMessagePath"] == "/airflow/xcom/return.json"
    with pytest.raises(
        ResultError, match=re_escape("wrote no result to /airflow/xcom/return.json")
    ):
        read_result("", 65536, "/airflow/xcom/return.json")
