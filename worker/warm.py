"""Everything a worker run may import, imported now: a preload for warm forking parents.

The local launcher forks Python attempts from a forkserver that preloads
modules (`miniflow.launchers.local_fork`). Preloading `miniflow_worker.runner`
covers SQLAlchemy and the store; preloading this module as well also covers
what `runner` imports lazily to keep a cold start small: jinja2 (templated
fields) and the DAG loader (Python tasks); and `prefork` (below) the database
driver and SQLAlchemy dialect of the workers' database only, when it makes the
children's engine (the other driver cost the SQLite forkserver 11 % more instructions
to import, asyncpg and its dialect; the PostgreSQL one 2 %). A cold
`miniflow-worker` never imports this module.

`prefork(env)`, which the forkserver calls before each fork, goes further for the
database the children will use: SQLAlchemy caches compiled statements per engine
and initialises a dialect on an engine's first connection, so a child that made its
own engine spent about half its CPU compiling the claim / run / finish statements
and asking the server its version. The forkserver makes that engine once, runs the
worker's statements through it in a transaction it rolls back (keys no row has),
closes its connections, and leaves it in `runner.PREPARED_ENGINES`; each child
opens its own connection on it. The claim stays the child's (`heartbeat_at IS NULL`).
The local launcher has the forkserver call it once at boot with the workers'
environment, so the first fork does not wait for it.

Running those statements also builds what SQLAlchemy builds lazily for any dialect.
When the database cannot be prepared for (unreachable, or a SQLite file that does not
exist yet), `prefork` does that part on a throw-away in-memory database instead
(`_rehearse`), once: the children still inherit it.
"""

from __future__ import annotations

import gc
import importlib
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from miniflow.config import Config

PRELOAD = (
    "miniflow_worker.runner",
    "miniflow_worker.preimport",
    "miniflow_worker.relay",
    "miniflow_worker.sensing",
    "miniflow.authoring.loader",
    "miniflow.authoring.templates",
)

for _name in PRELOAD:
    try:
        importlib.import_module(_name)
    except ImportError:  # a broken install: the child that needs the module reports it
        pass

# Build (and cache) the jinja2 environment: the first templated field then costs nothing.
importlib.import_module("miniflow.authoring.templates").compile_template("{{ ds }}")


_rehearsed = False
"""Whether `_rehearse` ran (it runs at most once per process)."""


def _rehearse() -> None:
    """Run one worker's statements against a throw-away in-memory database.

    SQLAlchemy builds much of its per-statement machinery lazily (annotated
    classes, memoized attributes, compiler dispatch). Doing that once, in the
    forking parent, means every forked worker inherits it instead of paying
    for it again: a measured ~40% of a forked worker's CPU. Preparing the workers'
    own database (`_prepare`) does the same and more; this is the fallback when
    that fails (0.05 to 0.09 s of CPU that a prepared forkserver saves at each start,
    measured).
    """
    global _rehearsed
    if _rehearsed:
        return
    _rehearsed = True
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


# argparse compiles its regular expressions at the first parse; the `re` cache is shared.
importlib.import_module("miniflow_worker.runner").parse_args(
    ["run", "--dag-id", "d", "--run-id", "r", "--task-id", "t", "--try", "1"]
)

PREPARE_TIMEOUT = 3.0
"""Seconds `prefork` may spend on a database (the launch it holds up waits that long)."""

PREPARE_AGAIN_AFTER = 30.0
"""Seconds before a database that could not be prepared for is tried again."""

REHEARSAL_KEY = ("miniflow-warm-rehearsal", "-", "-")
"""dag_id, run_id, task_id of the rehearsal's statements: no task instance has them."""

_tried: dict[str | None, float] = {}
"""`MINIFLOW_DATABASE_URL` as given -> when it was last prepared for (or tried)."""


def prefork(env: Mapping[str, str], dag_file: str | None = None) -> None:
    """Before a fork: have the children's engine ready (see the module docstring), and
    the try's DAG file imported (`miniflow_worker.preimport`).

    Never raises, never waits much more than `PREPARE_TIMEOUT` (plus a DAG file's first
    import): a database that cannot be reached now only means the children make their
    own engine (and report why)."""
    from miniflow_worker import preimport, runner

    if dag_file is not None:
        preimport.preimport(dag_file, env)
    _prepare_config(env)

    given = env.get("MINIFLOW_DATABASE_URL")
    tried = _tried.get(given)
    if tried is not None and (
        given in _prepared_for or time.monotonic() - tried < PREPARE_AGAIN_AFTER
    ):
        return
    _tried[given] = time.monotonic()
    prepared = _prepared_engine(env)
    if prepared is None:
        try:
            _rehearse()
        except Exception:  # warming is an optimisation: never break a fork over it
            pass
    else:
        runner.PREPARED_ENGINES.clear()  # one database at a time: the launcher's
        runner.PREPARED_ENGINES[prepared[0]] = prepared[1]
        _prepared_for.clear()
        _prepared_for.add(given)
    gc.collect()
    gc.freeze()


_prepared_for: set[str | None] = set()

_configs: dict[tuple[tuple[tuple[str, str], ...], tuple[int, int, int] | None], Config] = {}
"""Configurations read, by their environment entries and their config file's (mtime, size,
inode); a handful at most (one per launcher's environment)."""


def _prepare_config(env: Mapping[str, str]) -> None:
    """Read the configuration of the child forked next (`runner.try_config`), once per
    environment and version of the config file: per try it cost the child ~0.9 ms of CPU,
    most of it copying the pages it touched. A configuration that does not load is left
    to the child to report."""
    from miniflow_worker import runner

    from miniflow.config import config_file, config_inputs, load_config

    runner.PREPARED_CONFIG = None
    inputs = config_inputs(env)
    if "MINIFLOW_HOME" not in inputs and "HOME" not in inputs:
        return  # the home folder would come from this process' own HOME or passwd entry
    try:
        path = config_file(inputs)
        file_state = None
        if path is not None:
            stat = path.stat()
            file_state = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        key = (tuple(sorted(inputs.items())), file_state)
        config = _configs.get(key)
        if config is None:
            if len(_configs) >= 8:
                _configs.clear()
            config = _configs[key] = load_config(environ=inputs)
    except Exception:  # a bad setting, a config file gone: the child reports it
        return
    runner.PREPARED_CONFIG = (inputs, config)


def relay(message: bytes) -> bytes:
    """The relay hook (run in the forkserver's relay process): one claim or outcome for a
    child (`miniflow_worker.relay`), on the engine prepared before the relay was forked
    if there is one (its statements are compiled already)."""
    from miniflow_worker import relay as relay_steps
    from miniflow_worker import runner

    answer: bytes = relay_steps.answer(message, runner.worker_engine)
    return answer


def _prepared_engine(env: Mapping[str, str]) -> tuple[str, Any] | None:
    """(URL, the worker's engine for it, prepared) for `env`'s database; None if it
    could not be prepared."""
    import asyncio

    from miniflow_worker import runner

    from miniflow.config import load_config

    try:
        url = load_config(environ=env).database_url
    except Exception:  # the child reports a bad configuration itself
        return None
    engine = runner.new_engine(url)
    database = engine.url.database
    if engine.dialect.name == "sqlite" and not (database and os.path.isfile(database)):
        return None  # connecting would create the file (or a private in-memory database)
    try:
        asyncio.run(_prepare(engine))
    except Exception:
        return None
    return url, engine


async def _prepare(engine: Any) -> None:
    """Compile the worker's statements into `engine`'s cache; leave no connection open."""
    import asyncio
    from datetime import UTC, datetime

    from sqlalchemy.ext.asyncio import AsyncSession

    from miniflow.errors import NotFound
    from miniflow.store import runs, task_instances

    dag_id, run_id, task_id = REHEARSAL_KEY
    now = datetime.now(UTC)
    try:
        async with asyncio.timeout(PREPARE_TIMEOUT):
            async with engine.connect() as conn:
                if engine.dialect.name == "sqlite":
                    # Its transactions take the write lock: wait for it briefly, not a
                    # worker's busy timeout (a thread blocked in SQLite cannot be cancelled).
                    await conn.run_sync(_short_busy_timeout)
                async with AsyncSession(bind=conn) as session:
                    await session.begin()
                    await task_instances.worker_claim(session, dag_id, run_id, task_id, 1, now)
                    try:
                        await runs.get_run_with_dag(session, dag_id, run_id)
                    except NotFound:
                        pass
                    await task_instances.upstream_results(session, dag_id, run_id, [task_id])
                    await task_instances.heartbeat(session, 0, 0, now)
                    await task_instances.finish(
                        session,
                        [
                            task_instances.Outcome(
                                0, 0, "success", ("running",), exit_code=0, extra={"result": None}
                            )
                        ],
                        now,
                    )
                    await session.rollback()
    finally:
        await engine.dispose()


def _short_busy_timeout(conn: Any) -> None:
    cursor = conn.connection.dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(PREPARE_TIMEOUT * 1000)}")
    cursor.close()


# Objects that exist now are shared by every forked child; keep the collector from
# touching (and so copying) their pages in each child.
gc.collect()
gc.freeze()
