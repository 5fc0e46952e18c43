"""A running try's log streams over server-sent events, against a real scheduler."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.helpers import spawn_cli, stop, wait_for, write_dag
from tests.web.server import Site, webserver

SLOW = """
from datetime import datetime

from miniflow import DAG, Bash

with DAG("slow", start_date=datetime(2026, 1, 1)):
    Bash("talk", "echo before the gate; while [ ! -f {gate} ]; do sleep 0.05; done; echo after")
"""


def test_follow_streams_lines_until_the_try_ends(db_url: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    site = Site(db_url, tmp_path)
    write_dag(site.dags, "slow.py", SLOW.format(gate=gate))
    scheduler = spawn_cli(["scheduler"], site.env(), tmp_path / "scheduler.log")
    try:
        with webserver(site.env()) as server, server.client() as c:
            wait_for(lambda: c.get("/api/v1/dags").json()["total"], 60, "the DAG parsed")
            assert c.post("/api/v1/dags/slow/runs", json={"run_id": "r"}).status_code == 201
            task = "/api/v1/dags/slow/runs/r/tasks/talk"
            wait_for(lambda: c.get(task).json()["state"] == "running", 60, "talk running")
            assert c.get(task + "/tries/2/log/follow").status_code == 404

            with c.stream("GET", task + "/tries/1/log/follow") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                lines = response.iter_lines()
                assert next(lines) == 'data: "before the gate"'  # while the try still runs
                assert c.get(task).json()["state"] == "running"
                gate.touch()
                rest = list(lines)
            assert rest.index('data: "after"') < rest.index("event: end")  # then the end
            # the process ended; the scheduler records the outcome right after
            wait_for(lambda: c.get(task).json()["state"] == "success", 60, "talk succeeded")
    finally:
        gate.touch()
        stop(scheduler)
