"""Setup / teardown, callbacks and clears through the real `miniflow` command: `dags test`,
`dags show`, `tasks clear`."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Cli, lines_with

SOURCE = """
from datetime import datetime
from pathlib import Path
from miniflow import DAG, Bash, TaskGroup, task

OUT = Path({out!r})

def dag_ended(context):
    (OUT / f"dag.{{context['state']}}").write_text(context["run_id"])

def hangs(context):
    import time
    time.sleep(60)

with DAG("st_cli", start_date=datetime(2026, 1, 1), on_failure_callback=[dag_ended, hangs]):
    @task.setup
    def create() -> str:
        return "tmp"

    @task.teardown
    def drop(name: str) -> None:
        (OUT / f"dropped.{{name}}").write_text("")

    @task(on_failure_callback=hangs)
    def work(name: str) -> None:
        raise RuntimeError("work fails")

    name = create()
    work(name) >> drop(name)
    with TaskGroup("report"):
        Bash("render", "true") >> Bash("send", "true")
"""


def test_dags_test_runs_the_teardown_and_the_callbacks(sqlite_cli: Cli, tmp_path: Path) -> None:
    cli = sqlite_cli
    out = tmp_path / "out"
    out.mkdir()
    cli.dag("st_cli.py", SOURCE.format(out=str(out)))
    cli.extra_env["MINIFLOW_CALLBACK_TIMEOUT"] = "1"  # the hanging callbacks are left after 1 s

    shown = cli("dags", "show", "st_cli").stdout
    assert lines_with(shown, "create (python, setup)")
    assert lines_with(shown, "drop (python, teardown)")
    group = lines_with(shown, "report (task group)")[0]
    render = lines_with(shown, "report.render (bash)")[0]
    assert render.index("report.render") > group.index("report")  # listed under its group

    tested = cli("dags", "test", "st_cli", expect=1, timeout=90)
    assert lines_with(tested.stdout, "work: failed")
    assert lines_with(tested.stdout, "drop: success")
    assert (out / "dropped.tmp").exists()  # the teardown ran although work failed
    run_id = (out / "dag.failed").read_text()  # `dags test` waited for the DAG callback
    assert lines_with(tested.stdout, f"run {run_id}: failed")
    assert "on_failure_callback did not finish within 1s" in tested.stdout + tested.stderr

    cleared = cli("tasks", "clear", "st_cli", run_id, "work").stdout
    assert f"cleared create, work, drop in st_cli/{run_id}" in cleared


BASH_CALLBACKS = """
from datetime import datetime
from pathlib import Path
from miniflow import DAG, Bash, get_current_context

OUT = Path({out!r})

def record(context):
    ti = get_current_context()["ti"]
    (OUT / f"{{ti.task_id}}.{{context['state']}}").write_text(str(context["exception"]))

with DAG("cb_cli", start_date=datetime(2026, 1, 1),
         default_args={{"on_success_callback": record, "on_failure_callback": record}}):
    Bash("ok", "echo fine") >> Bash("bad", "exit 7")
"""


def test_dags_test_runs_bash_task_callbacks(sqlite_cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    sqlite_cli.dag("cb_cli.py", BASH_CALLBACKS.format(out=str(out)))
    tested = sqlite_cli("dags", "test", "cb_cli", expect=1, timeout=90)
    assert lines_with(tested.stdout, "bad: failed")
    # `dags test` waited for both callbacks, run in children of its scheduler
    assert sorted(p.name for p in out.iterdir()) == ["bad.failed", "ok.success"]
    assert (out / "ok.success").read_text() == "None"
    assert "exit code 7" in (out / "bad.failed").read_text()


FUNCTION_MACROS = """
from datetime import datetime
from miniflow import DAG, Bash

def shout(text):
    return text.upper() + "!"

with DAG("fn_cli", start_date=datetime(2026, 1, 1), user_defined_macros={"shout": shout},
         user_defined_filters={"twice": lambda v: f"{v}{v}"}):
    Bash("hello", "echo {{ shout('hi') | twice }} > {out!r}")
"""


def test_dags_test_renders_function_macros_and_filters(sqlite_cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "hello.txt"
    sqlite_cli.dag("fn_cli.py", FUNCTION_MACROS.replace("{out!r}", repr(str(out))))
    tested = sqlite_cli("dags", "test", "fn_cli", timeout=90)
    assert lines_with(tested.stdout, "hello: success")
    assert out.read_text() == "HI!HI!\n"
