"""Airflow DAG files, unmodified, through miniflow's Airflow layer: the real `miniflow`
command (`airflow check`, `dags test`, `standalone`) with the local launcher.

`airflow_dags/own` are DAG files written for these tests (both import generations);
`airflow_dags/apache` are copies of Airflow's own example DAGs, which must end with the
task states Airflow gives them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.helpers import MINIFLOW, cli_env, run_cli

FIXTURES = Path(__file__).parent / "airflow_dags"
OWN = FIXTURES / "own"
APACHE = FIXTURES / "apache"
DATE = "2024-05-01"
SECRET_PASSWORD = "s3cr3t-pw"
AIRFLOW_ENV = {
    "AIRFLOW_VAR_GREETING": "hi",
    "AIRFLOW_CONN_WAREHOUSE": f"postgres://etl:{SECRET_PASSWORD}@db.internal:5432/wh",
}

AF2_STATES = {
    "start": "success",
    "templated": "success",
    "skipped_bash": "skipped",
    "add": "success",
    "branch": "success",
    "group.left": "success",
    "group.right": "skipped",
    "join": "success",
    "greet": "success",
    "gate": "success",
    "after_gate": "skipped",
    "skip_me": "skipped",
    "fan_a": "skipped",
    "fan_b": "skipped",
    "sink_a": "success",
    "sink_b": "success",
}
AF3_STATES = {
    "extract": "success",
    "split": "success",
    "report": "success",
    "pick": "success",
    "big": "success",
    "small": "skipped",
    "done": "success",
    "go_on": "success",
    "shout": "success",
    "finish.double": "success",
    "also": "success",
}
# What Airflow ends these example DAGs with (each run succeeds).
APACHE_STATES: dict[str, dict[str, str]] = {
    "example_branch_labels": dict.fromkeys(
        [
            "ingest",
            "analyze",
            "check_integrity",
            "describe_integrity",
            "email_error",
            "save",
            "report",
        ],
        "success",
    ),
    "example_short_circuit_operator": {
        "condition_is_True": "success",
        "true_1": "success",
        "true_2": "success",
        "condition_is_False": "success",
        "false_1": "skipped",
        "false_2": "skipped",
        "task_1": "success",
        "task_2": "success",
        "short_circuit": "success",
        "task_3": "success",
        "task_4": "skipped",
        "task_5": "success",
        "task_6": "skipped",
        "task_7": "success",
    },
    "example_task_group": dict.fromkeys(
        [
            "start",
            "section_1.task_1",
            "section_1.task_2",
            "section_1.task_3",
            "section_2.task_1",
            "section_2.inner_section_2.task_2",
            "section_2.inner_section_2.task_3",
            "section_2.inner_section_2.task_4",
            "end",
        ],
        "success",
    ),
    "example_skip_dag": {
        "skip_operator_1": "skipped",
        "always_true_1": "success",
        "all_success": "skipped",
        "final_1": "skipped",
        "skip_operator_2": "skipped",
        "always_true_2": "success",
        "one_success": "success",
        "final_2": "success",
    },
    "tutorial_taskflow_api": {"extract": "success", "transform": "success", "load": "success"},
    "tutorial_dag": {"extract": "success", "transform": "success", "load": "success"},
    "example_simplest_dag": {"my_task": "success"},
    # this_will_skip exits 99 (skipped), so run_this_last (all_success) is skipped too
    "example_bash_operator": {
        **dict.fromkeys(
            [
                "run_after_loop",
                "runme_0",
                "runme_1",
                "runme_2",
                "also_run_this",
                "describe_dag_folder",
                "show_dag_folder_stats",
            ],
            "success",
        ),
        "this_will_skip": "skipped",
        "run_this_last": "skipped",
    },
    "example_dynamic_task_mapping_with_no_taskflow_operators": {
        "add_one": "success",
        "sum_it": "success",
    },
    "example_nested_branch_dag": {
        "branch_1": "success",
        "true_1": "success",
        "join_1": "success",
        **dict.fromkeys(
            ["false_1", "branch_2", "true_2", "false_2", "false_3", "join_2"], "skipped"
        ),
    },
    "example_params_trigger_ui": dict.fromkeys(
        [
            "select_languages",
            "get_names",
            "generate_english_greeting",
            "generate_german_greeting",
            "generate_french_greeting",
            "print_greetings",
        ],
        "success",
    ),
    "example_sensor_decorator": {"wait_for_upstream": "success", "dummy_operator": "success"},
    "example_setup_teardown": dict.fromkeys(
        [
            "root_setup",
            "normal",
            "root_teardown",
            "section_1.taskgroup_setup",
            "section_1.normal",
            "section_1.taskgroup_teardown",
        ],
        "success",
    ),
    "example_setup_teardown_taskflow": dict.fromkeys(
        [
            "my_first_task",
            "my_second_task",
            "my_third_task",
            "outer_setup",
            "outer_work",
            "outer_teardown",
            "section_1.inner_setup",
            "section_1.inner_work",
            "section_1.inner_teardown",
        ],
        "success",
    ),
    "example_short_circuit_decorator": {
        **dict.fromkeys(
            [
                "condition_is_true",
                "true_1",
                "true_2",
                "condition_is_false",
                "task_1",
                "task_2",
                "short_circuit",
                "task_3",
                "task_5",
                "task_7",
            ],
            "success",
        ),
        **dict.fromkeys(["false_1", "false_2", "task_4", "task_6"], "skipped"),
    },
    "example_task_group_decorator": {
        "task_start": "success",
        "task_end": "success",
        **{
            f"task_group_function{suffix}.task_{n}": "success"
            for suffix in ("", "__1", "__2", "__3", "__4")
            for n in (1, 2, 3)
        },
    },
    "example_xcom_args": {"generate_value": "success", "print_value": "success"},
    "example_xcom_args_with_operators": {
        "c": "success",
        "d": "success",
        "print_value": "success",
        "print_value__1": "success",
    },
    # a manual run is not skipped by LatestOnly
    "latest_only": {"latest_only": "success", "task1": "success"},
    "tutorial": {"print_date": "success", "sleep": "success", "templated": "success"},
}


@pytest.fixture
def af_cli(sqlite_cli: Cli) -> Cli:
    sqlite_cli.extra_env.update(AIRFLOW_ENV)
    return sqlite_cli


def copy_dags(cli: Cli, *paths: Path) -> None:
    cli.dags.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy(path, cli.dags / path.name)


def states(cli: Cli, dag_id: str) -> dict[str, str]:
    rows = json.loads(cli("tasks", "list", dag_id, "latest", "-o", "json").stdout)
    return {row["task_id"]: row["state"] for row in rows}


def result(cli: Cli, dag_id: str, task_id: str) -> object:
    return json.loads(cli("tasks", "result", dag_id, "latest", task_id).stdout)


# --- the migration report ----------------------------------------------------------------------


def test_airflow_check_reports_each_file_and_refused_construct(af_cli: Cli) -> None:
    text = af_cli("airflow", "check", str(OWN), expect=1).stdout
    assert "2 of 4 DAG files load unmodified" in text.splitlines()[-1]
    assert "af2_core.py: loads\n" in text and "DAG af2_core (16 tasks)" in text
    assert "af3_taskflow.py: loads\n" in text and "DAG af3_taskflow (11 tasks)" in text
    assert "unsupported_dataset.py:6: Dataset is not supported" in text
    assert "unsupported_sla.py:9: sla is not supported" in text

    report = json.loads(af_cli("airflow", "check", str(OWN), "-o", "json", expect=1).stdout)
    by_file = {Path(f["path"]).name: f for f in report["files"]}
    assert {name: f["status"] for name, f in by_file.items()} == {
        "af2_core.py": "loads",
        "af3_taskflow.py": "loads",
        "unsupported_dataset.py": "does not load",
        "unsupported_sla.py": "does not load",
    }
    error = by_file["unsupported_dataset.py"]["error"]
    assert (error["construct"], error["lineno"]) == ("Dataset", 6)
    assert "use a schedule" in error["suggestion"]
    assert report["summary"] == {
        "files": 4,
        "loading": 2,
        "with_warnings": 0,
        "text": "2 of 4 DAG files load unmodified",
    }

    apache = af_cli("airflow", "check", str(APACHE)).stdout
    assert "19 of 19 DAG files load unmodified" in apache
    # A difference worth knowing is a warning with its line, not a silent change.
    assert "example_skip_dag.py: loads with warnings" in apache
    assert "example_skip_dag.py:64: timedelta schedule" in apache


# --- dags test ---------------------------------------------------------------------------------


def test_airflow2_paths_run_unmodified_under_dags_test(af_cli: Cli) -> None:
    copy_dags(af_cli, OWN / "af2_core.py")
    af_cli("dags", "test", "af2_core", "--logical-date", DATE, "--conf", '{"who": "cli"}')
    assert states(af_cli, "af2_core") == AF2_STATES
    assert result(af_cli, "af2_core", "add") == {
        "sum": 3,
        "ds": DATE,
        "who": "cli",
        "var": "hi",
        "missing": "fallback",
        "host": "db.internal",
        "task": "add",
    }
    greet = result(af_cli, "af2_core", "greet")
    assert greet == {"greeting": f"hello left on {DATE}", "run_id": f"test__{DATE}T00:00:00+00:00"}
    log = af_cli("tasks", "logs", "af2_core", "latest", "templated").stdout
    assert (
        f"ds={DATE} nodash=20240501 next=2024-05-02 who=cli side=left var=hi "
        f"host=db.internal dag=af2_core task=templated run=test__{DATE}" in log
    )
    assert SECRET_PASSWORD not in log


def test_airflow3_paths_run_unmodified_under_dags_test(af_cli: Cli) -> None:
    copy_dags(af_cli, OWN / "af3_taskflow.py")
    af_cli("dags", "test", "af3_taskflow", "--logical-date", DATE)
    assert states(af_cli, "af3_taskflow") == AF3_STATES
    assert result(af_cli, "af3_taskflow", "report") == {
        "total": 3,
        "count": 2,
        "n": 3,
        "ds": DATE,
        "task": "report",
    }
    assert result(af_cli, "af3_taskflow", "finish.double") == 6
    assert result(af_cli, "af3_taskflow", "also") == 3
    shout = af_cli("tasks", "logs", "af3_taskflow", "latest", "shout").stdout
    assert f"total is 3 on {DATE}" in shout


# The file of each example DAG whose id is not its file's name.
APACHE_FILES = {
    "example_xcom_args": "example_xcomargs.py",
    "example_xcom_args_with_operators": "example_xcomargs.py",
    "latest_only": "example_latest_only.py",
}


@pytest.mark.parametrize("dag_id", sorted(APACHE_STATES))
def test_airflow_example_dags_end_with_airflows_states(af_cli: Cli, dag_id: str) -> None:
    copy_dags(af_cli, APACHE / APACHE_FILES.get(dag_id, f"{dag_id}.py"))
    af_cli("dags", "test", dag_id, "--logical-date", DATE)
    assert states(af_cli, dag_id) == APACHE_STATES[dag_id]
    if dag_id == "tutorial_taskflow_api":
        load = af_cli("tasks", "logs", dag_id, "latest", "load").stdout
        assert "Total order value is: 1236.70" in load
    elif dag_id == "tutorial":
        templated = af_cli("tasks", "logs", dag_id, "latest", "templated").stdout
        assert templated.count(DATE) == 5 and templated.count("2024-05-08") == 5
    elif dag_id == "example_dynamic_task_mapping_with_no_taskflow_operators":
        # an operator mapped with .partial().expand(), reduced by an operator reading .output
        assert result(af_cli, dag_id, "sum_it") == 9
    elif dag_id == "example_bash_operator":
        # BashOperator pushes its last line (do_xcom_push), JSON as output_processor makes it
        folder = result(af_cli, dag_id, "describe_dag_folder")
        assert isinstance(folder, dict) and set(folder) == {"dag_folder", "file_count"}
    elif dag_id == "example_params_trigger_ui":
        # the params' defaults; tasks mapped over a list from them
        assert result(af_cli, dag_id, "get_names") == ["Linda", "Martha", "Thomas"]


# --- the scheduler -----------------------------------------------------------------------------


def test_scheduler_runs_airflow_dags_with_the_local_launcher(tmp_path: Path) -> None:
    """`standalone` (scheduler + local launcher) parses and runs Airflow files as it runs
    miniflow's: discovery picks them up by their mention of airflow."""
    dags = tmp_path / "dags"
    dags.mkdir()
    for path in (OWN / "af2_core.py", OWN / "af3_taskflow.py", APACHE / "example_skip_dag.py"):
        shutil.copy(path, dags / path.name)
    state = tmp_path / "state"
    env = cli_env(f"sqlite+aiosqlite:///{state / 'miniflow.db'}", dags, state, **AIRFLOW_ENV)
    done = run_cli(["standalone", "--trigger-all", "--exit-when-done"], env, timeout=110)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    cli = Cli(env["MINIFLOW_DATABASE_URL"], dags, state, dict(AIRFLOW_ENV))
    assert states(cli, "af2_core") == AF2_STATES
    add = result(cli, "af2_core", "add")
    assert isinstance(add, dict) and add["who"] is None  # a scheduled run's conf is empty
    assert states(cli, "af3_taskflow") == AF3_STATES
    assert states(cli, "example_skip_dag") == APACHE_STATES["example_skip_dag"]


# --- variables and connections -----------------------------------------------------------------


@pytest.mark.timeout(300)  # a dozen CLI commands, each a process start: slow on a loaded machine
def test_variables_and_connections_from_the_database(cli: Cli) -> None:
    """Without AIRFLOW_VAR_/AIRFLOW_CONN_ variables, DAG code and templates read the values
    the CLI stored; a password is never printed."""
    password = "pw-from-stdin-42"
    cli("variables", "set", "greeting", "hello", "--description", "who to greet")
    cli("variables", "set", "api_token", "tok-123")
    assert cli("variables", "get", "greeting").stdout == "hello\n"
    listed = json.loads(cli("variables", "list", "-o", "json").stdout)
    assert listed == [
        {"key": "api_token", "value": "***", "description": None},
        {"key": "greeting", "value": "hello", "description": "who to greet"},
    ]
    added = subprocess.run(
        [MINIFLOW, "connections", "add", "warehouse", "--uri",
         "postgres://etl@db.from-db:5432/wh", "--password-stdin"],
        input=f"{password}\n", env=cli.env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    shown = json.loads(cli("connections", "get", "warehouse").stdout)
    assert shown["host"] == "db.from-db" and shown["password"] == "***"
    assert shown["uri"] == "postgres://etl:***@db.from-db:5432/wh"
    table = cli("connections", "list").stdout
    assert "db.from-db" in table and "***" in table

    copy_dags(cli, OWN / "af2_core.py")
    cli.dag(
        "top_level_variable.py",
        """
        from airflow import DAG
        from airflow.models import Variable

        with DAG(f"deploy_{Variable.get('greeting')}", schedule=None):
            pass
        """,
    )
    assert "deploy_hello" in cli("dags", "list").stdout  # read by the parse child
    ran = cli("dags", "test", "af2_core", "--logical-date", DATE)
    add = result(cli, "af2_core", "add")
    assert isinstance(add, dict) and (add["var"], add["host"]) == ("hello", "db.from-db")
    log = cli("tasks", "logs", "af2_core", "latest", "templated").stdout
    assert "var=hello host=db.from-db" in log

    outputs = [added.stdout, added.stderr, table, json.dumps(shown), ran.stdout, ran.stderr, log]
    assert not any(password in text for text in outputs)

    cli("variables", "delete", "greeting")
    assert "no variable 'greeting'" in cli("variables", "get", "greeting", expect=1).stderr
    cli("connections", "delete", "warehouse")
    cli("connections", "get", "warehouse", expect=1)


# --- names forwarded to miniflow features built beside the layer --------------------------------


def _has_forwarded_features() -> bool:
    import miniflow
    from miniflow.authoring.taskflow import TaskFunction

    decorators = all(hasattr(miniflow.task, n) for n in ("sensor", "setup", "teardown"))
    return decorators and hasattr(miniflow, "LatestOnly") and hasattr(TaskFunction, "expand")


@pytest.mark.skipif(not _has_forwarded_features(), reason="this miniflow lacks those features")
def test_forwarded_airflow_names_run_on_miniflows_features(af_cli: Cli) -> None:
    copy_dags(af_cli, FIXTURES / "forwarded" / "af_forwarded.py")
    af_cli("dags", "test", "af_forwarded", "--logical-date", DATE)
    found = states(af_cli, "af_forwarded")
    for task_id in ("latest", "create", "numbers", "total", "pull", "ready", "drop"):
        assert found[task_id] == "success", (task_id, found)
    assert result(af_cli, "af_forwarded", "total") == 12  # .expand over numbers(), doubled
    assert result(af_cli, "af_forwarded", "pull") == [1, 2, 3]  # ti.xcom_pull


def test_operator_mapping_sensors_results_and_fail_exception(af_cli: Cli) -> None:
    copy_dags(af_cli, FIXTURES / "forwarded" / "af_operators.py")
    af_cli("dags", "test", "af_operators", "--logical-date", DATE, "--conf", '{"factor": 5}',
           expect=1)  # fmt: skip
    found = states(af_cli, "af_operators")
    for task_id in ("lines", "sums", "plus", "collect", "day", "bash_ok", "later"):
        assert found[task_id] == "success", (task_id, found)
    assert found["never"] == "skipped"  # soft_fail after its timeout
    assert found["refuses"] == "failed"
    assert result(af_cli, "af_operators", "collect") == {
        "lines": ["a", "b"],  # BashOperator do_xcom_push: the last line of each instance
        "sums": [11, 12],
        "plus": [2, 3, 4],
        "factor": 5,  # a @dag function parameter, from the run's conf
    }
    assert result(af_cli, "af_operators", "day") == DATE  # PokeReturnValue's value
    rows = json.loads(af_cli("tasks", "list", "af_operators", "latest", "-o", "json").stdout)
    refuses = next(r for r in rows if r["task_id"] == "refuses")
    assert refuses["try_number"] == 1  # AirflowFailException: no retry despite retries=3
