"""The names every `airflow.*` module of the layer offers.

One namespace for all supported modules: `from airflow.operators.bash import
BashOperator` and `from airflow.providers.standard.operators.bash import BashOperator`
find the same class. A name the namespace lacks is looked up in `problems` (a known
unsupported or not-yet-available construct gets its specific message) by the module's
`__getattr__` (see `finder`).
"""

from __future__ import annotations

from typing import Any

import miniflow
from miniflow.airflow_compat import names
from miniflow.airflow_compat.arguments import task_settings
from miniflow.airflow_compat.calendar_operators import EXPORTS as CALENDAR
from miniflow.airflow_compat.dags import DAG, dag, days_ago
from miniflow.airflow_compat.decorators import TaskGroup, setup, task, task_group, teardown
from miniflow.airflow_compat.kubernetes import KubernetesPodOperator
from miniflow.airflow_compat.operators import (
    BaseOperator,
    BashOperator,
    BranchPythonOperator,
    DummyOperator,
    EmptyOperator,
    Label,
    PythonOperator,
    ShortCircuitOperator,
    XComArg,
    _defaults,
    chain,
    chain_linear,
    cross_downstream,
)
from miniflow.airflow_compat.runtime import airflow_context
from miniflow.airflow_compat.sensors import EXPORTS as SENSORS
from miniflow.authoring.context import get_current_context as _miniflow_context


def get_current_context() -> dict[str, Any]:
    """The running task's context with Airflow's names (`ti`, `dag_run`, `macros`, ...)."""
    _miniflow_context()  # its error outside a running task
    return airflow_context()


def _latest_only_operator() -> Any:
    """Airflow's LatestOnlyOperator as miniflow's `LatestOnly`, where miniflow has it."""
    native = getattr(miniflow, "LatestOnly", None)
    if native is None:
        return None

    def LatestOnlyOperator(*, task_id: str, **kwargs: Any) -> Any:
        return native(task_id, **task_settings(_defaults(kwargs)))

    return LatestOnlyOperator


def _poke_return_value() -> Any:
    """Airflow's PokeReturnValue(is_done, xcom_value) as miniflow's `SensorResult`."""
    native = getattr(miniflow, "SensorResult", None)
    if native is None:
        return None

    def PokeReturnValue(is_done: bool, xcom_value: Any = None) -> Any:
        return native(is_done, xcom_value)

    return PokeReturnValue


EXPORTS: dict[str, Any] = {
    "DAG": DAG,
    "dag": dag,
    "task": task,
    "task_group": task_group,
    "TaskGroup": TaskGroup,
    "setup": setup,
    "teardown": teardown,
    "BaseOperator": BaseOperator,
    "BashOperator": BashOperator,
    "PythonOperator": PythonOperator,
    "BranchPythonOperator": BranchPythonOperator,
    "ShortCircuitOperator": ShortCircuitOperator,
    "EmptyOperator": EmptyOperator,
    "DummyOperator": DummyOperator,
    "KubernetesPodOperator": KubernetesPodOperator,
    "Label": Label,
    "XComArg": XComArg,
    "chain": chain,
    "chain_linear": chain_linear,
    "cross_downstream": cross_downstream,
    "get_current_context": get_current_context,
    "days_ago": days_ago,
    "Param": names.Param,
    "ParamsDict": names.ParamsDict,
    "TriggerRule": names.TriggerRule,
    "Variable": names.Variable,
    "Connection": names.Connection,
    "BaseHook": names.BaseHook,
    "AirflowException": names.AirflowException,
    "AirflowSkipException": names.AirflowSkipException,
    "AirflowFailException": names.AirflowFailException,
    "AirflowSensorTimeout": names.AirflowSensorTimeout,
    "AirflowTaskTimeout": names.AirflowTaskTimeout,
    "AirflowNotFoundException": names.AirflowNotFoundException,
    "Context": dict,
    **SENSORS,
    **CALENDAR,
}
# Names that forward to miniflow features only some versions have (absent: the module's
# __getattr__ names the construct as not yet available).
for _name, _value in (
    ("LatestOnlyOperator", _latest_only_operator()),
    ("PokeReturnValue", _poke_return_value()),
):
    if _value is not None:
        EXPORTS[_name] = _value
