"""Templates: context variables, strict undefined, syntax errors, env, caching."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from miniflow import DAG, Bash, Pod
from miniflow.authoring import templates
from miniflow.authoring.templates import RenderedFields, build_context, render, render_task_fields
from miniflow.errors import TemplateError


@pytest.fixture
def context() -> dict[str, Any]:
    return build_context(
        dag_id="etl",
        run_id="scheduled__2026-03-04",
        task_id="extract",
        try_number=2,
        logical_date=datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
        data_interval_start=datetime(2026, 3, 4, tzinfo=UTC),
        data_interval_end=datetime(2026, 3, 5, tzinfo=UTC),
        params={"limit": 100, "nested": {"k": "v"}},
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ ds }}", "2026-03-04"),
        ("{{ ds_nodash }}", "20260304"),
        ("{{ ts }}", "2026-03-04T05:06:07+00:00"),
        ("{{ logical_date.year }}", "2026"),
        ("{{ data_interval_start.isoformat() }}", "2026-03-04T00:00:00+00:00"),
        ("{{ data_interval_end.day }}", "5"),
        ("{{ run_id }}", "scheduled__2026-03-04"),
        ("{{ dag_id }}.{{ task_id }}", "etl.extract"),
        ("{{ try_number + 1 }}", "3"),
        ("{{ params.limit }} {{ params['nested'].k }}", "100 v"),
        ("{{ missing | default('d') }}", "d"),
        ("{% if missing is defined %}x{% else %}y{% endif %}", "y"),
        ("<&> no escaping", "<&> no escaping"),
        ("{{ '<&>' }}", "<&>"),
        ("line\n", "line\n"),
        ("{{ ds }}\n", "2026-03-04\n"),
    ],
)
def test_context_variables(context: dict[str, Any], template: str, expected: str) -> None:
    assert render(template, context, task_id="t", field="command") == expected


def test_undefined_variable_names_task_field_and_variable(context: dict[str, Any]) -> None:
    with pytest.raises(TemplateError) as info:
        render("echo {{ dss }}", context, task_id="extract", field="command")
    assert str(info.value) == "task 'extract': command uses undefined variable 'dss'"


def test_undefined_param_is_named_with_its_path(context: dict[str, Any]) -> None:
    with pytest.raises(TemplateError, match=r"uses undefined variable 'params\.limitt'"):
        render("{{ params.limitt }}", context, task_id="t", field="command")


def test_undefined_in_loop_or_filter_is_an_error(context: dict[str, Any]) -> None:
    with pytest.raises(TemplateError, match="undefined variable 'items'"):
        render("{% for i in items %}{{ i }}{% endfor %}", context, task_id="t", field="f")
    with pytest.raises(TemplateError, match="undefined variable 'nope'"):
        render("{{ nope | upper }}", context, task_id="t", field="f")


def test_syntax_error_names_task_and_field(context: dict[str, Any]) -> None:
    with pytest.raises(TemplateError) as info:
        render("echo {{ ds }", context, task_id="extract", field="env FOO")
    message = str(info.value)
    assert message.startswith("task 'extract': env FOO has a template syntax error at line 1")


def test_other_render_errors_are_template_errors(context: dict[str, Any]) -> None:
    with pytest.raises(TemplateError, match="task 't': command could not be rendered"):
        render("{{ 1 / 0 }}", context, task_id="t", field="command")


def test_render_task_fields(context: dict[str, Any]) -> None:
    with DAG("d", env={"RUN": "{{ run_id }}"}) as dag:
        Bash("b", "echo {{ ds }}", env={"LIMIT": "{{ params.limit }}"})
        Pod("p", "busybox", command=["sh", "-c"], args=["echo {{ ds_nodash }}"])
        Pod("q", "busybox")
    tasks = dag.serialize("f.py")["tasks"]
    assert render_task_fields(tasks["b"], context) == RenderedFields(
        bash_command="echo 2026-03-04",
        cmds=None,
        args=None,
        env={"RUN": "scheduled__2026-03-04", "LIMIT": "100"},
    )
    assert render_task_fields(tasks["p"], context) == RenderedFields(
        bash_command=None,
        cmds=["sh", "-c"],
        args=["echo 20260304"],
        env={"RUN": "scheduled__2026-03-04"},
    )
    assert render_task_fields(tasks["q"], context).cmds is None


def test_render_task_fields_names_failing_field(context: dict[str, Any]) -> None:
    with DAG("d") as dag:
        Pod("p", "busybox", args=["ok", "{{ oops }}"], env={"A": "{{ ds }}"})
        Bash("b", "true", env={"TOKEN": "{{ secret }}"})
    tasks = dag.serialize("f.py")["tasks"]
    with pytest.raises(TemplateError, match=r"task 'p': args\[1\] uses undefined variable 'oops'"):
        render_task_fields(tasks["p"], context)
    with pytest.raises(TemplateError, match="task 'b': env TOKEN uses undefined variable 'secret'"):
        render_task_fields(tasks["b"], context)


def test_compiled_templates_are_cached(context: dict[str, Any]) -> None:
    templates.compile_template.cache_clear()
    for _ in range(3):
        render("{{ ds }} cached", context, task_id="t", field="f")
    info = templates.compile_template.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_plain_strings_skip_jinja(context: dict[str, Any]) -> None:
    templates.compile_template.cache_clear()
    assert render("echo plain $HOME", context, task_id="t", field="f") == "echo plain $HOME"
    assert templates.compile_template.cache_info().misses == 0
