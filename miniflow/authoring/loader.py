"""Execute a DAG file and collect the DAGs it defines.

Used by the parser (in an isolated subprocess) and by the worker (to find the
task it must run). A DAG file is imported as a fresh module under a stable,
unique name (`miniflow_dag_<hash of the path>`), so two files both called
`etl.py` never collide and functions defined in the file have an importable
module. The file's folder goes on `sys.path` so sibling modules import.

Exceptions raised by user code propagate unchanged: formatting them (and
timing the import out) is the caller's job, not this module's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

from miniflow.authoring import dag as dag_mod
from miniflow.authoring.dag import DAG
from miniflow.errors import DagDefinitionError


@contextlib.contextmanager
def capture_dags() -> Iterator[list[DAG]]:
    """Collect every DAG constructed inside the block, in construction order."""
    with dag_mod.capture() as found:
        yield found


def module_name_for(path: Path) -> str:
    """The module name a DAG file is imported under: stable for a given absolute path."""
    digest = hashlib.sha1(str(path.resolve()).encode(), usedforsecurity=False).hexdigest()
    return f"miniflow_dag_{digest[:16]}"


def import_dag_file(path: Path, module_name: str | None = None) -> list[DAG]:
    """Import the DAG file at `path` as a fresh module; return the DAGs it defines.

    The DAGs are those constructed while the file was executing, in order,
    each once. Raises `DagDefinitionError` if two of them share a dag_id;
    anything the user code raises propagates unchanged.
    """
    path = Path(path).resolve()
    name = module_name or module_name_for(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DagDefinitionError("not a Python file", filename=str(path))
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing: pickle and dataclasses look it up
    try:
        with capture_dags() as found:
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    dags: list[DAG] = []
    by_id: dict[str, DAG] = {}
    for dag in found:
        if any(dag is seen for seen in dags):
            continue
        if dag.dag_id in by_id:
            first = by_id[dag.dag_id]
            raise DagDefinitionError(
                f"duplicate dag_id {dag.dag_id!r} (first defined at line {first.lineno})",
                filename=dag.filename or str(path),
                lineno=dag.lineno,
            )
        by_id[dag.dag_id] = dag
        dags.append(dag)
    return dags
