"""Callbacks (definition, the worker's runner, the DAG callback child) and `LatestOnly`'s
decision."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from miniflow_worker import callbacks

from miniflow import DAG, Bash, Empty, LatestOnly, Pod, TaskGroup, get_current_context, task
from miniflow.authoring.latest_only import is_latest
from miniflow.errors import DagDefinitionError
from miniflow.parsing import dag_callback


def _noop(context: dict[str, Any]) -> None:
    pass


# --- definition -----------------------------------------------------------------------------


def test_callbacks_are_validated_and_serialized_by_name() -> None:
    with DAG(
        "cb_def",
        on_failure_callback=[_noop, _noop],
        default_args={"on_retry_callback": _noop},
    ) as dag:

        @task(on_success_callback=_noop)
        def f() -> None:
            pass

        f()
        Bash("b", "true")  # DAG defaults name callbacks: a Bash task runs them too
        Pod("p", image="busybox", on_success_callback=_noop)
        Empty("e")  # an Empty task runs none
        with TaskGroup("g", on_failure_callback=_noop):

            @task
            def h() -> None:
                pass

            h()
    data = dag.serialize("cb.py")
    assert data["callbacks"] == ["on_failure_callback"]
    assert data["tasks"]["f"]["callbacks"] == ["on_success_callback", "on_retry_callback"]
    assert data["tasks"]["b"]["callbacks"] == ["on_retry_callback"]
    assert data["tasks"]["p"]["callbacks"] == ["on_success_callback", "on_retry_callback"]
    assert "callbacks" not in data["tasks"]["e"]
    assert data["tasks"]["g.h"]["callbacks"] == ["on_failure_callback", "on_retry_callback"]
    assert dag.callbacks["on_failure_callback"] == (_noop, _noop)
    json.dumps(data)  # the callables themselves never reach the serialized DAG


def test_callback_mistakes_are_definition_errors() -> None:
    with pytest.raises(DagDefinitionError, match="on_success_callback must be a callable"):
        DAG("cb_bad", on_success_callback="notify")
    with DAG("cb_bad2"):
        with pytest.raises(DagDefinitionError, match="on_failure_callback must be a callable"):
            task(task_id="f", on_failure_callback=[_noop, 3])(_noop)
        with pytest.raises(DagDefinitionError, match="callback must be a callable"):
            Bash("b", "true", on_failure_callback="notify")


# --- the worker's runner --------------------------------------------------------------------


def _context() -> dict[str, Any]:
    return {"dag_id": "d", "run_id": "r", "task_id": "t", "try_number": 1}


async def test_callbacks_get_the_context_and_failures_are_only_counted() -> None:
    seen: list[Any] = []
    lines: list[str] = []

    def good(context: dict[str, Any]) -> None:
        seen.append((context["state"], get_current_context()["ti"].task_id))

    def bad(context: dict[str, Any]) -> None:
        raise ValueError("nope")

    failed = await callbacks.run_callbacks(
        [bad, good],
        callbacks.callback_context(_context(), "failed", "boom"),
        timeout=5,
        name="on_failure_callback",
        log=lines.append,
    )
    assert failed == 1
    assert seen == [("failed", "t")]  # the second ran although the first raised
    assert "on_failure_callback[0] failed" in lines[0] and "ValueError: nope" in lines[0]
    assert lines[1] == "on_failure_callback[1] ran"


async def test_a_hanging_callback_is_left_after_the_timeout() -> None:
    release = threading.Event()
    lines: list[str] = []
    try:
        started = asyncio.get_running_loop().time()
        failed = await callbacks.run_callbacks(
            [lambda _: release.wait(30)],
            _context(),
            timeout=0.2,
            name="on_success_callback",
            log=lines.append,
        )
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        release.set()  # let the abandoned thread end
    assert failed == 1
    assert "did not finish within 0.2s" in lines[0]


# --- the DAG callback child -----------------------------------------------------------------


def test_the_dag_callback_child_calls_every_callable_with_dates(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    (tmp_path / "helper_mod.py").write_text("SUFFIX = '!'\n")
    path = tmp_path / "dag.py"
    path.write_text(
        "import json\n"
        "from helper_mod import SUFFIX\n"  # a top-level module of the DAGs folder
        "from miniflow import DAG, Bash\n"
        "def boom(context):\n"
        "    raise RuntimeError('first fails')\n"
        "def write(context):\n"
        f"    with open({str(out)!r}, 'w') as f:\n"
        "        kind = type(context['logical_date']).__name__\n"
        "        json.dump([context['state'] + SUFFIX, kind], f)\n"
        "with DAG('d', on_failure_callback=[boom, write]):\n"
        "    Bash('t', 'true')\n"
    )
    request = {
        "dags_folder": str(tmp_path),
        "path": str(path),
        "dag_id": "d",
        "callback": "on_failure_callback",
        "context": {"state": "failed", "logical_date": "2026-01-01T00:00:00+00:00"},
    }
    saved = list(sys.path)
    try:
        assert dag_callback.run(request) == 1  # one callable raised
        assert json.loads(out.read_text()) == ["failed!", "datetime"]
        assert dag_callback.run({**request, "dag_id": "gone"}) == 2
    finally:
        sys.path[:] = saved
        sys.modules.pop("helper_mod", None)


def test_the_child_runs_a_bash_tasks_callbacks_with_a_task_context(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    path = tmp_path / "dag.py"
    path.write_text(
        "import json\n"
        "from miniflow import DAG, Bash, get_current_context\n"
        "def boom(context):\n"
        "    raise RuntimeError('first fails')\n"
        "def write(context):\n"
        f"    with open({str(out)!r}, 'w') as f:\n"
        "        ti = get_current_context()['ti']\n"
        "        json.dump([context['state'], context['exception'], context['ds'],\n"
        "                   context['params'], context['bucket'], ti.task_id, ti.try_number,\n"
        "                   context['ti'].map_index], f)\n"
        "with DAG('d', default_args={'on_retry_callback': [boom, write]}):\n"
        "    Bash('t', 'exit 1')\n"
    )
    request = {
        "dags_folder": str(tmp_path),
        "path": str(path),
        "dag_id": "d",
        "task_id": "t",
        "callback": "on_retry_callback",
        "context": {
            "dag_id": "d",
            "run_id": "r1",
            "task_id": "t",
            "try_number": 2,
            "map_index": 3,
            "logical_date": "2026-01-05T00:00:00+00:00",
            "data_interval_start": "2026-01-04T00:00:00+00:00",
            "data_interval_end": "2026-01-05T00:00:00+00:00",
            "params": {"n": 1},
            "run_type": "manual",
            "conf": {},
            "user_macros": {"bucket": "s3://b"},
            "state": "up_for_retry",
            "exception": "task failed: exit code 1",
        },
    }
    saved = list(sys.path)
    try:
        assert dag_callback.run(request) == 1  # one callable raised, the other still ran
        assert json.loads(out.read_text()) == [
            "up_for_retry", "task failed: exit code 1", "2026-01-05", {"n": 1}, "s3://b",
            "t", 2, 3,
        ]  # fmt: skip
        assert dag_callback.run({**request, "task_id": "gone"}) == 2
    finally:
        sys.path[:] = saved


# --- LatestOnly -----------------------------------------------------------------------------


def _daily() -> DAG:
    with DAG("lo", schedule="@daily", start_date=datetime(2026, 1, 1)) as dag:
        LatestOnly("latest_only") >> Bash("after", "true")
    return dag


def _run(run_type: str, start: datetime, end: datetime) -> dict[str, Any]:
    return {"run_type": run_type, "data_interval_start": start, "data_interval_end": end}


D = datetime


@pytest.mark.parametrize(
    ("context", "now", "latest"),
    [
        # the interval that ended most recently is the latest
        (_run("scheduled", D(2026, 3, 1, tzinfo=UTC), D(2026, 3, 2, tzinfo=UTC)),
         D(2026, 3, 2, 5, tzinfo=UTC), True),
        # a catch-up run of an older interval is not
        (_run("scheduled", D(2026, 2, 1, tzinfo=UTC), D(2026, 2, 2, tzinfo=UTC)),
         D(2026, 3, 2, 5, tzinfo=UTC), False),
        # exactly one interval late: the next one has ended
        (_run("scheduled", D(2026, 3, 1, tzinfo=UTC), D(2026, 3, 2, tzinfo=UTC)),
         D(2026, 3, 3, tzinfo=UTC), False),
        # manual and test runs never skip (Airflow: external triggers)
        (_run("manual", D(2026, 2, 1, tzinfo=UTC), D(2026, 2, 2, tzinfo=UTC)),
         D(2026, 3, 2, tzinfo=UTC), True),
        (_run("test", D(2026, 2, 1, tzinfo=UTC), D(2026, 2, 2, tzinfo=UTC)),
         D(2026, 3, 2, tzinfo=UTC), True),
    ],
)  # fmt: skip
def test_latest_only_decision(context: dict[str, Any], now: datetime, latest: bool) -> None:
    assert is_latest(_daily(), context, now) is latest


def test_latest_only_is_a_short_circuit_of_its_direct_downstream() -> None:
    data = _daily().serialize("lo.py")["tasks"]["latest_only"]
    assert data["kind"] == "python"
    assert data["python_mode"] == "short_circuit"
    assert data["ignore_downstream_trigger_rules"] is False
