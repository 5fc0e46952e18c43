"""The code that runs inside the isolated DAG-file processor process.

Why this module exists: user DAG files are arbitrary code (they may hang,
exit, crash the interpreter or leak modules), so each one is imported in its
own short-lived process forked from a warm forkserver that preloaded this
module (and through it `miniflow.authoring.loader`, `miniflow.authoring.dag`,
`miniflow.authoring.tasks`).
The result goes back to the parent as JSON bytes on a pipe:
``{"dags": [SerializedDag, ...]}`` or ``{"error": "<traceback text>"}``.

This module must stay light (no asyncio machinery, no database, no jinja2 at
import time) because it is preloaded, and it must never let a user exception
escape: every BaseException (SystemExit, KeyboardInterrupt included) becomes an
error result.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from miniflow import airflow_compat
from miniflow.authoring import loader


def fileloc_of(dags_folder: Path, path: Path) -> str:
    """The path of a DAG file relative to the DAGs folder, with forward slashes."""
    try:
        return path.resolve().relative_to(dags_folder.resolve()).as_posix()
    except ValueError:
        return Path(os.path.relpath(path.resolve(), dags_folder.resolve())).as_posix()


def _format_error(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    if isinstance(exc, SystemExit):
        return f"DAG file called sys.exit({exc.code!r})\n{text}"
    return text


def _register_lookups() -> None:
    """`Variable.get` at the top of an Airflow DAG file reads miniflow's database (the
    URL is read from the configuration at the first lookup only)."""
    from miniflow.authoring import lookups
    from miniflow.config import load_config
    from miniflow.store.config_values import DatabaseBackend

    lookups.register_backend(DatabaseBackend(lambda: load_config().database_url))


def parse_file(dags_folder: Path, path: Path) -> dict[str, Any]:
    """Import one DAG file and serialize its DAGs; never raises."""
    try:
        folder = str(dags_folder.resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)  # top-level modules of the DAGs folder import
        fileloc = fileloc_of(dags_folder, path)
        if airflow_compat.mentions_airflow(path):
            airflow_compat.activate()  # this child only: `import airflow` gets the layer
            _register_lookups()
        dags = loader.import_dag_file(path)
        serialized = [dag.serialize(fileloc) for dag in dags]
        json.dumps(serialized)  # fail here, with a traceback, if not plain JSON
        return {"dags": serialized}
    except BaseException as exc:
        return {"error": _format_error(exc)}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def main(conn: Connection, dags_folder: str, path: str) -> None:
    """Process entry point: parse `path`, write the JSON result to `conn`, exit.

    Runs in its own process group so the parent can kill anything the DAG file
    started. Exits with os._exit so user atexit hooks or stray non-daemon
    threads cannot keep the process alive after the result is written.
    """
    os.setpgrp()
    code = 0
    try:
        result = parse_file(Path(dags_folder), Path(path))
        try:
            data = json.dumps(result).encode()
        except BaseException as exc:
            data = json.dumps({"error": _format_error(exc)}).encode()
        _write_all(conn.fileno(), data)
    except BaseException:
        code = 70  # could not even report: the parent names the exit code
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)
