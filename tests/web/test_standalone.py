"""`miniflow standalone` serves the web UI beside its scheduler (unless --no-webserver)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.helpers import run_cli, wait_for, write_dag
from tests.web.server import Site, webserver

GATED = """
from datetime import datetime

from miniflow import DAG, Bash

with DAG("gated", start_date=datetime(2026, 1, 1)):
    Bash("wait", "while [ ! -f {gate} ]; do sleep 0.05; done; echo through")
"""


def test_standalone_serves_the_ui_while_it_runs(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    site = Site(f"sqlite+aiosqlite:///{tmp_path / 'state' / 'miniflow.db'}", tmp_path)
    write_dag(site.dags, "gated.py", GATED.format(gate=gate))
    command = ("standalone", "--trigger-all", "--exit-when-done")
    try:
        with webserver(site.env(), command=command) as server:
            with server.client() as c:
                # the URL is printed before the first parse: the DAG and its run follow
                runs = wait_for(
                    lambda: c.get("/api/v1/runs").json()["runs"], 60, "the triggered run"
                )
                assert [d["dag_id"] for d in c.get("/api/v1/dags").json()["dags"]] == ["gated"]
                (run,) = runs
                assert run["state"] in ("queued", "running")
                assert "gated" in c.get("/").text
            gate.touch()
            assert server.proc.wait(60) == 0, "".join(server.output)
        assert "Traceback" not in "".join(server.output)
        # the server stopped with standalone
        try:
            httpx.get(server.url + "/api/v1/dags", timeout=5)
            raise AssertionError("the web UI outlived standalone")
        except httpx.ConnectError:
            pass
    finally:
        gate.touch()


def test_no_webserver(tmp_path: Path) -> None:
    site = Site(f"sqlite+aiosqlite:///{tmp_path / 'state' / 'miniflow.db'}", tmp_path)
    gate = tmp_path / "gate"
    gate.touch()
    write_dag(site.dags, "gated.py", GATED.format(gate=gate))
    result = run_cli(
        ["standalone", "--trigger-all", "--exit-when-done", "--no-webserver"],
        site.env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout
    assert "miniflow web UI" not in result.stdout + result.stderr


def test_a_taken_port_is_a_warning_for_standalone_and_an_error_for_webserver(
    tmp_path: Path,
) -> None:
    import socket

    site = Site(f"sqlite+aiosqlite:///{tmp_path / 'state' / 'miniflow.db'}", tmp_path)
    gate = tmp_path / "gate"
    gate.touch()
    write_dag(site.dags, "gated.py", GATED.format(gate=gate))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = site.env(MINIFLOW_WEB_PORT=port)
        refused = run_cli(["webserver"], env, timeout=60)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            f"error: the web server cannot listen on 127.0.0.1:{port} "
            "(MINIFLOW_WEB_HOST / MINIFLOW_WEB_PORT): Address already in use"
        ]
        ran = run_cli(["standalone", "--trigger-all", "--exit-when-done"], env, timeout=120)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "warning: no web UI: the web server cannot listen" in ran.stderr
