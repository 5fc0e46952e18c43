"""`@task.sensor`: the definition API, its serialized form and the pure poke rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from miniflow_worker.sensing import next_poke

from miniflow import DAG, SensorResult, task
from miniflow.authoring.sensor import poke_outcome
from miniflow.errors import DagDefinitionError
from miniflow.store import states, transitions


def _serialized(**kwargs: object) -> dict:
    with DAG("d", start_date=datetime(2026, 1, 1)) as dag:

        @task.sensor(**kwargs)  # type: ignore[arg-type]
        def wait() -> bool:
            return True

        wait()
    return dict(dag.serialize("d.py")["tasks"]["wait"])


def test_sensor_serializes_its_settings_and_keeps_the_task_timeout_apart() -> None:
    data = _serialized(poke_interval=timedelta(seconds=30), timeout=600, mode="reschedule")
    assert data["kind"] == "python" and data["python_mode"] == "sensor"
    assert data["sensor"] == {
        "poke_interval": 30.0,
        "timeout": 600.0,
        "mode": "reschedule",
        "soft_fail": False,
    }
    assert data["timeout"] is None  # the sensor's timeout is not the per-try limit


def test_sensor_defaults_are_airflows() -> None:
    assert _serialized()["sensor"] == {
        "poke_interval": 60.0,
        "timeout": 7 * 24 * 3600.0,
        "mode": "poke",
        "soft_fail": False,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "wait"}, "mode must be one of 'poke', 'reschedule'"),
        ({"poke_interval": 0}, "poke_interval must be greater than 0"),
        ({"poke_interval": "5"}, "poke_interval must be a number of seconds"),
        ({"timeout": -1}, "timeout must be 0 or more"),
        ({"timeout": float("inf")}, "timeout must be finite"),
        ({"soft_fail": "yes"}, "soft_fail must be True or False"),
        ({"poke_intervall": 5}, "unknown keyword argument 'poke_intervall'"),
    ],
)
def test_bad_sensor_settings_are_definition_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(DagDefinitionError, match=message):
        _serialized(**kwargs)


def test_poke_outcome_reads_truthiness_and_sensor_results() -> None:
    assert poke_outcome(False) == (False, False)
    assert poke_outcome(None) == (False, None)
    assert poke_outcome("/data/in.csv") == (True, "/data/in.csv")
    assert poke_outcome(SensorResult(True, {"rows": 3})) == (True, {"rows": 3})
    assert poke_outcome(SensorResult(False, "ignored")) == (False, "ignored")


def test_next_poke_never_passes_the_timeout() -> None:
    settings = {"poke_interval": 60.0, "timeout": 100.0, "mode": "reschedule", "soft_fail": False}
    first = datetime(2026, 1, 1, tzinfo=UTC)
    assert next_poke(settings, first, first) == first + timedelta(seconds=60)  # type: ignore[arg-type]
    assert next_poke(settings, first, first + timedelta(seconds=70)) == first + timedelta(  # type: ignore[arg-type]
        seconds=100
    )
    assert next_poke(settings, first, first + timedelta(seconds=100)) is None  # type: ignore[arg-type]


def test_only_a_running_try_is_rescheduled_and_a_waiting_sensor_may_be_cleared() -> None:
    assert transitions.allowed(states.RUNNING, states.UP_FOR_RESCHEDULE)
    assert not transitions.allowed(states.QUEUED, states.UP_FOR_RESCHEDULE)
    assert transitions.ALLOWED[states.UP_FOR_RESCHEDULE] == {states.SCHEDULED, states.NONE}
    assert states.UP_FOR_RESCHEDULE not in states.ACTIVE | states.FINISHED


def test_tasks_list_shows_a_waiting_sensors_next_poke() -> None:
    from rich.console import Console

    from miniflow.cli.views import print_task_instances
    from miniflow.store.browse import task_instance_view
    from miniflow.store.models import TaskInstance

    poke_at = datetime(2026, 1, 1, 12, 30, 5, tzinfo=UTC)
    row = TaskInstance(
        dag_id="d", run_id="r", task_id="wait", kind="python", state="up_for_reschedule",
        try_number=3, max_tries=2, next_retry_at=poke_at, map_index=-1,
    )  # fmt: skip
    console = Console(record=True, width=200)
    print_task_instances([row], console)
    text = console.export_text()
    assert "up_for_reschedule" in text and "next poke at 2026-01-01 12:30:05" in text
    assert task_instance_view(row).next_poke_at == poke_at
