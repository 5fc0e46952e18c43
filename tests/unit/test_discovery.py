"""Unit tests for miniflow.parsing.discovery: safe mode, .miniflowignore, hidden dirs."""

from __future__ import annotations

from pathlib import Path

from miniflow.parsing.discovery import find_dag_files

DAG_TEXT = "from miniflow import DAG\nwith DAG('x'):\n    pass\n"


def write(path: Path, text: str = DAG_TEXT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def rel(folder: Path, paths: list[Path]) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in paths]


def test_recursive_and_sorted(tmp_path: Path) -> None:
    write(tmp_path / "b.py")
    write(tmp_path / "a.py")
    write(tmp_path / "sub" / "deeper" / "c.py")
    write(tmp_path / "notes.txt")
    assert rel(tmp_path, find_dag_files(tmp_path)) == ["a.py", "b.py", "sub/deeper/c.py"]


def test_safe_mode_needs_both_words_case_insensitive(tmp_path: Path) -> None:
    write(tmp_path / "helper.py", "def helper():\n    return 1\n")
    write(tmp_path / "only_dag.py", "dag = 1\n")
    write(tmp_path / "only_miniflow.py", "import miniflow\n")
    write(tmp_path / "upper.py", "import MINIFLOW\nMy_Dag = 1\n")
    assert rel(tmp_path, find_dag_files(tmp_path)) == ["upper.py"]


def test_skips_pycache_and_hidden(tmp_path: Path) -> None:
    write(tmp_path / "__pycache__" / "a.py")
    write(tmp_path / ".git" / "b.py")
    write(tmp_path / "sub" / ".hidden" / "c.py")
    write(tmp_path / ".d.py")
    write(tmp_path / "ok.py")
    assert rel(tmp_path, find_dag_files(tmp_path)) == ["ok.py"]


def test_miniflowignore(tmp_path: Path) -> None:
    write(tmp_path / ".miniflowignore", "scratch/\n*_test.py\n# comment\n!keep_test.py\n")
    write(tmp_path / "scratch" / "a.py")
    write(tmp_path / "x_test.py")
    write(tmp_path / "keep_test.py")
    write(tmp_path / "sub" / "y_test.py")
    write(tmp_path / "sub" / "z.py")
    assert rel(tmp_path, find_dag_files(tmp_path)) == ["keep_test.py", "sub/z.py"]


def test_nested_miniflowignore_applies_to_its_folder_only(tmp_path: Path) -> None:
    write(tmp_path / "team" / ".miniflowignore", "/old.py\nlegacy/\n")
    write(tmp_path / "team" / "old.py")
    write(tmp_path / "team" / "new.py")
    write(tmp_path / "team" / "legacy" / "l.py")
    write(tmp_path / "old.py")  # outside the ignore file's folder: kept
    write(tmp_path / "legacy" / "m.py")
    assert rel(tmp_path, find_dag_files(tmp_path)) == ["legacy/m.py", "old.py", "team/new.py"]


def test_missing_folder(tmp_path: Path) -> None:
    assert find_dag_files(tmp_path / "nope") == []
