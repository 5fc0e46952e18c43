"""The Airflow layer at definition time: imports of both generations, argument mapping,
refused constructs named with file and line, and the template context's Airflow names."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from miniflow import airflow_compat
from miniflow.airflow_compat import problems
from miniflow.airflow_compat.arguments import plain
from miniflow.authoring.loader import import_dag_file
from miniflow.authoring.tasks import SETTING_NAMES
from miniflow.authoring.templates import build_context, render
from miniflow.parsing.discovery import find_dag_files


@pytest.fixture
def layer() -> Iterator[None]:
    airflow_compat.activate()
    try:
        yield
    finally:
        airflow_compat.deactivate()


def load(tmp_path: Path, source: str, name: str = "af_dag.py") -> dict[str, Any]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source).lstrip())
    (dag,) = import_dag_file(path)
    return dict(dag.serialize(name))


def test_without_activation_airflow_is_not_importable() -> None:
    assert "airflow" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        __import__("airflow")


@pytest.mark.usefixtures("layer")
@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("airflow", "DAG"),
        ("airflow.models.dag", "DAG"),
        ("airflow.operators.bash", "BashOperator"),
        ("airflow.operators.python", "get_current_context"),
        ("airflow.operators.empty", "EmptyOperator"),
        ("airflow.decorators", "task_group"),
        ("airflow.models.baseoperator", "cross_downstream"),
        ("airflow.models.param", "ParamsDict"),
        ("airflow.models.xcom_arg", "XComArg"),
        ("airflow.utils.trigger_rule", "TriggerRule"),
        ("airflow.utils.edgemodifier", "Label"),
        ("airflow.exceptions", "AirflowFailException"),
        ("airflow.providers.cncf.kubernetes.operators.pod", "KubernetesPodOperator"),
        ("airflow.sdk", "dag"),
        ("airflow.sdk", "BaseOperator"),
        ("airflow.providers.standard.operators.python", "ShortCircuitOperator"),
        ("airflow.providers.standard.operators.bash", "BashOperator"),
    ],
)
def test_both_import_generations_resolve(module: str, name: str) -> None:
    imported = __import__(module, fromlist=[name])
    assert getattr(imported, name) is not None


def test_airflow2_dag_maps_onto_miniflow_settings(layer: None, tmp_path: Path) -> None:
    dag = load(
        tmp_path,
        """
        from datetime import datetime, timedelta
        import pendulum
        from airflow import DAG
        from airflow.operators.bash import BashOperator
        from airflow.utils.trigger_rule import TriggerRule

        with DAG("mapped", schedule_interval="0 3 * * *", catchup=True, max_active_runs=2,
                 start_date=pendulum.datetime(2024, 1, 1, tz="Europe/Paris"),
                 default_args={"owner": "x", "retries": 2, "retry_delay": timedelta(minutes=1),
                               "execution_timeout": timedelta(minutes=5)}):
            BashOperator(task_id="b", bash_command="echo hi", env={"A": "1"}, cwd="/tmp",
                         priority_weight=7, trigger_rule=TriggerRule.ALL_DONE, pool="p",
                         executor_config={"pod_override": {"spec": {"containers": [
                             {"name": "base", "image": "etl:1"}]}}})
        """,
    )
    assert (dag["schedule"], dag["catchup"], dag["max_active_runs"]) == ("0 3 * * *", True, 2)
    assert dag["timezone"] == "Europe/Paris"
    task = dag["tasks"]["b"]
    assert task["command"] == "cd /tmp && echo hi"
    assert task["skip_on_exit_code"] == [99]  # BashOperator's default
    assert (task["retries"], task["retry_delay"], task["timeout"]) == (2, 60.0, 300.0)
    assert (task["priority"], task["trigger_rule"], task["pool"]) == (7, "all_done", "p")
    assert task["env"] == {"A": "1"}
    assert task["pod"]["pod_override"]["spec"]["containers"][0]["image"] == "etl:1"


def test_user_defined_macros_and_filters_are_miniflows(layer: None, tmp_path: Path) -> None:
    dag = load(
        tmp_path,
        """
        from airflow import DAG
        from airflow.operators.bash import BashOperator

        def double(x):
            return x * 2

        with DAG("macros", user_defined_macros={"project": "acme", "double": double},
                 user_defined_filters={"up": str.upper}):
            BashOperator(task_id="b", bash_command="echo {{ project | up }} {{ double(2) }}")
        """,
    )
    assert dag["user_defined_macros"] == {"project": "acme"}  # JSON: rendered anywhere
    assert dag["template_functions"] == ["double", "|up"]  # rendered where the file is imported


def test_dependency_helpers(layer: None, tmp_path: Path) -> None:
    dag = load(
        tmp_path,
        """
        from airflow.sdk import DAG, chain, cross_downstream, Label
        from airflow.providers.standard.operators.empty import EmptyOperator as E

        with DAG("deps"):
            a, b, c, d, e, f, g = (E(task_id=n) for n in "abcdefg")
            chain(a, [b, c], [d, e], f)
            cross_downstream([f], [g])
            g >> Label("why") >> E(task_id="h")
            [E(task_id="i"), E(task_id="j")] >> Label("both") >> E(task_id="k")
        """,
    )
    up = {t: set(v["upstream"]) for t, v in dag["tasks"].items()}
    assert up["b"] == up["c"] == {"a"}
    assert (up["d"], up["e"]) == ({"b"}, {"c"})  # adjacent lists pair up
    assert up["f"] == {"d", "e"} and up["g"] == {"f"} and up["h"] == {"g"}
    assert up["k"] == {"i", "j"}


@pytest.mark.parametrize(
    ("source", "construct", "line"),
    [
        ("from airflow.datasets import Dataset", "Dataset", 1),
        ("from airflow.sdk import Asset", "Asset", 1),
        ("from airflow.operators.subdag import SubDagOperator", "SubDagOperator", 1),
        (
            "from airflow.providers.google.cloud.operators.gcs import X",
            "module airflow.providers",
            1,
        ),
        (
            "from airflow import DAG\nfrom airflow.operators.bash import BashOperator\n"
            "with DAG('x'):\n    BashOperator(task_id='t', bash_command='a', deferrable=True)",
            "deferrable",
            4,
        ),
        (
            "from airflow import DAG\nwith DAG('x', timetable=object()):\n    pass",
            "timetable",
            2,
        ),
        (
            "from airflow import DAG\nimport datetime\n"
            "DAG('x', schedule=datetime.timedelta(minutes=7))",
            "timedelta schedule",
            3,
        ),
        (
            "from airflow import DAG\nfrom airflow.decorators import task\nwith DAG('x'):\n"
            "    @task.virtualenv\n    def f():\n        pass",
            "task.virtualenv",
            4,
        ),
        pytest.param(
            "from airflow import DAG\nfrom airflow.operators.bash import BashOperator\n"
            "def cb(ctx):\n    pass\n"
            "with DAG('x'):\n"
            "    BashOperator(task_id='t', bash_command='a', on_failure_callback=cb)",
            "callbacks",
            6,
            marks=pytest.mark.skipif(
                "on_failure_callback" in SETTING_NAMES, reason="this miniflow has callbacks"
            ),
        ),
    ],
)
def test_refused_constructs_name_the_construct_file_and_line(
    layer: None, tmp_path: Path, source: str, construct: str, line: int
) -> None:
    path = tmp_path / "refused.py"
    path.write_text(source + "\n")
    with pytest.raises(problems.UnsupportedConstruct) as caught:
        import_dag_file(path)
    assert caught.value.construct.startswith(construct)
    assert (caught.value.filename, caught.value.lineno) == (str(path), line)
    assert caught.value.suggestion
    assert isinstance(caught.value, ImportError)


def test_accepted_differences_are_warnings(layer: None, tmp_path: Path) -> None:
    with problems.collect_warnings() as found:
        dag = load(
            tmp_path,
            """
            from datetime import timedelta
            import pendulum
            from airflow import DAG
            from airflow.operators.bash import BashOperator

            with DAG("w", schedule=timedelta(hours=6), start_date=pendulum.datetime(2024, 1, 1),
                     dagrun_timeout=timedelta(hours=1)):
                BashOperator(task_id="t", bash_command="x", queue="big", email=["a@b.c"])
            """,
        )
    assert dag["schedule"] == "0 */6 * * *"
    assert {w.construct for w in found} == {
        "timedelta schedule", "dagrun_timeout", "catchup", "queue", "email",
    }  # fmt: skip
    assert {w.lineno for w in found} == {6, 8}


def test_kubernetes_models_become_api_dicts() -> None:
    from kubernetes_asyncio.client import models as k8s

    pod = k8s.V1Pod(
        spec=k8s.V1PodSpec(
            containers=[k8s.V1Container(name="base", image="i:1", image_pull_policy="Always")],
            node_selector={"pool": "etl"},
        )
    )
    assert plain(pod) == {
        "spec": {
            "containers": [{"name": "base", "image": "i:1", "imagePullPolicy": "Always"}],
            "nodeSelector": {"pool": "etl"},
        }
    }


def test_pod_operator_is_one_pod_task(layer: None, tmp_path: Path) -> None:
    dag = load(
        tmp_path,
        """
        from airflow import DAG
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from kubernetes_asyncio.client import models as k8s

        with DAG("k"):
            KubernetesPodOperator(
                task_id="p", image="busybox:1.36", cmds=["sh", "-c"], arguments=["echo {{ ds }}"],
                env_vars={"A": "1"}, namespace="jobs", service_account_name="runner",
                node_selector={"pool": "etl"}, image_pull_secrets="reg-a,reg-b",
                tolerations=[k8s.V1Toleration(key="k", operator="Exists")],
                env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name="s"))],
            )
        """,
    )
    task = dag["tasks"]["p"]
    assert (task["kind"], task["image"]) == ("pod", "busybox:1.36")
    assert (task["cmds"], task["args"], task["env"]) == (
        ["sh", "-c"],
        ["echo {{ ds }}"],
        {"A": "1"},
    )
    pod = task["pod"]
    assert (pod["namespace"], pod["service_account"]) == ("jobs", "runner")
    assert pod["image_pull_secrets"] == ["reg-a", "reg-b"]
    assert pod["tolerations"] == [{"key": "k", "operator": "Exists"}]
    override = pod["pod_override"]["spec"]["containers"][0]
    assert override == {"name": "base", "envFrom": [{"secretRef": {"name": "s"}}]}


def test_template_context_has_airflows_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_COLOR", "blue")
    monkeypatch.setenv("AIRFLOW_VAR_CONFIG", '{"n": 3}')
    monkeypatch.setenv("AIRFLOW_CONN_DB", "postgres://u:secret@h.example:5432/s")
    when = datetime(2024, 2, 28, tzinfo=UTC)
    context = build_context(
        dag_id="d", run_id="r", task_id="t", try_number=1, logical_date=when,
        data_interval_start=when, data_interval_end=when + timedelta(days=1),
        params={"p": 1}, conf={"c": 2},
    )  # fmt: skip
    template = (
        "{{ macros.ds_add(ds, 2) }} {{ macros.ds_format(ds, '%Y-%m-%d', '%d/%m') }} "
        "{{ dag_run.conf.c }} {{ dag.dag_id }} {{ task.task_id }} {{ var.value.color }} "
        "{{ var.json.config.n }} {{ conn.db.host }}:{{ conn.db.port }} "
        "{{ (macros.datetime(2024, 1, 1) + macros.timedelta(days=1)).day }}"
    )
    out = render(template, context, task_id="t", field="f")
    assert out == "2024-03-01 28/02 2 d t blue 3 h.example:5432 2"
    older = "{{ next_ds }} {{ prev_ds }} {{ yesterday_ds_nodash }} {{ task_instance_key_str }}"
    assert (
        render(older, context, task_id="t", field="f")
        == "2024-02-29 2024-02-27 20240227 d__t__20240228"
    )
    assert "secret" not in repr(context["conn"].db)


def test_pendulum_stand_in_and_discovery(layer: None, tmp_path: Path) -> None:
    import pendulum

    assert pendulum.datetime(2024, 1, 1, tz="UTC") == datetime(2024, 1, 1, tzinfo=UTC)
    assert pendulum.duration(hours=1) == timedelta(hours=1)
    (tmp_path / "af.py").write_text("from airflow import DAG\n")
    (tmp_path / "helper.py").write_text("import airflow_helpers\n")
    assert [p.name for p in find_dag_files(tmp_path)] == ["af.py"]


def test_custom_operator_renders_template_fields_and_files(layer: None, tmp_path: Path) -> None:
    (tmp_path / "query.sql").write_text("SELECT {{ params.n }} WHERE day = '{{ ds }}'")
    path = tmp_path / "custom.py"
    path.write_text(
        textwrap.dedent(
            """
            from airflow import DAG
            from airflow.models.baseoperator import BaseOperator

            class SqlOperator(BaseOperator):
                template_fields = ("sql", "names")
                template_ext = (".sql",)

                def __init__(self, sql, names, **kwargs):
                    super().__init__(**kwargs)
                    self.sql, self.names = sql, names

                def execute(self, context):
                    return self.sql

            with DAG("custom", params={"n": 5}):
                SqlOperator(task_id="q", sql="query.sql", names=["{{ ds_nodash }}", 1])
            """
        )
    )
    (dag,) = import_dag_file(path)
    op: Any = dag.tasks["q"]
    assert dag.serialize("custom.py")["tasks"]["q"]["kind"] == "python"
    when = datetime(2024, 3, 1, tzinfo=UTC)
    context = build_context(
        dag_id="custom", run_id="r", task_id="q", try_number=1, logical_date=when,
        data_interval_start=when, data_interval_end=when, params={"n": 5},
    )  # fmt: skip
    op.render_template_fields(context)
    assert op.sql == "SELECT 5 WHERE day = '2024-03-01'"
    assert op.names == ["20240301", 1]


@pytest.mark.parametrize(
    ("source", "native"),
    [
        ("from airflow.decorators import task\n@task.sensor(poke_interval=1)\ndef f():\n"
         "    return True", "sensor"),
        ("from airflow.decorators import setup\n@setup\ndef f():\n    pass", "setup"),
        ("from airflow.operators.latest_only import LatestOnlyOperator", "LatestOnly"),
    ],
)  # fmt: skip
def test_features_miniflow_may_lack_forward_or_name_the_construct(
    layer: None, tmp_path: Path, source: str, native: str
) -> None:
    """Where this miniflow has the feature, the Airflow name maps onto it; where it does
    not, the error says the construct is not available in this version."""
    import miniflow

    available = hasattr(miniflow.task, native) or hasattr(miniflow, native)
    path = tmp_path / "forward.py"
    path.write_text("from airflow import DAG\nwith DAG('fwd'):\n" + textwrap.indent(source, "    "))
    if available:
        import_dag_file(path)
    else:
        with pytest.raises(problems.UnsupportedConstruct, match="not available in this miniflow"):
            import_dag_file(path)


def test_operators_partial_expand_map_onto_miniflow_mapping(layer: None, tmp_path: Path) -> None:
    path = tmp_path / "mapped.py"
    path.write_text(
        textwrap.dedent("""
        from datetime import datetime
        from airflow import DAG
        from airflow.operators.bash import BashOperator
        from airflow.operators.python import PythonOperator
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        def show(x, y=0):
            return x + y

        with DAG("mapped", start_date=datetime(2024, 1, 1), schedule=None):
            BashOperator.partial(task_id="b", cwd="/srv").expand(bash_command=["echo 1", "echo 2"])
            PythonOperator.partial(task_id="p", python_callable=show).expand(op_args=[[1], [2]])
            KubernetesPodOperator.partial(task_id="k", image="busybox").expand(
                arguments=[["a"], ["b"]], env_vars=[[{"name": "A", "value": "1"}]]
            )
            BashOperator.partial(task_id="bk").expand_kwargs(
                [{"bash_command": "echo x", "env": {"A": "1"}}, {"bash_command": "echo y"}]
            )
            KubernetesPodOperator(task_id="pushes", image="busybox", do_xcom_push=True)
    """)
    )
    (dag,) = import_dag_file(path)
    tasks = dag.serialize("mapped.py")["tasks"]
    assert tasks["b"]["expand"] == {
        "mode": "product",
        "args": {"command": {"value": ["cd /srv && echo 1", "cd /srv && echo 2"]}},
    }
    assert tasks["b"]["push_result"] is True  # do_xcom_push defaults to True
    assert tasks["p"]["expand"]["args"] == {"op_args": {"value": [[1], [2]]}}
    assert tasks["k"]["expand"]["args"] == {
        "args": {"value": [["a"], ["b"]]},
        "env": {"value": [{"A": "1"}]},
    }
    assert tasks["bk"]["expand"]["source"]["value"][0] == {"command": "echo x", "env": {"A": "1"}}
    assert tasks["pushes"]["result_file"] == "/airflow/xcom/return.json"


def test_mapping_mistakes_name_the_field(layer: None, tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text(
        "from airflow import DAG\nfrom airflow.operators.bash import BashOperator\n"
        "with DAG('bad'):\n"
        "    BashOperator.partial(task_id='b').expand(cwd=['/a'])\n"
    )
    with pytest.raises(Exception, match="'cwd' cannot be mapped on a BashOperator"):
        import_dag_file(path)


def test_airflow_fail_exception_is_miniflows_fail_task(layer: None) -> None:
    from airflow.exceptions import AirflowFailException  # type: ignore[import-not-found]

    from miniflow import FailTask

    assert issubclass(AirflowFailException, FailTask)


def test_dag_function_parameters_become_params(layer: None, tmp_path: Path) -> None:
    path = tmp_path / "params.py"
    path.write_text(
        textwrap.dedent("""
        from datetime import datetime
        from airflow.decorators import dag, task
        from airflow.operators.bash import BashOperator

        @dag(schedule=None, start_date=datetime(2024, 1, 1), params={"kept": 1})
        def with_params(n: int = 3, who="world"):
            @task
            def double(x):
                return x * 2
            BashOperator(task_id="hello", bash_command=f"echo hello {who}")
            double(n)

        with_params()
    """)
    )
    (dag,) = import_dag_file(path)
    data = dag.serialize("params.py")
    assert data["params"] == {"kept": 1, "n": 3, "who": "world"}
    assert data["tasks"]["hello"]["command"] == "echo hello {{ params.who }}"


def test_sensor_operators_are_miniflow_sensors(layer: None, tmp_path: Path) -> None:
    path = tmp_path / "sensors.py"
    path.write_text(
        textwrap.dedent("""
        from datetime import datetime, timedelta
        from airflow import DAG
        from airflow.sensors.base import BaseSensorOperator
        from airflow.providers.standard.sensors.python import PythonSensor
        from airflow.providers.standard.sensors.filesystem import FileSensor
        from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor

        class Ready(BaseSensorOperator):
            def poke(self, context):
                return True

        with DAG("sensors", start_date=datetime(2024, 1, 1), schedule=None):
            Ready(task_id="ready", poke_interval=5, timeout=60, mode="reschedule")
            PythonSensor(task_id="py", python_callable=lambda: True, soft_fail=True)
            FileSensor(task_id="file", filepath="/data/*.csv", poke_interval=timedelta(minutes=1))
            TimeDeltaSensor(task_id="later", delta=timedelta(seconds=1))
    """)
    )
    (dag,) = import_dag_file(path)
    tasks = dag.serialize("sensors.py")["tasks"]
    assert tasks["ready"]["python_mode"] == "sensor"
    assert tasks["ready"]["sensor"] == {
        "poke_interval": 5.0, "timeout": 60.0, "mode": "reschedule", "soft_fail": False,
    }  # fmt: skip
    assert tasks["py"]["sensor"]["soft_fail"] is True
    assert tasks["file"]["sensor"]["poke_interval"] == 60.0
    assert {t["kind"] for t in tasks.values()} == {"python"}


@pytest.mark.parametrize(
    ("source", "construct"),
    [
        ("from airflow.sensors.time_delta import TimeDeltaSensorAsync", "TimeDeltaSensorAsync"),
        ("from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator\n"
         "KubernetesPodOperator(task_id='t', image='i', "
         "arguments=['{{ ti.xcom_push(key=1, value=2) }}'])",
         "xcom_push in a template"),
        ("from airflow.decorators import task_group\n@task_group\ndef g(x):\n    pass\n"
         "g.expand(x=[1])", "mapped task group"),
    ],
)  # fmt: skip
def test_what_cannot_run_is_named(layer: None, tmp_path: Path, source: str, construct: str) -> None:
    path = tmp_path / "named.py"
    path.write_text(
        "from airflow import DAG\nwith DAG('named'):\n" + textwrap.indent(source, "    ")
    )
    with pytest.raises(problems.UnsupportedConstruct) as caught:
        import_dag_file(path)
    assert caught.value.construct == construct


def test_airflow2_context_names_and_bash_env_in_taskflow(layer: None, tmp_path: Path) -> None:
    """A TaskFlow parameter named like one of Airflow 2's older context entries is filled
    from the context (not a missing argument); `@task.bash(env=..., append_env=True)` is
    what miniflow does, and without `append_env` a warning says so."""
    with problems.collect_warnings() as found:
        dag = load(
            tmp_path,
            """
            from airflow.sdk import dag, task

            @dag(schedule=None)
            def ctx():
                @task.bash
                def key(n: int, task_instance_key_str: str, prev_ds=None) -> str:
                    return f"echo {task_instance_key_str} {n}"

                @task.bash(env={"A": "{{ ds }}"}, append_env=True)
                def appended() -> str:
                    return "echo $A"

                @task.bash(env={"B": "1"})
                def replaced() -> str:
                    return "echo $B"

                key(n=1), appended(), replaced()

            ctx()
            """,
        )
    assert set(dag["tasks"]) == {"key", "appended", "replaced"}
    assert dag["tasks"]["appended"]["env"] == {"A": "{{ ds }}"}
    assert [(w.construct, w.lineno) for w in found] == [("env", 13)]


def test_depends_on_past_and_wait_for_downstream_are_miniflows(layer: None, tmp_path: Path) -> None:
    dag = load(
        tmp_path,
        """
        from airflow import DAG
        from airflow.operators.bash import BashOperator

        with DAG("dop", default_args={"depends_on_past": True}):
            BashOperator(task_id="a", bash_command="echo a")
            BashOperator(task_id="b", bash_command="echo b", depends_on_past=False)
            BashOperator(task_id="c", bash_command="echo c", wait_for_downstream=True,
                         depends_on_past=False)
        """,
    )
    tasks = dag["tasks"]
    assert tasks["a"].get("depends_on_past") is True  # from default_args
    assert "depends_on_past" not in tasks["b"]
    assert (tasks["c"].get("depends_on_past"), tasks["c"].get("wait_for_downstream")) == (
        True,
        True,
    )  # wait_for_downstream implies it, as in Airflow
