"""Airflow keyword names in a moved DAG file: the error says what miniflow calls them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from miniflow import DAG, Bash
from miniflow.errors import DagDefinitionError


def _in_dag(make: Callable[[], Any]) -> Callable[[], Any]:
    def build() -> Any:
        with DAG("d"):
            return make()

    return build


@pytest.mark.parametrize(
    ("build", "airflow", "ours"),
    [
        (lambda: DAG("d", schedule_interval="@daily"), "schedule_interval", "schedule"),
        (lambda: DAG("d", default_args={"execution_timeout": 60}), "execution_timeout", "timeout"),
        (_in_dag(lambda: Bash("t", bash_command="echo hi")), "bash_command", "command"),
        (_in_dag(lambda: Bash("t", "true", execution_timeout=60)), "execution_timeout", "timeout"),
        (_in_dag(lambda: Bash("t", "true", priority_weight=3)), "priority_weight", "priority"),
        (lambda: DAG("d", retires=2), "retires", "retries"),  # a typo, by similarity
        (lambda: DAG("d", start_data=None), "start_data", "start_date"),
    ],
)
def test_unknown_keyword_suggests_the_miniflow_name(
    build: Callable[[], Any], airflow: str, ours: str
) -> None:
    with pytest.raises(DagDefinitionError) as info:
        build()
    assert "unknown" in str(info.value) and repr(airflow) in str(info.value)
    assert f"(did you mean {ours!r}?)" in str(info.value)
    assert __file__ in str(info.value)  # located at the user's line
