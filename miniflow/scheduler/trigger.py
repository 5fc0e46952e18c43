"""Manual runs: validate the conf against the DAG's params, create a queued run.

The run is created from, and keeps, the DAG's current version (the `dag` row).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from miniflow.errors import ConfValidationError
from miniflow.schedule import Timetable
from miniflow.serialized import SerializedDag, readable
from miniflow.store import dags as store_dags
from miniflow.store import runs as store_runs
from miniflow.store import states


def parse_conf(raw: str | None, dag: SerializedDag) -> dict[str, Any]:
    """JSON object whose keys the DAG declares in `params` (so a typo is an error)."""
    if raw is None or raw.strip() == "":
        return {}
    try:
        conf = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        raise ConfValidationError(f"--conf is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfValidationError("--conf is nested too deeply") from None
    if not isinstance(conf, dict):
        raise ConfValidationError(f"--conf must be a JSON object, got {type(conf).__name__}")
    unknown = sorted(set(conf) - set(dag["params"]))
    if unknown:
        allowed = ", ".join(sorted(dag["params"])) or "none"
        raise ConfValidationError(
            f"DAG {dag['dag_id']!r} has no param(s) {', '.join(map(repr, unknown))} "
            f"(declared params: {allowed})"
        )
    return conf


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
