"""The code view reads DAG files inside the DAGs folder only."""

from __future__ import annotations

from pathlib import Path

import pytest

from miniflow.errors import NotFound
from miniflow.web import source


def test_reads_a_file_of_the_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.py").write_text("print('hi')\n")
    assert source.read(tmp_path, "sub/d.py") == "print('hi')\n"


@pytest.mark.parametrize("fileloc", ["../secret.txt", "/etc/passwd", "sub/../../secret.txt"])
def test_refuses_paths_outside_the_folder(tmp_path: Path, fileloc: str) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (tmp_path / "secret.txt").write_text("no")
    with pytest.raises(NotFound, match="not inside the DAGs folder"):
        source.read(dags, fileloc)


def test_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="MINIFLOW_DAGS_FOLDER"):
        source.read(tmp_path, "gone.py")
