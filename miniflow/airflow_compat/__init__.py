"""Run Airflow DAG files unmodified: Airflow's names mapped onto miniflow's own features.

`activate()` (see `finder`) makes `import airflow...` resolve to this layer in the
process that calls it: the parse child and the worker, for files that mention
"airflow" (`mentions_airflow`). The layer builds ordinary miniflow DAGs and tasks;
it has no scheduler, executor or storage of its own.
"""

from __future__ import annotations

from pathlib import Path

from miniflow.airflow_compat.finder import activate, deactivate


def mentions_airflow(path: Path) -> bool:
    """Airflow's own discovery rule: the file's bytes mention "airflow" and "dag"."""
    try:
        content = Path(path).read_bytes().lower()
    except OSError:
        return False
    return b"airflow" in content and b"dag" in content


__all__ = ["activate", "deactivate", "mentions_airflow"]
