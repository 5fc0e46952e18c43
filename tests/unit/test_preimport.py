"""`miniflow_worker.preimport`: DAG files imported once by the forkserver.

Each case runs in a fresh interpreter, as the forkserver would (the module
redirects fds, arms SIGALRM and freezes the collector while importing).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

DAG = """
from miniflow.authoring.dag import DAG
from miniflow.authoring.taskflow import task

@task
def t():
    return 1

with DAG("d"):
    t()
"""


def run(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    code = "from miniflow_worker import preimport\nfrom pathlib import Path\n"
    code += textwrap.dedent(script)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_a_preimported_file_serves_its_version_only(tmp_path: Path) -> None:
    (tmp_path / "d.py").write_text(DAG)
    done = run(
        """
        path = Path("d.py")
        preimport.preimport(str(path), {"A": "1"})
        dags = preimport.cached(path)
        print("cached", [d.dag_id for d in dags])
        with open(path, "a") as f:
            f.write("# changed\\n")
        print("after change", preimport.cached(path))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["cached ['d']", "after change None"]


def test_the_import_sees_the_try_env_prints_nothing_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "d.py").write_text(
        "import os, signal, sys\nprint('noise'); print('noise', file=sys.stderr)\n"
        "SEEN = os.environ.get('FROM_TRY')\n"
        "signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.chdir('/')\n" + DAG
    )
    done = run(
        """
        import os, signal, sys
        handler = lambda *_: None
        signal.signal(signal.SIGCHLD, handler)
        path = Path("d.py").resolve()
        preimport.preimport(str(path), {"FROM_TRY": "yes"})
        module = sys.modules[preimport.cached(path)[0].tasks["t"].function.__module__]
        print("seen", module.SEEN, "env restored", "FROM_TRY" not in os.environ)
        print("handler kept", signal.getsignal(signal.SIGCHLD) is handler, os.getcwd() != "/")
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "seen yes env restored True\nhandler kept True True\n"
    assert "noise" not in done.stderr


def test_failing_slow_and_airflow_files_are_left_to_the_try(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("raise SystemExit('no')\n")
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(30)\n" + DAG)
    (tmp_path / "af.py").write_text("# an airflow dag\n" + DAG)
    done = run(
        """
        import time
        preimport.IMPORT_TIMEOUT = 0.3
        for name in ("boom.py", "slow.py", "af.py"):
            started = time.monotonic()
            preimport.preimport(name, {})
            print(name, preimport.cached(Path(name)), time.monotonic() - started < 5)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "boom.py None True",
        "slow.py None True",
        "af.py None True",
    ]


def test_a_file_that_starts_a_thread_stops_the_preimports(tmp_path: Path) -> None:
    (tmp_path / "threads.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n" + DAG
    )
    (tmp_path / "d.py").write_text(DAG)
    done = run(
        """
        preimport.preimport("threads.py", {})
        preimport.preimport("d.py", {})
        print(preimport.cached(Path("d.py")))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "None\n"
    assert "started a thread when imported" in done.stderr


def test_an_earlier_version_of_a_file_is_freed_when_the_next_is_imported(tmp_path: Path) -> None:
    # The forkserver freezes what it holds (its children share it); the module of a
    # version replaced by an edit must not stay frozen, or a long-lived scheduler whose DAG
    # files change keeps every version.
    (tmp_path / "d.py").write_text("class Marker:\n    pass\n" + DAG)
    done = run(
        """
        import gc, sys, weakref
        path = Path("d.py").resolve()
        preimport.preimport(str(path), {})
        module = sys.modules[preimport.cached(path)[0].tasks["t"].function.__module__]
        first = weakref.ref(module.Marker)
        del module
        with open(path, "a") as f:
            f.write("# changed\\n")
        preimport.preimport(str(path), {})
        print("new version cached", preimport.cached(path) is not None)
        print("first version freed", first() is None)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["new version cached True", "first version freed True"]
