"""Airflow 2.x import paths, run unmodified by miniflow's Airflow layer (a test fixture).

Operators, templates with Airflow's context names, branching into a task group, skips
(exit code 99, AirflowSkipException, a short-circuit), chain / cross_downstream / Label,
a custom BaseOperator with template_fields, Variable and Connection from the environment.
"""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.exceptions import AirflowSkipException
from airflow.hooks.base import BaseHook
from airflow.models import Variable
from airflow.models.baseoperator import BaseOperator, chain, cross_downstream
from airflow.models.param import Param
from airflow.operators.bash import BashOperator
from airflow.operators.empty import EmptyOperator
from airflow.operators.python import (
    BranchPythonOperator,
    PythonOperator,
    ShortCircuitOperator,
    get_current_context,
)
from airflow.utils.edgemodifier import Label
from airflow.utils.task_group import TaskGroup
from airflow.utils.trigger_rule import TriggerRule


class GreetOperator(BaseOperator):
    template_fields = ("greeting",)

    def __init__(self, greeting, **kwargs):
        super().__init__(**kwargs)
        self.greeting = greeting

    def execute(self, context):
        self.log.info("greeting %s", self.greeting)
        return {"greeting": self.greeting, "run_id": context["run_id"]}


class SkipMe(BaseOperator):
    def execute(self, context):
        raise AirflowSkipException("nothing to do today")


def compute(x, y, ds=None, **context):
    return {
        "sum": x + y,
        "ds": ds,
        "who": context["dag_run"].conf.get("who"),
        "var": Variable.get("greeting"),
        "missing": Variable.get("no_such_key", default_var="fallback"),
        "host": BaseHook.get_connection("warehouse").host,
        "task": get_current_context()["ti"].task_id,
    }


def choose(**context):
    return "group.left" if context["params"]["side"] == "left" else "group.right"


with DAG(
    dag_id="af2_core",
    schedule_interval=None,
    start_date=datetime(2024, 1, 1),
    default_args={
        "owner": "data",
        "retries": 0,
        "retry_delay": timedelta(seconds=1),
        "depends_on_past": False,
        "email_on_retry": False,
    },
    params={"side": Param("left", type="string", enum=["left", "right"]), "who": "nobody"},
    tags=["airflow2"],
) as dag:
    start = EmptyOperator(task_id="start")
    templated = BashOperator(
        task_id="templated",
        bash_command=(
            "echo 'ds={{ ds }} nodash={{ ds_nodash }} next={{ macros.ds_add(ds, 1) }} "
            "who={{ dag_run.conf.get(\"who\", \"none\") }} side={{ params.side }} "
            "var={{ var.value.greeting }} host={{ conn.warehouse.host }} "
            "dag={{ dag.dag_id }} task={{ task.task_id }} run={{ run_id }}'"
        ),
    )
    skipped_bash = BashOperator(task_id="skipped_bash", bash_command="exit 99")
    add = PythonOperator(task_id="add", python_callable=compute, op_args=[1, 2])
    branch = BranchPythonOperator(task_id="branch", python_callable=choose)
    with TaskGroup("group", tooltip="both sides") as group:
        left = BashOperator(task_id="left", bash_command="echo left")
        right = BashOperator(task_id="right", bash_command="echo right")
    join = EmptyOperator(task_id="join", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    greet = GreetOperator(task_id="greet", greeting="hello {{ params.side }} on {{ ds }}")
    gate = ShortCircuitOperator(task_id="gate", python_callable=lambda: False)
    after_gate = EmptyOperator(task_id="after_gate")
    skip_me = SkipMe(task_id="skip_me")
    fan_a = EmptyOperator(task_id="fan_a")
    fan_b = EmptyOperator(task_id="fan_b")
    sink_a = EmptyOperator(task_id="sink_a", trigger_rule="all_done")
    sink_b = EmptyOperator(task_id="sink_b", trigger_rule=TriggerRule.ALL_DONE)

    chain(start, templated, add, branch)
    branch >> Label("left side") >> left >> join
    branch >> Label("right side") >> right >> join
    join >> greet
    start >> skipped_bash
    start.set_downstream(gate)
    after_gate.set_upstream(gate)
    start >> skip_me >> [fan_a, fan_b]
    cross_downstream([fan_a, fan_b], [sink_a, sink_b])
