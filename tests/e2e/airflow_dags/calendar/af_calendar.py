"""BranchDateTimeOperator, BranchDayOfWeekOperator and DayOfWeekSensor by both import
generations, deciding on the run's logical date (run it for 2024-05-01, a Wednesday)."""

from datetime import datetime, time

from airflow import DAG
from airflow.operators.datetime import BranchDateTimeOperator
from airflow.operators.empty import EmptyOperator
from airflow.providers.standard.operators.weekday import BranchDayOfWeekOperator
from airflow.providers.standard.sensors.weekday import DayOfWeekSensor
from airflow.providers.standard.utils.weekday import WeekDay
from airflow.utils.trigger_rule import TriggerRule

with DAG("af_calendar", schedule=None, start_date=datetime(2024, 1, 1)):
    morning = BranchDateTimeOperator(
        task_id="morning",
        follow_task_ids_if_true="before_noon",
        follow_task_ids_if_false=["after_noon"],
        target_lower=None,
        target_upper=time(12),
        use_task_logical_date=True,
    )
    morning >> [EmptyOperator(task_id="before_noon"), EmptyOperator(task_id="after_noon")]

    weekend = BranchDayOfWeekOperator(
        task_id="weekend",
        follow_task_ids_if_true="rest",
        follow_task_ids_if_false="work",
        week_day={WeekDay.SATURDAY, WeekDay.SUNDAY},
        use_task_logical_date=True,
    )
    join = EmptyOperator(task_id="join", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    weekend >> [EmptyOperator(task_id="rest"), EmptyOperator(task_id="work")] >> join

    midweek = DayOfWeekSensor(
        task_id="midweek", week_day="wednesday", use_task_logical_date=True, poke_interval=1
    )
    sunday = DayOfWeekSensor(
        task_id="sunday",
        week_day="Sunday",
        use_task_logical_date=True,
        poke_interval=1,
        timeout=2,
        soft_fail=True,
    )
    midweek >> EmptyOperator(task_id="after_midweek")
