"""Manual and test runs: validate the conf against the DAG's params, create a queued run.

The run is created from, and keeps, the DAG's current version (the `dag` row).
A test run (`miniflow dags test`) replaces the earlier test run of the same
logical date instead of failing on its run id.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.authoring.schedule import Timetable
from miniflow.authoring.serialized import SerializedDag, readable
from miniflow.errors import ConfValidationError, PermanentError
from miniflow.store import attempts as store_attempts
from miniflow.store import dags as store_dags
from miniflow.store import instances as store_instances
from miniflow.store import runs as store_runs
from miniflow.store import states
from miniflow.store import task_instances as store_tis


def parse_conf(raw: str | None, dag: SerializedDag) -> dict[str, Any]:
    """JSON object whose keys the DAG declares in `params` (so a typo is an error), and
    whose values (or the defaults) typed params (`Param`) accept."""
    if raw is None or raw.strip() == "":
        check_typed_params({}, dag)  # a required typed param needs a conf
        return {}
    try:
        conf = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        raise ConfValidationError(f"--conf is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfValidationError("--conf is nested too deeply") from None
    if not isinstance(conf, dict):
        raise ConfValidationError(f"--conf must be a JSON object, got {type(conf).__name__}")
    specs: dict[str, Any] = dag.get("param_specs", {})
    declared = set(dag["params"]) | set(specs)
    unknown = sorted(set(conf) - declared)
    if unknown:
        allowed = ", ".join(sorted(declared)) or "none"
        raise ConfValidationError(
            f"DAG {dag['dag_id']!r} has no param(s) {', '.join(map(repr, unknown))} "
            f"(declared params: {allowed})"
        )
    check_typed_params(conf, dag)
    return conf


def check_typed_params(conf: dict[str, Any], dag: SerializedDag) -> None:
    """Validate the run's value of each typed param (the conf's, else the default)
    against its JSON Schema; the error names the key and, if any, its description."""
    specs: dict[str, Any] = dag.get("param_specs", {})
    if not specs:
        return
    from miniflow.authoring.params import value_error  # jsonschema: only for DAGs with typed params

    for key, spec in sorted(specs.items()):
        about = f" ({spec['description']})" if spec.get("description") else ""
        if key in conf:
            value = conf[key]
        elif key in dag["params"]:
            value = dag["params"][key]
        else:
            raise ConfValidationError(
                f"param {key!r}{about} is required: give it in --conf, e.g. "
                f"--conf '{{\"{key}\": ...}}'"
            )
        error = value_error(spec["schema"], value)
        if error is not None:
            raise ConfValidationError(f"param {key!r}{about}: {error}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ConfValidationError(f"--conf is not valid JSON: {text} is out of range")
    return value


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); the database's JSON type refuses them
    raise ConfValidationError(f"--conf is not valid JSON: {name} is not a JSON number")


async def trigger(
    session: AsyncSession,
    dag_id: str,
    *,
    conf_json: str | None,
    now: datetime,
    logical_date: datetime | None = None,
    run_id: str | None = None,
) -> str:
    """Create a queued manual run; returns its run_id."""
    row = await store_dags.get_dag(session, dag_id)
    dag = readable(row.serialized)
    conf = parse_conf(conf_json, dag)
    logical = logical_date or now
    interval = Timetable.from_serialized(dag).manual_interval(logical)
    run_id = run_id or f"manual__{logical.isoformat()}"
    await store_runs.create_run(
        session,
        dag=dag,
        run_id=run_id,
        run_type=states.RUN_TYPE_MANUAL,
        logical_date=logical,
        interval=(interval.start, interval.end),
        conf=conf,
        now=now,
        dag_hash=row.dag_hash,
    )
    return run_id


def dags_test_run_id(logical_date: datetime) -> str:
    return f"test__{logical_date.isoformat()}"


class BusyTestRun(PermanentError):
    """The earlier test run of that date still has a try a live scheduler follows."""


async def trigger_test(
    session: AsyncSession,
    dag_id: str,
    *,
    conf_json: str | None,
    now: datetime,
    logical_date: datetime,
    live_threshold: float,
) -> bool:
    """Create the queued test run of `logical_date`; True if it replaced an earlier one.

    The earlier test run of that date is deleted (with its task instances and
    attempts), and the new run's tries are numbered after its tries: a try's key
    names its log file and its pod, so a try that already ran is never launched
    "again". Refused (`BusyTestRun`) while a live scheduler still follows one of
    its tries; a run left by a `dags test` that died is replaced.
    """
    row = await store_dags.get_dag(session, dag_id)
    dag = readable(row.serialized)
    conf = parse_conf(conf_json, dag)
    run_id = dags_test_run_id(logical_date)
    earlier = await store_runs.find_run(session, dag_id, run_id)
    tries: dict[str, int] = {}
    if earlier is not None:
        if earlier.run_type != states.RUN_TYPE_TEST:
            raise store_runs.RunExists(f"DAG {dag_id!r} already has a run {run_id!r}")
        owners = await store_attempts.open_owners(session, dag_id, run_id)
        live = [
            i.id
            for i in await store_instances.list_all(session)
            if i.id in owners and i.alive(now, live_threshold)
        ]
        if live:
            raise BusyTestRun(
                f"the earlier test run {run_id!r} of DAG {dag_id!r} is still running "
                f"(scheduler {live[0]} follows its tries): wait for it, or test another "
                "--logical-date"
            )
        for ti in await store_tis.list_for_run(session, dag_id, run_id):
            # a mapped task: its instances' tries too (their keys must not come back)
            tries[ti.task_id] = max(tries.get(ti.task_id, 0), ti.try_number)
        await store_runs.delete_run(session, earlier.id)
    interval = Timetable.from_serialized(dag).manual_interval(logical_date)
    await store_runs.create_run(
        session,
        dag=dag,
        run_id=run_id,
        run_type=states.RUN_TYPE_TEST,
        logical_date=logical_date,
        interval=(interval.start, interval.end),
        conf=conf,
        now=now,
        dag_hash=row.dag_hash,
        tries_before=tries,
    )
    return earlier is not None
