"""A DAG file's source for the code view: read (never imported) from MINIFLOW_DAGS_FOLDER.

The file is named by the DAG's stored `fileloc`, relative to the DAGs folder; a
path that would leave that folder is refused. A server without the folder (a
web server in its own pod, say) says so instead.
"""

from __future__ import annotations

from pathlib import Path

from miniflow.errors import NotFound

MAX_BYTES = 1_000_000


def read(dags_folder: Path, fileloc: str) -> str:
    root = dags_folder.resolve()
    path = (root / fileloc).resolve()
    if not path.is_relative_to(root):
        raise NotFound(f"{fileloc} is not inside the DAGs folder")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError:
        raise NotFound(
            f"{fileloc} cannot be read from this server's DAGs folder (MINIFLOW_DAGS_FOLDER)"
        ) from None
    text = data[:MAX_BYTES].decode("utf-8", errors="replace")
    return text + ("\n… (cut at 1 MB)" if len(data) > MAX_BYTES else "")
