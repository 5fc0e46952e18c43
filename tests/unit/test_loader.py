"""Loading DAG files: sibling imports, several DAGs, duplicates, errors, light imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from miniflow import DAG
from miniflow.authoring.loader import capture_dags, import_dag_file, module_name_for
from miniflow.errors import DagDefinitionError


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def test_several_dags_and_sibling_imports(tmp_path: Path) -> None:
    write(tmp_path / "helpers_for_loader_test.py", "COMMAND = 'echo from helper'\n")
    dag_file = write(
        tmp_path / "pipelines.py",
        """\
        from miniflow import DAG, Bash
        from helpers_for_loader_test import COMMAND

        with DAG("first"):
            Bash("a", COMMAND)
        second = DAG("second", schedule="@daily")
        with second:
            Bash("b", "true")
        ALIAS = second
        """,
    )
    dags = import_dag_file(dag_file)
    assert [d.dag_id for d in dags] == ["first", "second"]
    assert dags[0].get_task("a").serialize()["command"] == "echo from helper"
    assert dags[0].filename is not None and dags[0].filename.endswith("pipelines.py")
    assert dags[0].lineno == 4


def test_module_name_is_unique_per_path_and_registered(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    source = """\
        from miniflow import DAG, task
        with DAG("d") as dag:
            @task
            def f() -> int:
                return 1
            f()
        """
    one = write(tmp_path / "x" / "etl.py", source)
    two = write(tmp_path / "y" / "etl.py", source)
    assert module_name_for(one) != module_name_for(two)
    assert module_name_for(one) == module_name_for(one)
    assert module_name_for(one).startswith("miniflow_dag_")
    (dag,) = import_dag_file(one)
    function = dag.get_task("f").function  # type: ignore[attr-defined]
    assert function.__module__ == module_name_for(one)
    assert sys.modules[module_name_for(one)].dag is dag
    (custom,) = import_dag_file(two, module_name="custom_name_for_test")
    assert sys.modules["custom_name_for_test"].dag is custom


def test_reimport_gives_fresh_objects(tmp_path: Path) -> None:
    path = write(tmp_path / "again.py", "from miniflow import DAG\nDAG('d')\n")
    first = import_dag_file(path)
    second = import_dag_file(path)
    assert first[0] is not second[0]


def test_duplicate_dag_id_in_one_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "dup.py",
        """\
        from miniflow import DAG
        DAG("same")
        DAG("other")
        DAG("same")
        """,
    )
    with pytest.raises(DagDefinitionError) as info:
        import_dag_file(path)
    assert "duplicate dag_id 'same' (first defined at line 2)" in str(info.value)
    assert info.value.lineno == 4
    assert "dup.py:4: " in str(info.value)


def test_user_exceptions_propagate_unchanged(tmp_path: Path) -> None:
    path = write(
        tmp_path / "broken.py", "from miniflow import DAG\nDAG('d')\nraise KeyError('x')\n"
    )
    with pytest.raises(KeyError, match="x"):
        import_dag_file(path)
    assert module_name_for(path) not in sys.modules
    syntax = write(tmp_path / "syntax.py", "def f(:\n")
    with pytest.raises(SyntaxError):
        import_dag_file(syntax)


def test_capture_dags_collects_constructed_dags() -> None:
    before = DAG("outside")
    with capture_dags() as outer:
        a = DAG("a")
        with capture_dags() as inner:
            b = DAG("b")
    assert outer == [a, b]
    assert inner == [b]
    assert before not in outer


def test_not_a_python_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DagDefinitionError, match="not a Python file"):
        import_dag_file(path)


def test_import_miniflow_is_light() -> None:
    code = (
        "import sys, miniflow\n"
        "heavy = [m for m in ('jinja2', 'sqlalchemy', 'kubernetes_asyncio', 'croniter')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert miniflow.__version__ == '0.1.0'\n"
        "assert {'DAG', 'Bash', 'Pod', 'task'} <= set(miniflow.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
