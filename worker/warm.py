"""Everything a worker run may import, imported now: a preload for warm forking parents.

The local launcher forks Python attempts from a forkserver that preloads
modules (`set_forkserver_preload`). Preloading `miniflow_worker.runner`
covers SQLAlchemy and the store; preloading this module as well also covers
what `runner` imports lazily to keep a cold start small: both database
drivers and their SQLAlchemy dialects, jinja2 (templated fields) and the DAG
loader (Python tasks). A cold `miniflow-worker` never imports this module.
"""

from __future__ import annotations

import importlib

PRELOAD = (
    "miniflow_worker.runner",
    "miniflow.loader",
    "miniflow.templates",
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
importlib.import_module("miniflow.templates").compile_template("{{ ds }}")
