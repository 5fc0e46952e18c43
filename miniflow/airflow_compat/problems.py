"""What the Airflow layer refuses, and what it accepts with a warning.

An unsupported construct is an `UnsupportedConstruct` error naming the construct, the
file and line of the DAG file that used it, and what to use instead: never silently
different behaviour. It is both a `DagDefinitionError` (the parser shows it as the
file's import error) and an `ImportError` (what Airflow users expect of a missing name).

A construct accepted with a difference worth knowing (an argument that means nothing
here, such as `owner` or `queue`) is a `Warning` recorded in the current collection
(`collect_warnings`), which `miniflow airflow check` reports as "loads with warnings".
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from miniflow.errors import DagDefinitionError

_MINIFLOW_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

# Constructs the layer refuses: name -> what to use instead.
UNSUPPORTED: dict[str, str] = {
    "Dataset": "data-aware scheduling is not supported: use a schedule, or trigger the "
    "downstream DAG from a task (`miniflow dags trigger`)",
    "DatasetAlias": "data-aware scheduling is not supported: use a schedule",
    "Asset": "assets (data-aware scheduling) are not supported: use a schedule, or trigger "
    "the downstream DAG from a task (`miniflow dags trigger`)",
    "AssetAlias": "assets are not supported: use a schedule",
    "AssetWatcher": "assets are not supported: use a schedule",
    "asset": "@asset is not supported: write a DAG with a schedule",
    "Metadata": "asset metadata is not supported",
    "deferrable": "deferrable operators (triggers) are not supported: a miniflow sensor "
    "gives its slot back between pokes (`@task.sensor(mode='reschedule')`)",
    "TriggerDagRunOperator": "not supported: run `miniflow dags trigger` from a Bash task",
    "ExternalTaskSensor": "cross-DAG sensors are not supported: merge the DAGs or trigger "
    "the downstream DAG from the upstream one",
    "ExternalTaskMarker": "cross-DAG dependencies are not supported",
    "sla": "SLAs are not supported: set `execution_timeout` (miniflow `timeout`) and alert "
    "from your monitoring on the run duration metrics",
    "sla_miss_callback": "SLAs are not supported",
    "SubDagOperator": "SubDAGs are not supported: use a TaskGroup",
    "timetable": "custom timetables are not supported: use a cron expression or a preset "
    "(@hourly, @daily, ...) as `schedule`",
    "Timetable": "custom timetables are not supported: use a cron expression or a preset",
    "CronTriggerTimetable": "timetables are not supported: pass the cron string as `schedule`",
    "CronDataIntervalTimetable": "timetables are not supported: pass the cron string as `schedule`",
    "DeltaDataIntervalSchedule": "timedelta schedules are not supported: use a cron expression",
    "timedelta schedule": "only timedelta schedules with a cron equivalent (a divisor of an "
    "hour or a day, a day, a week) are mapped: use a cron expression",
    "executor": "miniflow runs every task in its own pod (or local process): remove "
    "`executor=`; per-task images go in `executor_config={'pod_override': ...}`",
    "queue": "Celery queues do not exist here: every task gets its own pod",
    "task.virtualenv": "use a worker image with the packages installed "
    "(`executor_config={'pod_override': ...}` or the task's `image`)",
    "task.external_python": "use a worker image with that Python (the task's `image`)",
    "task.docker": "use KubernetesPodOperator (miniflow `Pod`) with the image",
    "task.kubernetes": "use KubernetesPodOperator (miniflow `Pod`), or @task with "
    "`executor_config={'pod_override': ...}` for its image",
    "PythonVirtualenvOperator": "use a worker image with the packages installed",
    "ExternalPythonOperator": "use a worker image with that Python",
    "BranchExternalPythonOperator": "use a worker image with that Python and BranchPythonOperator",
    "BranchPythonVirtualenvOperator": "use a worker image with the packages installed and "
    "BranchPythonOperator",
    "DockerOperator": "use KubernetesPodOperator (miniflow `Pod`)",
    "Secret": "Kubernetes secrets of KubernetesPodOperator are not mapped yet: reference the "
    "secret in `env_from` through `pod_override`, or mount it with `volumes`",
    "SmoothOperator": "not provided: use EmptyOperator",
    "TimeDeltaSensorAsync": "deferrable sensors are not supported: use TimeDeltaSensor "
    "(mode='reschedule' gives the slot back between pokes)",
    "TimeSensorAsync": "deferrable sensors are not supported: use TimeSensor "
    "(mode='reschedule' gives the slot back between pokes)",
    "DateTimeSensorAsync": "deferrable sensors are not supported: use DateTimeSensor "
    "(mode='reschedule' gives the slot back between pokes)",
}

# Constructs that map onto miniflow features still being built: the error says so.
PENDING: dict[str, str] = {
    "expand": "dynamic task mapping (`.expand`) is not available in this miniflow version",
    "partial": "dynamic task mapping (`.partial`) is not available in this miniflow version",
    "expand_kwargs": "dynamic task mapping (`.expand_kwargs`) is not available in this "
    "miniflow version",
    "xcom_push": "explicit XCom push by key is not available in this miniflow version: "
    "return the value from the task (its result is its XCom)",
    "xcom_pull": "XCom pull by key is not available in this miniflow version: pass the "
    "upstream task's result as an argument (`.output` or the @task's return value)",
    "task.sensor": "@task.sensor is not available in this miniflow version",
    "PokeReturnValue": "sensors are not available in this miniflow version",
    "setup": "setup/teardown tasks are not available in this miniflow version",
    "teardown": "setup/teardown tasks are not available in this miniflow version",
    "LatestOnlyOperator": "latest-only is not available in this miniflow version",
    "callbacks": "task and DAG callbacks (on_success_callback, on_failure_callback, "
    "on_retry_callback, on_execute_callback) are not available in this miniflow version",
    "bash output": "results of Bash tasks (their last output line) are not available in "
    "this miniflow version",
    "do_xcom_push": "results from Pod tasks (KubernetesPodOperator do_xcom_push=True) are "
    "not available in this miniflow version",
}


def location() -> tuple[str | None, int | None]:
    """File and line of the innermost frame of user code (not miniflow, not importlib)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        internal = name.startswith("<frozen") or os.path.abspath(name).startswith(_MINIFLOW_DIR)
        if not internal:
            return name, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None, None


class UnsupportedConstruct(DagDefinitionError, ImportError):
    """An Airflow construct the layer does not run; names it, where, and what instead."""

    def __init__(
        self,
        construct: str,
        suggestion: str,
        *,
        filename: str | None = None,
        lineno: int | None = None,
    ) -> None:
        self.construct = construct
        self.suggestion = suggestion
        DagDefinitionError.__init__(
            self,
            f"{construct} is not supported by miniflow's Airflow layer: {suggestion}",
            filename=filename,
            lineno=lineno,
        )


def unsupported(construct: str, suggestion: str | None = None) -> UnsupportedConstruct:
    """The error for `construct`, located at the calling user code."""
    text = suggestion or UNSUPPORTED.get(construct) or PENDING.get(construct)
    filename, lineno = location()
    return UnsupportedConstruct(
        construct, text or "no equivalent in miniflow", filename=filename, lineno=lineno
    )


def pending(construct: str) -> UnsupportedConstruct:
    return unsupported(construct, PENDING[construct])


@dataclass(frozen=True)
class CompatWarning:
    construct: str
    message: str
    filename: str | None
    lineno: int | None


_warnings: contextvars.ContextVar[list[CompatWarning] | None] = contextvars.ContextVar(
    "miniflow_airflow_warnings", default=None
)


@contextlib.contextmanager
def collect_warnings() -> Iterator[list[CompatWarning]]:
    found: list[CompatWarning] = []
    token = _warnings.set(found)
    try:
        yield found
    finally:
        _warnings.reset(token)


def warn(construct: str, message: str) -> None:
    """Record a difference in behaviour at the calling user code (no-op outside a check)."""
    found = _warnings.get()
    if found is None:
        return
    filename, lineno = location()
    item = CompatWarning(construct, message, filename, lineno)
    if item not in found:
        found.append(item)
