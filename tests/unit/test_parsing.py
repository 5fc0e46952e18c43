"""Tests for miniflow.parsing: isolated DAG-file processes and incremental scans.

Real forked processes on real files in tmp_path: nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from miniflow.parsing import child, processor
from miniflow.parsing.processor import FileResult, parse_files
from miniflow.parsing.scanner import DagFolderScanner


def dag_file(dag_ids: list[str] | str, extra: str = "", tasks: int = 2) -> str:
    ids = [dag_ids] if isinstance(dag_ids, str) else dag_ids
    body = [
        "from miniflow import DAG, Bash",
        textwrap.dedent(extra),
    ]
    for dag_id in ids:
        body.append(f"with DAG({dag_id!r}, schedule='@daily'):")
        body.extend(f"    Bash('t{i}', 'echo {i}')" for i in range(tasks))
    return "\n".join(body) + "\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def alive(pid: int) -> bool:
    """True if `pid` runs (a zombie left for init to reap counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text := _read(path).strip():
            return text
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


async def parse_one(folder: Path, path: Path, timeout: float = 30.0) -> FileResult:
    [result] = await parse_files(folder, [path], timeout=timeout)
    return result


# -- the child, in process -------------------------------------------------------------


def test_child_parse_file_in_process(tmp_path: Path) -> None:
    path = write(tmp_path, "sub/good.py", dag_file("good"))
    result = child.parse_file(tmp_path, path)
    [dag] = result["dags"]
    assert dag["dag_id"] == "good"
    assert dag["fileloc"] == "sub/good.py"


# -- isolated processes ----------------------------------------------------------------


async def test_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, "good.py", dag_file(["a", "b"], tasks=3))
    result = await parse_one(tmp_path, path)
    assert result.error is None
    assert [d["dag_id"] for d in result.dags] == ["a", "b"]
    assert list(result.dags[0]["tasks"]) == ["t0", "t1", "t2"]
    assert result.fileloc == "good.py"
    st = path.stat()
    assert (result.mtime_ns, result.size) == (st.st_mtime_ns, st.st_size)
    assert result.sha256 == processor.fingerprint(path).sha256
    assert result.duration > 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from miniflow import DAG\nwith DAG('x'\n", "SyntaxError"),
        (
            "import miniflow\nimport no_such_module_xyz  # dag\n",
            "No module named 'no_such_module_xyz'",
        ),
        ("import miniflow  # dag\nraise RuntimeError('boom in user code')\n", "boom in user code"),
        ("import sys, miniflow  # dag\nsys.exit(4)\n", "called sys.exit(4)"),
        ("import sys, miniflow  # dag\nsys.exit()\n", "called sys.exit(None)"),
        ("import miniflow  # dag\nraise KeyboardInterrupt\n", "KeyboardInterrupt"),
        ("from miniflow import DAG\nDAG('bad id!')\n", "DagDefinitionError"),
    ],
)
async def test_import_errors_carry_the_traceback(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "broken.py", text)
    result = await parse_one(tmp_path, path)
    assert result.dags == []
    assert result.error is not None
    assert expected in result.error
    assert "Traceback" in result.error or "SyntaxError" in result.error


async def test_os_exit_names_exit_code(tmp_path: Path) -> None:
    path = write(tmp_path, "exits.py", "import os, miniflow  # dag\nos._exit(3)\n")
    result = await parse_one(tmp_path, path)
    assert result.error is not None
    assert "exited with code 3" in result.error


async def test_crash_by_signal_is_named(tmp_path: Path) -> None:
    text = "import os, signal, miniflow  # dag\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    result = await parse_one(tmp_path, write(tmp_path, "segv.py", text))
    assert result.error is not None
    assert "SIGSEGV" in result.error


async def test_infinite_loop_times_out_and_process_group_is_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids.txt"
    text = f"""
        import os, subprocess, miniflow  # dag
        sleeper = subprocess.Popen(["sleep", "300"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{sleeper.pid}}")
        while True:
            pass
    """
    path = write(tmp_path, "loop.py", textwrap.dedent(text))
    started = time.monotonic()
    result = await parse_one(tmp_path, path, timeout=1.0)
    assert time.monotonic() - started < 10
    assert result.error is not None
    assert "timed out after 1s" in result.error
    child_pid, sleeper_pid = map(int, pids.read_text().split())
    for _ in range(100):
        if not alive(child_pid) and not alive(sleeper_pid):
            break
        await asyncio.sleep(0.02)
    assert not alive(child_pid)
    assert not alive(sleeper_pid)


async def test_a_slow_import_is_named_while_it_is_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slow = write(tmp_path, "slow.py", "import time, miniflow  # dag\ntime.sleep(300)\n")
    good = write(tmp_path, "good.py", dag_file("good"))
    with caplog.at_level("WARNING", logger=processor.__name__):
        fine = await processor.parse_file(tmp_path, good, timeout=30, slow_after=5)
        assert fine.error is None and not caplog.records  # quick: nothing said
        result = await processor.parse_file(tmp_path, slow, timeout=1.5, slow_after=0.2)
    assert result.error is not None and "timed out after 1.5s" in result.error
    waiting, timed_out = (r.getMessage() for r in caplog.records)
    assert waiting == (
        f"still importing DAG file {slow} after 0.2s (it is given 1.5s before it is killed)"
    )
    assert "timed out" in timed_out


async def test_cancellation_kills_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid.txt"
    text = (
        f"import os, time, miniflow  # dag\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
    )
    text += "time.sleep(300)\n"
    path = write(tmp_path, "sleeps.py", text)
    task = asyncio.ensure_future(parse_files(tmp_path, [path], timeout=300))
    pid = int(await wait_for_file(pid_file))
    assert alive(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(pid)


async def test_large_output_does_not_deadlock(tmp_path: Path) -> None:
    text = "from miniflow import DAG, Bash\n"
    text += "with DAG('big', params={'blob': 'x' * 3_000_000}):\n"
    text += "    for i in range(2000):\n        Bash(f't{i}', 'echo ' + 'y' * 200)\n"
    result = await parse_one(tmp_path, write(tmp_path, "big.py", text), timeout=60)
    assert result.error is None, result.error
    [dag] = result.dags
    assert len(dag["params"]["blob"]) == 3_000_000
    assert len(dag["tasks"]) == 2000


async def test_good_file_next_to_broken_ones(tmp_path: Path) -> None:
    files = [
        write(tmp_path, "a_syntax.py", "import miniflow  # dag\ndef (:\n"),
        write(tmp_path, "b_good.py", dag_file("good")),
        write(tmp_path, "c_exit.py", "import os, miniflow  # dag\nos._exit(1)\n"),
        write(tmp_path, "d_loop.py", "import miniflow  # dag\nwhile True:\n    pass\n"),
    ]
    results = await parse_files(tmp_path, files, timeout=1.0, concurrency=4)
    assert [r.fileloc for r in results] == ["a_syntax.py", "b_good.py", "c_exit.py", "d_loop.py"]
    assert [r.error is None for r in results] == [False, True, False, False]
    assert results[1].dags[0]["dag_id"] == "good"


async def test_no_module_leaks_between_files(tmp_path: Path) -> None:
    # Both files import a sibling called `common`, from different folders: each
    # process must see its own.
    write(tmp_path / "one", "common.py", "VALUE = 'one'\n")
    write(tmp_path / "two", "common.py", "VALUE = 'two'\n")
    text = "from miniflow import DAG\nimport common\nDAG('d_' + common.VALUE)\n"
    files = [write(tmp_path / "one", "dag.py", text), write(tmp_path / "two", "dag.py", text)]
    results = await parse_files(tmp_path, files, concurrency=1)
    assert [r.dags[0]["dag_id"] for r in results] == ["d_one", "d_two"]


async def test_sibling_and_top_level_imports(tmp_path: Path) -> None:
    write(tmp_path, "shared.py", "NAME = 'from_top'\n")
    write(tmp_path / "team", "helpers.py", "SUFFIX = 'sib'\n")
    text = "from miniflow import DAG\nimport shared\nfrom helpers import SUFFIX\n"
    text += "DAG(shared.NAME + '_' + SUFFIX)\n"
    result = await parse_one(tmp_path, write(tmp_path / "team", "uses.py", text))
    assert result.error is None, result.error
    assert result.dags[0]["dag_id"] == "from_top_sib"
    assert result.fileloc == "team/uses.py"


async def test_missing_file(tmp_path: Path) -> None:
    result = await parse_one(tmp_path, tmp_path / "gone.py")
    assert result.error is not None
    assert "cannot read" in result.error


# -- the scanner -------------------------------------------------------------------------


async def test_scan_parses_only_new_or_changed(tmp_path: Path) -> None:
    for i in range(5):
        write(tmp_path, f"d{i}.py", dag_file(f"d{i}"))
    scanner = DagFolderScanner(tmp_path)
    first = await scanner.scan()
    assert [r.fileloc for r in first.results] == [f"d{i}.py" for i in range(5)]
    assert all(r.error is None for r in first.results)

    again = await scanner.scan()
    assert again.results == []
    assert again.unchanged == 5
    assert again.removed == []

    # touched but identical: not re-parsed, known state follows the new mtime
    path = tmp_path / "d1.py"
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    touched = await scanner.scan()
    assert touched.results == []
    assert scanner.known["d1.py"][0] == path.stat().st_mtime_ns

    # changed: re-parsed
    write(tmp_path, "d2.py", dag_file("d2", tasks=5))
    changed = await scanner.scan()
    assert [r.fileloc for r in changed.results] == ["d2.py"]
    assert len(changed.results[0].dags[0]["tasks"]) == 5

    # removed: reported, and forgotten
    (tmp_path / "d3.py").unlink()
    gone = await scanner.scan()
    assert gone.results == []
    assert gone.removed == ["d3.py"]
    assert "d3.py" not in scanner.known
    assert "d3" not in scanner.owners


async def test_scan_respects_ignore_and_safe_mode(tmp_path: Path) -> None:
    write(tmp_path, ".miniflowignore", "skip_me.py\n")
    write(tmp_path, "skip_me.py", dag_file("skipped"))
    write(tmp_path, "helper.py", "raise SystemExit('never imported')\n")
    write(tmp_path, "ok.py", dag_file("ok"))
    result = await DagFolderScanner(tmp_path).scan()
    assert [r.fileloc for r in result.results] == ["ok.py"]


async def test_duplicate_dag_id_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.py", dag_file("shared"))
    scanner = DagFolderScanner(tmp_path)
    await scanner.scan()
    write(tmp_path, "b.py", dag_file(["shared", "only_b"]))
    result = await scanner.scan()
    [b] = result.results
    assert b.fileloc == "b.py"
    assert b.error == "DAG 'shared' is already defined in a.py"
    assert [d["dag_id"] for d in b.dags] == ["only_b"]
    assert scanner.owners == {"shared": "a.py", "only_b": "b.py"}

    # a.py stops defining it: b.py is re-parsed in the same scan and takes it over
    write(tmp_path, "a.py", dag_file("renamed"))
    result = await scanner.scan()
    by_loc = {r.fileloc: r for r in result.results}
    assert set(by_loc) == {"a.py", "b.py"}
    assert by_loc["b.py"].error is None
    assert [d["dag_id"] for d in by_loc["b.py"].dags] == ["shared", "only_b"]
    assert scanner.owners["shared"] == "b.py"


async def test_duplicate_in_one_cold_scan_first_file_wins(tmp_path: Path) -> None:
    write(tmp_path, "b.py", dag_file("x"))
    write(tmp_path, "a.py", dag_file("x"))
    result = await DagFolderScanner(tmp_path).scan()
    a, b = result.results
    assert a.error is None and [d["dag_id"] for d in a.dags] == ["x"]
    assert b.error == "DAG 'x' is already defined in a.py"


async def test_persisted_owners_win_on_restart(tmp_path: Path) -> None:
    write(tmp_path, "a.py", dag_file("x"))
    write(tmp_path, "b.py", dag_file("x"))
    result = await DagFolderScanner(tmp_path, owners={"x": "b.py"}).scan()
    a, b = result.results
    assert a.error == "DAG 'x' is already defined in b.py"
    assert b.error is None


async def test_broken_owner_keeps_its_dag_id_and_removal_releases_it(tmp_path: Path) -> None:
    write(tmp_path, "a.py", dag_file("x"))
    scanner = DagFolderScanner(tmp_path)
    await scanner.scan()
    write(tmp_path, "a.py", dag_file("x") + "raise ValueError('typo')\n")
    write(tmp_path, "b.py", dag_file("x"))
    result = await scanner.scan()
    a, b = result.results
    assert a.error is not None and "typo" in a.error
    assert b.error == "DAG 'x' is already defined in a.py"
    (tmp_path / "a.py").unlink()
    result = await scanner.scan()
    assert result.removed == ["a.py"]
    [b] = result.results
    assert b.error is None and scanner.owners["x"] == "b.py"


async def test_known_state_can_be_restored(tmp_path: Path) -> None:
    for i in range(3):
        write(tmp_path, f"d{i}.py", dag_file(f"d{i}"))
    first = DagFolderScanner(tmp_path)
    await first.scan()
    second = DagFolderScanner(tmp_path, known=first.known, owners=first.owners)
    result = await second.scan()
    assert result.results == []
    assert result.unchanged == 3


async def test_unchanged_files_are_parsed_again_after_reparse_interval(tmp_path: Path) -> None:
    """What a DAG file imports can change while its own bytes do not."""
    write(tmp_path, "d0.py", dag_file("d0"))
    write(tmp_path, "d1.py", dag_file("d1"))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    scanner = DagFolderScanner(tmp_path, reparse_interval=60)
    assert len((await scanner.scan(now=t0)).results) == 2
    assert (await scanner.scan(now=t0 + timedelta(seconds=59))).results == []
    write(tmp_path, "d1.py", dag_file("d1", tasks=3))  # changed: parsed at once, clock restarts
    changed = await scanner.scan(now=t0 + timedelta(seconds=59))
    assert [r.fileloc for r in changed.results] == ["d1.py"]
    due = await scanner.scan(now=t0 + timedelta(seconds=60))
    assert [r.fileloc for r in due.results] == ["d0.py"]
    assert scanner.parsed_at == {
        "d0.py": t0 + timedelta(seconds=60),
        "d1.py": t0 + timedelta(seconds=59),
    }
    # Without an interval (the CLI's fast path) unchanged files are never parsed again.
    fast = DagFolderScanner(tmp_path, known=scanner.known, owners=scanner.owners)
    assert (await fast.scan(now=t0 + timedelta(days=1))).results == []


async def test_restored_parse_times_decide_after_a_restart(tmp_path: Path) -> None:
    write(tmp_path, "d0.py", dag_file("d0"))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = DagFolderScanner(tmp_path)
    await first.scan(now=t0)
    again = DagFolderScanner(
        tmp_path,
        known=first.known,
        owners=first.owners,
        parsed_at=first.parsed_at,
        reparse_interval=60,
    )
    assert (await again.scan(now=t0 + timedelta(seconds=30))).results == []
    assert len((await again.scan(now=t0 + timedelta(seconds=60))).results) == 1


async def test_forced_scan_parses_the_named_files_or_all(tmp_path: Path) -> None:
    for i in range(3):
        write(tmp_path, f"d{i}.py", dag_file(f"d{i}"))
    scanner = DagFolderScanner(tmp_path)
    await scanner.scan()
    assert [r.fileloc for r in (await scanner.scan(force=["d1.py"])).results] == ["d1.py"]
    assert len((await scanner.scan(force=True)).results) == 3
    assert (await scanner.scan()).results == []
