"""Everything a worker run may import, imported now: a preload for warm forking parents.

The local launcher forks Python attempts from a forkserver that preloads
modules (`miniflow.launchers.local_fork`). Preloading `miniflow_worker.runner`
covers SQLAlchemy and the store; preloading this module as well also covers
what `runner` imports lazily to keep a cold start small: both database
drivers and their SQLAlchemy dialects, jinja2 (templated fields) and the DAG
loader (Python tasks). A cold `miniflow-worker` never imports this module.
"""

from __future__ import annotations

import importlib

PRELOAD = (
    "miniflow_worker.runner",
    "miniflow_worker.sensing",
    "miniflow.authoring.loader",
    "miniflow.authoring.templates",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "asyncpg",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "aiosqlite",
    "sqlite3",
)

for _name in PRELOAD:
    try:
        importlib.import_module(_name)
    except ImportError:  # a slim image may ship one driver only
        pass

# Build (and cache) the jinja2 environment: the first templated field then costs nothing.
importlib.import_module("miniflow.authoring.templates").compile_template("{{ ds }}")


def _rehearse() -> None:
    """Run one worker's statements against a throw-away in-memory database.

    SQLAlchemy builds much of its per-statement machinery lazily (annotated
    classes, memoized attributes, compiler dispatch). Doing that once here, in
    the forking parent, means every forked worker inherits it instead of
    paying for it again: a measured ~40% of a forked worker's CPU.
    """
    import asyncio
    from datetime import UTC, datetime

    from miniflow.store import engine as store_engine
    from miniflow.store import runs, task_instances
    from miniflow.store.models import Base, Dag

    async def rehearse() -> None:
        engine = store_engine.create_engine("sqlite+aiosqlite://")
        try:
            now = datetime.now(UTC)
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            factory = store_engine.sessionmaker(engine)
            dag = {
                "dag_id": "warm",
                "params": {},
                "tasks": {"t": {"kind": "python", "retries": 0, "priority": 1, "pool": None}},
            }
            async with store_engine.transaction(factory) as session:
                session.add(
                    Dag(
                        dag_id="warm",
                        fileloc="warm.py",
                        serialized=dag,
                        dag_hash="",
                        schedule=None,
                        is_paused=False,
                        is_active=True,
                        has_import_error=False,
                    )
                )
                await runs.create_run(
                    session,
                    dag=dag,  # type: ignore[arg-type]  # only the keys create_run reads
                    run_id="r",
                    run_type="manual",
                    logical_date=now,
                    interval=(now, now),
                    conf={},
                    now=now,
                )
            async with store_engine.transaction(factory) as session:
                claim = await task_instances.worker_claim(session, "warm", "r", "t", 0, now)
                await runs.get_run_with_dag(session, "warm", "r")
                await task_instances.upstream_results(session, "warm", "r", ["t"])
                await task_instances.heartbeat(session, 0, 0, now)
                await task_instances.finish(
                    session,
                    [
                        task_instances.Outcome(
                            claim.id if claim else 0, 0, "success", extra={"result": {"x": 1}}
                        )
                    ],
                    now,
                )
        finally:
            await engine.dispose()

    asyncio.run(rehearse())


try:
    _rehearse()
except Exception:  # warming is an optimisation: never break the forkserver over it
    pass

# Objects that exist now are shared by every forked child; keep the collector from
# touching (and so copying) their pages in each child.
import gc  # noqa: E402

gc.collect()
gc.freeze()
