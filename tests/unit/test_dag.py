"""DAG authoring: validation errors (with file and line), defaults, `>>`, serialize."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from miniflow import DAG, Bash, Pod, task
from miniflow.authoring.loader import import_dag_file
from miniflow.authoring.serialized import FORMAT_VERSION, SerializedDag, SerializedTask, readable
from miniflow.errors import DagDefinitionError, SerializedFormatError


def load_source(tmp_path: Path, source: str, name: str = "dagfile.py") -> list[DAG]:
    path = tmp_path / name
    path.write_text(
        "from datetime import datetime, timedelta\nfrom miniflow import *\n"
        + textwrap.dedent(source)
    )
    return import_dag_file(path)


def definition_error(tmp_path: Path, source: str) -> DagDefinitionError:
    with pytest.raises(DagDefinitionError) as info:
        load_source(tmp_path, source)
    return info.value


def assert_located(err: DagDefinitionError, line: int) -> None:
    """`line` counts from 1 in the dedented source (2 header lines are prepended)."""
    assert err.filename is not None and err.filename.endswith("dagfile.py")
    assert err.lineno == line + 2
    assert f"dagfile.py:{line + 2}: " in str(err)


# --- validation ----------------------------------------------------------------------------


def test_duplicate_task_id_names_file_and_line(tmp_path: Path) -> None:
    err = definition_error(
        tmp_path,
        """\
        with DAG("d"):
            Bash("a", "true")
            Bash("a", "false")
        """,
    )
    assert "duplicate task id 'a'" in str(err)
    assert_located(err, 3)


def test_cycle_is_named_at_the_closing_edge(tmp_path: Path) -> None:
    err = definition_error(
        tmp_path,
        """\
        with DAG("d"):
            a = Bash("a", "true")
            b = Bash("b", "true")
            c = Bash("c", "true")
            a >> b >> c
            c >> a
        """,
    )
    assert "cycle: c >> a >> b >> c" in str(err)
    assert_located(err, 6)


def test_self_dependency_is_a_cycle(tmp_path: Path) -> None:
    err = definition_error(
        tmp_path,
        """\
        with DAG("d"):
            a = Bash("a", "true")
            a >> a
        """,
    )
    assert "cycle: a >> a" in str(err)


def test_check_cycles_finds_cycle_built_behind_our_back() -> None:
    with DAG("d") as dag:
        a = Bash("a", "true")
        b = Bash("b", "true")
        a >> b
    # Bypass `>>` (which checks eagerly) to test the exit/serialize check.
    dag.tasks["b"].downstream_ids.add("a")
    dag.tasks["a"].upstream_ids.add("b")
    with pytest.raises(DagDefinitionError, match=r"cycle in DAG 'd': a >> b >> a"):
        dag.serialize("x.py")


@pytest.mark.parametrize("bad", ["", "has space", "-leading", "trailing_", "a" * 64, "ü", "a/b"])
def test_invalid_task_ids(tmp_path: Path, bad: str) -> None:
    err = definition_error(tmp_path, f'with DAG("d"):\n    Bash({bad!r}, "true")\n')
    assert f"invalid task id {bad!r}" in str(err)
    assert (
        "usable as Kubernetes label values: 1-63 characters, letters, digits, '-', '_', '.', "
        "starting and ending with a letter or digit" in str(err)
    )
    assert_located(err, 2)


@pytest.mark.parametrize("good", ["a", "A.b-c_d", "x" * 63, "9"])
def test_valid_ids(good: str) -> None:
    with DAG(good) as dag:
        Bash(good, "true")
    assert list(dag.tasks) == [good]


def test_invalid_dag_id(tmp_path: Path) -> None:
    err = definition_error(tmp_path, 'DAG("my dag")\n')
    assert "invalid dag id 'my dag'" in str(err)
    assert_located(err, 1)


def test_unknown_trigger_rule_lists_valid_ones(tmp_path: Path) -> None:
    err = definition_error(
        tmp_path, 'with DAG("d"):\n    Bash("a", "true", trigger_rule="all_good")\n'
    )
    assert "unknown trigger rule 'all_good'" in str(err)
    assert "valid rules: all_success, all_failed, all_done, all_skipped," in str(err)
    assert "none_failed_min_one_success, none_skipped, always" in str(err)
    assert_located(err, 2)


@pytest.mark.parametrize(
    "schedule", ["0 3 * *", "61 * * * *", "@fortnightly", "daily", "0 0 31 2 *", "0 0 * * * 30"]
)
def test_bad_schedule(tmp_path: Path, schedule: str) -> None:
    err = definition_error(tmp_path, f'DAG("d", schedule={schedule!r})\n')
    assert f"invalid schedule {schedule!r}" in str(err)
    assert "@once, @hourly, @daily, @weekly, @monthly, @yearly" in str(err)
    assert_located(err, 1)


@pytest.mark.parametrize(
    "schedule",
    [None, "@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "*/5 * * * *"],
)
def test_good_schedules(schedule: str | None) -> None:
    assert DAG("d", schedule=schedule).serialize("f.py")["schedule"] == schedule


def test_pod_without_image(tmp_path: Path) -> None:
    err = definition_error(tmp_path, 'with DAG("d"):\n    Pod("p", command=["true"])\n')
    assert "Pod task 'p' needs an image" in str(err)
    assert_located(err, 2)


def test_negative_retries(tmp_path: Path) -> None:
    err = definition_error(tmp_path, 'with DAG("d"):\n    Bash("a", "true", retries=-1)\n')
    assert "retries must be an integer >= 0, got -1" in str(err)
    assert_located(err, 2)


def test_negative_retries_as_dag_default(tmp_path: Path) -> None:
    err = definition_error(tmp_path, 'DAG("d", default_args={"retries": -2})\n')
    assert "retries must be an integer >= 0" in str(err)
    assert_located(err, 1)


def test_unknown_dag_keyword_is_named(tmp_path: Path) -> None:
    err = definition_error(tmp_path, 'DAG("d", schedule_interval="@daily")\n')
    assert "unknown DAG keyword or default_args key 'schedule_interval'" in str(err)
    assert_located(err, 1)


def test_unknown_task_keyword_is_named(tmp_path: Path) -> None:
    err = definition_error(tmp_path, 'with DAG("d"):\n    Bash("a", "true", retires=1)\n')
    assert "unknown keyword argument 'retires'" in str(err)
    assert_located(err, 2)


def test_unknown_timezone(tmp_path: Path) -> None:
    err = definition_error(tmp_path, 'DAG("d", timezone="Mars/Olympus")\n')
    assert "unknown timezone 'Mars/Olympus'" in str(err)
    assert_located(err, 1)


def test_task_outside_dag(tmp_path: Path) -> None:
    err = definition_error(tmp_path, 'Bash("a", "true")\n')
    assert "inside a `with DAG(...):` block" in str(err)
    assert_located(err, 1)


def test_dependency_across_dags(tmp_path: Path) -> None:
    err = definition_error(
        tmp_path,
        """\
        with DAG("d1"):
            a = Bash("a", "true")
        with DAG("d2"):
            b = Bash("b", "true")
        a >> b
        """,
    )
    assert "different DAGs ('d1' and 'd2')" in str(err)
    assert_located(err, 5)


def test_bad_pod_setting_values() -> None:
    with DAG("d"):
        with pytest.raises(DagDefinitionError, match="image_pull_policy must be one of"):
            Bash("a", "true", image_pull_policy="Sometimes")
        with pytest.raises(DagDefinitionError, match="env must be a dict of strings"):
            Bash("b", "true", env={"N": 1})  # type: ignore[dict-item]
        with pytest.raises(DagDefinitionError, match="command must be a list of strings"):
            Pod("c", image="x", command="echo hi")  # type: ignore[arg-type]


def test_params_must_be_json() -> None:
    with pytest.raises(DagDefinitionError, match="params must be JSON-serializable"):
        DAG("d", params={"when": datetime(2026, 1, 1)})


# --- dates and timezones -------------------------------------------------------------------


def test_naive_dates_are_in_the_dag_timezone() -> None:
    dag = DAG(
        "d",
        timezone="Europe/Paris",
        start_date=datetime(2026, 1, 1),
        end_date=datetime(2026, 7, 1, 12),
    )
    data = dag.serialize("f.py")
    assert data["start_date"] == "2026-01-01T00:00:00+01:00"
    assert data["end_date"] == "2026-07-01T12:00:00+02:00"
    assert data["timezone"] == "Europe/Paris"


def test_aware_dates_are_kept() -> None:
    start = datetime(2026, 1, 1, 5, tzinfo=timezone(timedelta(hours=-5)))
    dag = DAG("d", timezone="Europe/Paris", start_date=start)
    assert dag.serialize("f.py")["start_date"] == "2026-01-01T05:00:00-05:00"


def test_end_before_start() -> None:
    with pytest.raises(DagDefinitionError, match="is before start_date"):
        DAG("d", start_date=datetime(2026, 2, 1), end_date=datetime(2026, 1, 1))


# --- defaults ------------------------------------------------------------------------------


def test_defaults_inheritance() -> None:
    with DAG(
        "d",
        default_args={"retries": 1, "pool": "db", "priority": 5, "env": {"A": "1", "B": "1"}},
        retries=2,
        timeout=timedelta(minutes=1),
        env={"B": "2", "C": "2"},
        image="my/worker:1",
        namespace="jobs",
    ) as dag:
        Bash("plain", "true")
        Bash("own", "true", retries=5, pool=None, env={"C": "3"}, timeout=None, namespace="other")
    plain = dag.serialize("f.py")["tasks"]["plain"]
    own = dag.serialize("f.py")["tasks"]["own"]
    # kwargs win over default_args (env merged as a whole setting: kwargs env replaces it)
    assert plain["retries"] == 2
    assert plain["pool"] == "db"
    assert plain["priority"] == 5
    assert plain["timeout"] == 60.0
    assert plain["env"] == {"B": "2", "C": "2"}
    assert plain["pod"] == {"image": "my/worker:1", "namespace": "jobs"}
    # the task's own values win; env is merged over the DAG's env
    assert own["retries"] == 5
    assert own["pool"] is None
    assert own["timeout"] is None
    assert own["env"] == {"B": "2", "C": "3"}
    assert own["pod"]["namespace"] == "other"


def test_builtin_defaults() -> None:
    with DAG("d") as dag:
        Bash("a", "true")
    t = dag.serialize("f.py")["tasks"]["a"]
    assert t["retries"] == 0
    assert t["retry_delay"] == 300.0
    assert t["retry_exponential_backoff"] is False
    assert t["max_retry_delay"] is None
    assert t["timeout"] is None
    assert t["trigger_rule"] == "all_success"
    assert t["priority"] == 1
    assert t["env"] == {}
    assert t["pod"] == {}


def test_security_context_none_opts_out_absent_means_default() -> None:
    with DAG("d") as dag:
        Bash("default", "true")
        Bash("optout", "true", security_context=None)
        Bash("custom", "true", security_context={"runAsUser": 1000})
    tasks = dag.serialize("f.py")["tasks"]
    assert "security_context" not in tasks["default"]["pod"]
    assert tasks["optout"]["pod"] == {"security_context": None}
    assert tasks["custom"]["pod"] == {"security_context": {"runAsUser": 1000}}


def test_dag_image_default_does_not_apply_to_pod_tasks() -> None:
    with DAG("d", image="my/worker:1") as dag:
        Pod("p", "busybox", args=["{{ ds }}"])
    p = dag.serialize("f.py")["tasks"]["p"]
    assert p["image"] == "busybox"
    assert "image" not in p["pod"]
    assert p["cmds"] is None
    assert p["args"] == ["{{ ds }}"]


# --- dependencies --------------------------------------------------------------------------


def upstream(dag: DAG) -> dict[str, list[str]]:
    return {tid: t["upstream"] for tid, t in dag.serialize("f.py")["tasks"].items()}


def test_rshift_lshift_and_lists() -> None:
    with DAG("d") as dag:
        a, b, c, d, e = (Bash(x, "true") for x in "abcde")
        result = a >> [c, b]
        assert result == [c, b]
        [b, c] >> d
        e << d
        assert (a << []) == []
        [e] << a
    assert upstream(dag) == {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["a", "d"]}
    assert dag.get_task("d").upstream_ids == {"b", "c"}
    assert dag.tasks["a"].downstream_ids == {"b", "c", "e"}


def test_chain_returns_right_hand_side() -> None:
    with DAG("d") as dag:
        a, b, c = (Bash(x, "true") for x in "abc")
        assert (a >> b >> c) is c
        c << Bash("z", "true")
    assert upstream(dag) == {"a": [], "b": ["a"], "c": ["b", "z"], "z": []}


def test_readers_refuse_a_newer_serialized_format() -> None:
    with DAG("d") as dag:
        Bash("a", "true")
    data = dag.serialize("d.py")
    assert readable(data) == data
    newer = {**data, "format_version": FORMAT_VERSION + 1}
    with pytest.raises(
        SerializedFormatError, match=f"'d' is stored in serialized format {FORMAT_VERSION + 1}"
    ):
        readable(newer)
    with pytest.raises(SerializedFormatError, match="without a valid format_version"):
        readable({k: v for k, v in data.items() if k != "format_version"})


def test_get_task_unknown() -> None:
    with pytest.raises(KeyError, match="DAG 'd' has no task 'x'"):
        DAG("d").get_task("x")


# --- serialize -----------------------------------------------------------------------------


def test_serialize_matches_the_contract() -> None:
    with DAG(
        "example_etl",
        schedule="0 3 * * *",
        start_date=datetime(2026, 1, 1),
        retries=2,
        retry_delay=timedelta(seconds=30),
        params={"limit": 100},
        tags=["example"],
        description="an example",
    ) as dag:
        extract = Bash("extract", "echo {{ ds }}", env={"X": "{{ run_id }}"})

        @task(retries=3, timeout=timedelta(minutes=5))
        def transform(limit: int = 100) -> dict[str, int]:
            return {"rows": limit}

        load = Pod(
            "load",
            image="busybox:1.36",
            command=["sh", "-c", "echo {{ params.limit }}"],
            resources={"requests": {"cpu": "100m"}},
            tolerations=[{"key": "k", "operator": "Exists"}],
        )
        extract >> transform(limit=5) >> load
    data = dag.serialize("etl/example.py", lineno=7)
    assert json.loads(json.dumps(data)) == data
    only_when_set = {"callbacks", "user_defined_macros", "template_functions"}
    assert set(data) == set(SerializedDag.__annotations__) - only_when_set
    assert data["format_version"] == FORMAT_VERSION
    assert data["fileloc"] == "etl/example.py"
    assert data["lineno"] == 7
    # definition order = the order the task objects were created
    assert list(data["tasks"]) == ["extract", "load", "transform"]
    kind_keys: dict[str, set[str]] = {
        "bash": {"command"},
        "pod": {"image", "cmds", "args"},
        "python": {"python_callable", "op_args", "op_kwargs"},
    }
    # (NotRequired is not introspectable under `from __future__ import annotations`)
    # branch/short-circuit/sensor, Bash's skip_on_exit_code, push_result, mapping: only when set
    # setup/teardown, callbacks and the task group: only when set, too
    optional = {"python_mode", "ignore_downstream_trigger_rules", "skip_on_exit_code"} | {
        "setup", "teardown", "on_failure_fail_dagrun", "callbacks", "task_group"
    } | {"sensor", "push_result", "result_file", "expand", "max_active_mapped"} | {
        "depends_on_past", "wait_for_downstream"
    }  # fmt: skip
    common = set(SerializedTask.__annotations__) - set().union(*kind_keys.values()) - optional
    for t in data["tasks"].values():
        assert set(t) == common | kind_keys[t["kind"]]
    assert data["tasks"]["load"]["upstream"] == ["transform"]
    assert data["tasks"]["transform"]["timeout"] == 300.0
    assert data["tasks"]["transform"]["op_kwargs"] == {"limit": {"value": 5}}
    assert data["tasks"]["load"]["pod"]["tolerations"] == [{"key": "k", "operator": "Exists"}]
    # default lineno is the DAG(...) call
    assert isinstance(dag.serialize("x.py")["lineno"], int) and dag.lineno


def test_serialize_does_not_alias_internal_state() -> None:
    res: dict[str, Any] = {"requests": {"cpu": "1"}}
    with DAG("d", params={"a": [1]}) as dag:
        Bash("a", "true", resources=res)
    data = dag.serialize("f.py")
    data["params"]["a"].append(2)
    data["tasks"]["a"]["pod"]["resources"]["requests"]["cpu"] = "2"
    again = dag.serialize("f.py")
    assert again["params"] == {"a": [1]}
    assert again["tasks"]["a"]["pod"]["resources"] == {"requests": {"cpu": "1"}}


def test_exception_inside_with_block_is_not_masked() -> None:
    with pytest.raises(RuntimeError, match="boom"), DAG("d"):
        raise RuntimeError("boom")
    # the DAG context was popped
    with pytest.raises(DagDefinitionError, match="inside a `with DAG"):
        Bash("a", "true")


def test_airflow_only_default_args_are_ignored_but_typos_are_not() -> None:
    dag = DAG("moved", default_args={"owner": "data", "email": ["a@b.c"], "retries": 2})
    with dag:
        Bash("t", "true")
    assert dag.serialize("f.py")["tasks"]["t"]["retries"] == 2
    with pytest.raises(DagDefinitionError, match="retires"):
        DAG("typo", default_args={"retires": 2})
