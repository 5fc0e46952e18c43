"""DAG files imported once in the forkserver, for every forked try of their Python tasks.

A Python task's function comes from its DAG file as it is now, so each forked
worker imported that file again: the file's own work (building the DAG, and
whatever libraries it imports: pandas alone is hundreds of milliseconds) paid
per try. Before forking a Python try the forkserver (`warm.prefork`) imports
the try's DAG file once per version of the file, under the try's environment,
and keeps the module and its DAGs; every child forked afterwards inherits them.
A child uses them only if the file's (mtime, size, inode) are still those that
were imported (`cached`), else it imports the file itself, as before.

Not imported in the forkserver: a file that mentions Airflow (the compatibility
layer is switched on per process), one whose import fails, raises or takes
longer than `IMPORT_TIMEOUT` (the child imports it and reports the error in its
own log), and every file after one that started a thread at import (a process
with threads should not fork; the forkserver stops importing and says so once).
`MINIFLOW_DAG_IMPORT_PER_TRY=true` turns this off (the launcher then names no file).
Output of the import goes nowhere: a child that imports the file itself shows it. The
environment, working directory and signal handlers the import changed are put back.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from miniflow.authoring.dag import DAG

IMPORT_TIMEOUT = 10.0
"""Seconds the forkserver gives a DAG file's import (it forks nothing meanwhile)."""

KEPT_SIGNALS = (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)
"""The forkserver's signal handling, put back if a DAG file's import changed it."""

Version = tuple[int, int, int]

_cache: dict[Path, tuple[Version, list[DAG]]] = {}
_tried: dict[Path, Version] = {}
_stopped = False


def version(path: Path) -> Version | None:
    """What tells one version of the file from another: (mtime_ns, size, inode)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def cached(path: Path) -> list[DAG] | None:
    """In a forked child: the DAGs of `path` imported by the forkserver, if the file is
    still the version it imported; None: import it yourself."""
    path = path.resolve()
    found = _cache.get(path)
    if found is None or version(path) != found[0]:
        return None
    return found[1]


class _TooSlow(Exception):
    pass


def _too_slow(_signum: int, _frame: FrameType | None) -> None:
    raise _TooSlow


def preimport(path_name: str, env: Mapping[str, str]) -> None:
    """In the forkserver, before forking a try of a Python task of `path_name`: import
    the file if this version was not tried yet (see the module docstring). Never raises."""
    global _stopped
    path = Path(path_name).resolve()
    current = version(path)
    if _stopped or current is None or _tried.get(path) == current:
        return
    replacing = path in _tried
    _tried[path] = current
    _cache.pop(path, None)
    from miniflow import airflow_compat

    if airflow_compat.mentions_airflow(path):
        return
    threads = threading.active_count()
    dags = _import_quietly(path, env)
    if threading.active_count() > threads:
        _stopped = True
        print(
            f"miniflow forkserver: DAG file {path} started a thread when imported; DAG files "
            "are imported by each forked try from now on",
            file=sys.stderr,
            flush=True,
        )
    if dags is not None and version(path) == current:
        _cache[path] = (current, dags)
    if replacing:
        # The earlier version's module was frozen with everything else: only an unfrozen
        # collection frees it (a module is all cycles), else every edit of the file would
        # leave one more copy in the forkserver for good.
        gc.unfreeze()
    gc.collect()
    gc.freeze()  # the children share the module: keep the collector off its pages


def _import_quietly(path: Path, env: Mapping[str, str]) -> list[DAG] | None:
    """The file's DAGs, imported under `env` with output discarded; None if it failed."""
    from miniflow.authoring.loader import import_dag_file

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_handlers = {sig: signal.getsignal(sig) for sig in KEPT_SIGNALS}
    saved_fds = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    previous = signal.signal(signal.SIGALRM, _too_slow)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.environ.clear()
        os.environ.update(env)
        signal.setitimer(signal.ITIMER_REAL, IMPORT_TIMEOUT)
        try:
            return import_dag_file(path)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException:  # user code: SystemExit and the timeout included
        return None
    finally:
        signal.signal(signal.SIGALRM, previous)
        for sig, handler in saved_handlers.items():
            if signal.getsignal(sig) is not handler and handler is not None:
                signal.signal(sig, handler)
        os.chdir(saved_cwd)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()  # what the import printed, to /dev/null still
            except Exception:
                pass
        os.environ.clear()
        os.environ.update(saved_env)
        for fd, saved in zip((1, 2), saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        os.close(null)
