"""A real `miniflow webserver` process for the web tests, and the DAG they browse."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.e2e.helpers import MINIFLOW, cli_env, kill_group, run_cli, write_dag

START_TIMEOUT = 30.0

DAG_SOURCE = """
from datetime import datetime

from miniflow import DAG, Bash

with DAG(
    "web_demo",
    start_date=datetime(2026, 1, 1),
    params={"who": "world", "n": 2},
    tags=["web"],
    description="a small DAG for the web tests",
):
    hello = Bash("hello", "echo hello {{ params.who }} n={{ params.n }}")
    middle = Bash("middle", "echo middle")
    bye = Bash("bye", "echo bye")
    hello >> middle >> bye
"""


@dataclass
class WebServer:
    url: str
    proc: subprocess.Popen[str]
    output: list[str]

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]


@dataclass
class Site:
    """A DAGs folder with `web_demo`, a database, and the environment of the CLI."""

    db_url: str
    tmp: Path

    @property
    def dags(self) -> Path:
        return self.tmp / "dags"

    def env(self, **extra: str) -> dict[str, str]:
        return cli_env(self.db_url, self.dags, self.tmp / "state", **extra)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = run_cli(args, self.env(), timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result


def make_site(db_url: str, tmp: Path) -> Site:
    site = Site(db_url, tmp)
    write_dag(site.dags, "web_demo.py", DAG_SOURCE)
    return site


def _reader(proc: subprocess.Popen[str], lines: queue.Queue[str | None], keep: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        keep.append(line)
        lines.put(line)
    lines.put(None)


@contextmanager
def webserver(
    env: dict[str, str], *args: str, command: Sequence[str] = ("webserver", "--port", "0")
) -> Iterator[WebServer]:
    """`miniflow webserver --port 0` (or `command`) until the block ends; yields once it
    printed its URL."""
    proc = subprocess.Popen(
        [MINIFLOW, *command, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []
    reader = threading.Thread(target=_reader, args=(proc, lines, output), daemon=True)
    reader.start()
    try:
        url = None
        while url is None:
            try:
                line = lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"webserver did not start: {''.join(output)}") from None
            if line is None:
                raise AssertionError(f"webserver exited: {''.join(output)}")
            if line.startswith("miniflow web UI: "):
                url = line.split(": ", 1)[1].strip().rstrip("/")
        yield WebServer(url, proc, output)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        kill_group(proc)
        proc.wait(5)
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()
