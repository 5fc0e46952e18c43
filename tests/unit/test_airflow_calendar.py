"""Airflow's calendar branches and `DayOfWeekSensor` in the layer: Airflow's semantics
(bounds, the next-day rule, the DAG's timezone, week_day forms) on miniflow's branch
and sensor tasks."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from miniflow import airflow_compat
from miniflow.airflow_compat import calendar_operators
from miniflow.authoring.loader import import_dag_file
from miniflow.errors import DagDefinitionError

WEDNESDAY = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
def layer() -> Iterator[None]:
    airflow_compat.activate()
    try:
        yield
    finally:
        airflow_compat.deactivate()


def load(tmp_path: Path, body: str, header: str = "") -> Any:
    """The DAG of a file importing the operators by Airflow 2's and 3's paths."""
    path = tmp_path / "af_calendar.py"
    path.write_text(
        "from datetime import datetime, time\n"
        "import pendulum\n"
        "from airflow import DAG\n"
        "from airflow.operators.datetime import BranchDateTimeOperator\n"
        "from airflow.providers.standard.operators.weekday import BranchDayOfWeekOperator\n"
        "from airflow.sensors.weekday import DayOfWeekSensor\n"
        "from airflow.providers.standard.utils.weekday import WeekDay\n"
        "from airflow.operators.branch import BaseBranchOperator\n"
        "from airflow.operators.empty import EmptyOperator\n" + header + textwrap.dedent(body)
    )
    (dag,) = import_dag_file(path)
    return dag


def branch(dag: Any, task_id: str, logical_date: datetime = WEDNESDAY) -> Any:
    return dag.tasks[task_id].choose_branch({"logical_date": logical_date})


def at(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2024, 5, day, hour, minute, tzinfo=UTC)


DATETIME_DAG = """
with DAG("cal", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")):
    BranchDateTimeOperator(
        task_id="window", follow_task_ids_if_true=["inside"], follow_task_ids_if_false="outside",
        target_lower=pendulum.datetime(2024, 5, 1, 14), target_upper=datetime(2024, 5, 1, 15),
        use_task_logical_date=True) >> [EmptyOperator(task_id="inside"),
                                        EmptyOperator(task_id="outside")]
    BranchDateTimeOperator(
        task_id="evening", follow_task_ids_if_true="in", follow_task_ids_if_false="out",
        target_lower=time(15), target_upper=time(0), use_task_logical_date=True,
    ) >> [EmptyOperator(task_id="in"), EmptyOperator(task_id="out")]
    BranchDateTimeOperator(
        task_id="after_noon", follow_task_ids_if_true="in2", follow_task_ids_if_false="out2",
        target_lower=time(12), target_upper=None, use_task_execution_date=True,
    ) >> [EmptyOperator(task_id="in2"), EmptyOperator(task_id="out2")]
    BranchDateTimeOperator(
        task_id="clock", follow_task_ids_if_true="in3", follow_task_ids_if_false="out3",
        target_lower=None, target_upper=time(9),
    ) >> [EmptyOperator(task_id="in3"), EmptyOperator(task_id="out3")]
"""


def test_branch_datetime_follows_airflows_bounds(layer: None, tmp_path: Path) -> None:
    dag = load(tmp_path, DATETIME_DAG)
    assert dag.serialize("af_calendar.py")["tasks"]["window"]["python_mode"] == "branch"
    assert branch(dag, "window", at(14, 30)) == ["inside"]
    assert branch(dag, "window", at(14)) == ["inside"]  # the bounds are inside
    assert branch(dag, "window", at(15, 1)) == "outside"
    assert branch(dag, "window", at(13, 59)) == "outside"
    # upper (00:00) before lower (15:00): the window runs to midnight of the next day
    assert branch(dag, "evening", at(20)) == "in"
    assert branch(dag, "evening", at(10)) == "out"
    assert branch(dag, "after_noon", at(12, 1)) == "in2"  # Airflow 2's older flag name
    assert branch(dag, "after_noon", at(11)) == "out2"


def test_branch_datetime_uses_the_clock_unless_told(
    layer: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dag = load(tmp_path, DATETIME_DAG)
    monkeypatch.setattr(calendar_operators, "utcnow", lambda: at(8))
    assert branch(dag, "clock", logical_date=at(10)) == "in3"
    monkeypatch.setattr(calendar_operators, "utcnow", lambda: at(10))
    assert branch(dag, "clock", logical_date=at(8)) == "out3"


def test_naive_targets_are_in_the_dags_timezone(layer: None, tmp_path: Path) -> None:
    dag = load(
        tmp_path,
        """
        with DAG("paris", schedule=None,
                 start_date=pendulum.datetime(2024, 1, 1, tz="Europe/Paris")):
            BranchDateTimeOperator(
                task_id="office", follow_task_ids_if_true="yes", follow_task_ids_if_false="no",
                target_lower=time(9), target_upper=time(10), use_task_logical_date=True,
            ) >> [EmptyOperator(task_id="yes"), EmptyOperator(task_id="no")]
        """,
    )
    assert branch(dag, "office", at(7, 30)) == "yes"  # 09:30 in Paris (UTC+2 in May)
    assert branch(dag, "office", at(9, 30)) == "no"  # 11:30 in Paris


@pytest.mark.parametrize(
    ("week_day", "expected"),
    [
        ('"Wednesday"', "yes"),
        ('"MONDAY"', "no"),
        ('{"saturday", "Sunday"}', "no"),
        ("[WeekDay.WEDNESDAY, WeekDay.THURSDAY]", "yes"),
        ("WeekDay.WEDNESDAY", "yes"),
    ],
)
def test_branch_day_of_week_takes_airflows_week_day_forms(
    layer: None, tmp_path: Path, week_day: str, expected: str
) -> None:
    dag = load(
        tmp_path,
        f"""
        with DAG("days", schedule=None):
            BranchDayOfWeekOperator(
                task_id="day", follow_task_ids_if_true="yes", follow_task_ids_if_false="no",
                week_day={week_day}, use_task_logical_date=True,
            ) >> [EmptyOperator(task_id="yes"), EmptyOperator(task_id="no")]
        """,
    )
    assert branch(dag, "day") == expected


def test_branch_day_of_week_reads_the_clock_in_the_dags_timezone(
    layer: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dag = load(
        tmp_path,
        """
        with DAG("tokyo", schedule=None,
                 start_date=pendulum.datetime(2024, 1, 1, tz="Asia/Tokyo")):
            BranchDayOfWeekOperator(
                task_id="day", follow_task_ids_if_true="sunday", follow_task_ids_if_false="not",
                week_day=WeekDay.SUNDAY,
            ) >> [EmptyOperator(task_id="sunday"), EmptyOperator(task_id="not")]
        """,
    )
    # Saturday 23:30 UTC is Sunday 08:30 in Tokyo
    monkeypatch.setattr(calendar_operators, "utcnow", lambda: at(23, 30, day=4))
    assert branch(dag, "day") == "sunday"


def test_day_of_week_sensor_pokes_the_day(
    layer: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dag = load(
        tmp_path,
        """
        with DAG("sense", schedule=None):
            DayOfWeekSensor(task_id="logical", week_day={"Wednesday"},
                            use_task_logical_date=True, poke_interval=5, mode="reschedule")
            DayOfWeekSensor(task_id="clock", week_day=["Saturday", WeekDay.SUNDAY])
        """,
    )
    tasks = dag.serialize("af_calendar.py")["tasks"]
    assert tasks["logical"]["python_mode"] == "sensor"
    assert tasks["logical"]["sensor"]["mode"] == "reschedule"
    assert dag.tasks["logical"].poke({"logical_date": WEDNESDAY}) is True
    assert dag.tasks["logical"].poke({"logical_date": at(0, day=2)}) is False
    monkeypatch.setattr(calendar_operators, "utcnow", lambda: at(12, day=5))  # a Sunday
    assert dag.tasks["clock"].poke({"logical_date": WEDNESDAY}) is True


def test_a_base_branch_operator_subclass_is_a_branch_task(layer: None, tmp_path: Path) -> None:
    dag = load(
        tmp_path,
        """
        with DAG("sub", schedule=None):
            BySize(task_id="size", limit=3) >> [EmptyOperator(task_id="big"),
                                                EmptyOperator(task_id="small")]
        """,
        header=textwrap.dedent(
            """
            class BySize(BaseBranchOperator):
                def __init__(self, *, limit, **kwargs):
                    super().__init__(**kwargs)
                    self.limit = limit

                def choose_branch(self, context):
                    return {"big"} if self.limit > 2 else "small"
            """
        ),
    )
    assert dag.serialize("af_calendar.py")["tasks"]["size"]["python_mode"] == "branch"
    assert dag.tasks["size"].execute({}) == ["big"]  # any iterable, as a list of ids


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("target_lower=None, target_upper=None", "both target_upper and target_lower are None"),
        ("target_lower='14:00', target_upper=None", "target_lower must be a datetime"),
    ],
)
def test_bad_datetime_targets_are_definition_errors(
    layer: None, tmp_path: Path, arguments: str, message: str
) -> None:
    with pytest.raises(DagDefinitionError, match=message) as caught:
        load(
            tmp_path,
            f"""
            with DAG("bad", schedule=None):
                BranchDateTimeOperator(task_id="b", follow_task_ids_if_true="x",
                                       follow_task_ids_if_false="y", {arguments})
            """,
        )
    assert "task 'b'" in str(caught.value)


def test_a_bad_week_day_is_a_definition_error(layer: None, tmp_path: Path) -> None:
    with pytest.raises(DagDefinitionError, match='Invalid Week Day passed: "Funday"'):
        load(
            tmp_path,
            """
            with DAG("bad", schedule=None):
                DayOfWeekSensor(task_id="s", week_day="Funday")
            """,
        )
    with pytest.raises(DagDefinitionError, match="Unsupported Type for week_day"):
        load(
            tmp_path,
            """
            with DAG("bad", schedule=None):
                DayOfWeekSensor(task_id="s", week_day=3)
            """,
        )
