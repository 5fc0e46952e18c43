"""Fuzzing what users hand to miniflow: a run's conf, MINIFLOW_* settings, DAG definitions.

The property is the same everywhere: whatever the input, the answer is a value
or a `MiniflowError` with a message (one line in the CLI, or an import error
naming the file) -- never another exception, which would be a traceback.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from miniflow import DAG, Bash, Pod
from miniflow.config import Config, load_config
from miniflow.errors import ConfigError, ConfValidationError, DagDefinitionError
from miniflow.parsing import child
from miniflow.scheduler.manual_runs import parse_conf

# Environment variables and command-line arguments cannot hold NUL or lone surrogates.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON_LIKE = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4)
)
PARAMS_DAG: Any = {"dag_id": "d", "params": {"who": "world", "limit": 3, "": None}}


def _plain_json(value: object) -> None:
    """The value can be stored in a JSON column of either database."""
    json.dumps(value, allow_nan=False)


# --- conf of a manual run -----------------------------------------------------------------


@given(TEXT)
@example("[" * 100_000)
@example('{"who": NaN}')
@example('{"who": -Infinity}')
@example('{"who": 1e999}')
@example('{"who": ' + "9" * 5000 + "}")
@example('{"who": "\\ud800"}')
def test_any_conf_text_is_a_dict_or_a_conf_error(raw: str) -> None:
    try:
        conf = parse_conf(raw, PARAMS_DAG)
    except ConfValidationError as exc:
        assert str(exc)
        return
    assert isinstance(conf, dict) and set(conf) <= set(PARAMS_DAG["params"])
    _plain_json(conf)


@given(st.dictionaries(st.sampled_from(["who", "limit", "whom", ""]) | TEXT, JSON_LIKE))
@example({"who": float("nan")})
@example({"limit": float("inf")})
def test_any_json_object_conf_is_accepted_or_names_the_problem(conf: dict[str, Any]) -> None:
    raw = json.dumps(conf)  # NaN and Infinity come out as the non-JSON tokens on purpose
    try:
        parsed = parse_conf(raw, PARAMS_DAG)
    except ConfValidationError as exc:
        unknown = set(conf) - set(PARAMS_DAG["params"])
        non_finite = "NaN" in raw or "Infinity" in raw
        assert unknown or non_finite, exc
        return
    assert parsed == conf
    _plain_json(parsed)


# --- MINIFLOW_* settings --------------------------------------------------------------------

SETTINGS = sorted(name.upper() for name in Config.__dataclass_fields__ if name != "extra")


@given(name=st.sampled_from(SETTINGS), raw=TEXT)
@example(name="HEARTBEAT_INTERVAL", raw="nan")
@example(name="PARSE_TIMEOUT", raw="1e999")
@example(name="PARALLELISM", raw="1e3")
@example(name="DATABASE_URL", raw="postgresql+asyncpg://u:pw@127.0.0.1:abc/x")
@example(name="CONFIG", raw="/")
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_setting_value_loads_or_is_a_config_error(name: str, raw: str, tmp_path: Path) -> None:
    env = {"MINIFLOW_HOME": str(tmp_path), f"MINIFLOW_{name}": raw}
    try:
        config = load_config(env)
    except ConfigError as exc:
        assert f"MINIFLOW_{name}" in str(exc) or name == "CONFIG", exc
        assert "pw" not in str(exc)
        return
    for value in (config.parse_timeout, config.heartbeat_interval, config.zombie_threshold):
        assert math.isfinite(value) and value > 0


# --- DAG definitions ------------------------------------------------------------------------

CRON_FIELDS = st.sampled_from(
    ["*", "0", "5", "59", "60", "99", "*/5", "*/0", "1-5", "5-1", "1,2", "L", "?", "#", "MON",
     "0-0/0", "-1", "", "2#1", "W"]
)  # fmt: skip
SCHEDULES = (
    st.none()
    | st.sampled_from(["@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@nope"])
    | st.lists(CRON_FIELDS, min_size=4, max_size=6).map(" ".join)
    | TEXT
)
IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,70}", fullmatch=True) | TEXT
DURATIONS = (
    st.none() | st.integers() | st.floats() | st.timedeltas() | st.just(timedelta(days=10**8))
)
DATES = st.none() | st.datetimes() | st.dates() | TEXT
TIMEZONES = st.sampled_from(["UTC", "Europe/Paris", "America", "America/", "../etc", ""]) | TEXT
SETTING_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "retries": st.integers() | TEXT,
        "retry_delay": DURATIONS,
        "timeout": DURATIONS,
        "max_retry_delay": DURATIONS,
        "priority": st.integers() | st.floats(),
        "pool": st.none() | TEXT,
        "trigger_rule": st.sampled_from(["all_done", "one_success"]) | TEXT,
        "env": st.dictionaries(TEXT, TEXT | st.integers(), max_size=3),
        "resources": JSON_LIKE,
        "labels": st.dictionaries(TEXT, TEXT, max_size=3),
        "schedule_interval": TEXT,
        "bash_command": TEXT,
    },
)


def _define(kwargs: dict[str, Any], task_id: str, command: Any, settings_: dict[str, Any]) -> DAG:
    with DAG(**kwargs) as dag:
        first = Bash(task_id, command, **settings_)
        first >> Pod("second", image="busybox:1.36", command=["sh", "-c", command])
    return dag


@given(
    dag_id=IDS,
    task_id=IDS,
    schedule=SCHEDULES,
    start=DATES,
    end=DATES,
    timezone=TIMEZONES,
    params=st.dictionaries(TEXT, JSON_LIKE, max_size=3) | JSON_LIKE,
    command=TEXT | st.none() | st.integers(),
    task_settings=SETTING_VALUES,
)
@settings(max_examples=300, deadline=None)
def test_any_dag_definition_serializes_or_is_a_definition_error(
    dag_id: Any,
    task_id: Any,
    schedule: Any,
    start: Any,
    end: Any,
    timezone: Any,
    params: Any,
    command: Any,
    task_settings: dict[str, Any],
) -> None:
    kwargs = {
        "dag_id": dag_id,
        "schedule": schedule,
        "start_date": start,
        "end_date": end,
        "timezone": timezone,
        "params": params,
    }
    try:
        dag = _define(kwargs, task_id, command, task_settings)
        serialized = dag.serialize("fuzz.py")
    except DagDefinitionError as exc:
        assert exc.bare_message
        return
    _plain_json(serialized)


# Values written into a file with repr(): floats must be finite to read back as Python.
FINITE = st.floats(allow_nan=False, allow_infinity=False)
LITERALS = st.recursive(
    st.none() | st.booleans() | st.integers() | FINITE | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
)


@given(
    schedule=SCHEDULES,
    timezone=TIMEZONES,
    retries=st.integers() | FINITE,
    params=st.dictionaries(TEXT, LITERALS, max_size=3),
)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_dag_file_parses_to_json_or_to_an_import_error_naming_the_problem(
    schedule: Any, timezone: Any, retries: Any, params: Any, tmp_path: Path
) -> None:
    """The parse boundary itself: the child's answer is plain JSON either way, and a
    definition mistake is reported as a `DagDefinitionError`, not a crash inside miniflow."""
    path = tmp_path / "fuzzed.py"
    path.write_text(
        "from datetime import datetime\n"
        "from miniflow import DAG, Bash\n"
        f"with DAG('fuzzed', schedule={schedule!r}, timezone={timezone!r}, params={params!r},\n"
        f"         start_date=datetime(2026, 1, 1), retries={retries!r}):\n"
        "    Bash('t', 'echo {{ params }}')\n"
    )
    result = child.parse_file(tmp_path, path)
    json.dumps(result, allow_nan=False)
    if "error" in result:
        last = result["error"].strip().splitlines()[-1]
        assert last.startswith("miniflow.errors.DagDefinitionError: "), result["error"]
        assert "fuzzed.py:3: " in last
    else:
        (dag,) = result["dags"]
        assert dag["dag_id"] == "fuzzed"


@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "1e999", "NaN"])
@pytest.mark.parametrize(
    "name", ["HEARTBEAT_INTERVAL", "PARSE_TIMEOUT", "POD_KEEP_FAILED_FOR", "ZOMBIE_THRESHOLD"]
)
def test_non_finite_numbers_are_rejected(name: str, raw: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"MINIFLOW_{name} must be a finite number"):
        load_config({"MINIFLOW_HOME": str(tmp_path), f"MINIFLOW_{name}": raw})
