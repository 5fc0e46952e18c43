"""Run ids with "/" (and other characters a URL escapes) in every page and API route."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from urllib.parse import quote

import httpx

from miniflow.store import runs as store_runs
from tests.e2e.helpers import kill_group, query, spawn_cli, stop, until
from tests.web.server import make_site, webserver

RUN_ID = "team/etl/2026-01-01 a?b#c%d"


def _csrf(client: httpx.Client) -> str:
    client.get("/")
    return str(client.cookies.get("miniflow_csrf"))


async def test_every_route_takes_a_run_id_with_slashes(db_url: str, tmp_path: Path) -> None:
    site = make_site(db_url, tmp_path)
    site.cli("dags", "list")  # parsed: the web server triggers from the stored version
    env = site.env(MINIFLOW_LAUNCHER="local")
    q = quote(RUN_ID, safe="")
    with webserver(env) as web, web.client() as c:
        made = c.post("/api/v1/dags/web_demo/runs", json={"run_id": RUN_ID, "conf": {"who": "/"}})
        assert made.status_code == 201, made.text
        assert made.json()["run_id"] == RUN_ID
        scheduler = spawn_cli(["scheduler"], env, tmp_path / "scheduler.log")
        try:

            async def done() -> bool:
                run = await query(db_url, store_runs.get_run, "web_demo", RUN_ID)
                return run.state == "success"

            await until(done, 60, "the run to succeed")
            assert stop(scheduler, signal.SIGTERM) == 0
        finally:
            kill_group(scheduler)
            scheduler.wait(5)

        api = f"/api/v1/dags/web_demo/runs/{q}"
        # the same routes with "/" left as it is: the path converter takes it too
        raw = "/api/v1/dags/web_demo/runs/team/etl/2026-01-01%20a%3Fb%23c%25d"
        for base in (api, raw):
            assert c.get(base).json()["run_id"] == RUN_ID
            tis = c.get(base + "/tasks").json()["task_instances"]
            assert [(t["task_id"], t["state"]) for t in tis] == [
                ("hello", "success"),
                ("middle", "success"),
                ("bye", "success"),
            ]
            assert c.get(base + "/tasks/hello").json()["run_id"] == RUN_ID
            tries = c.get(base + "/tasks/hello/tries").json()["tries"]
            assert [t["try_number"] for t in tries] == [1]
            assert c.get(base + "/tasks/hello/tries/1").json()["state"] == "success"
            log = c.get(base + "/tasks/hello/tries/1/log").json()
            assert any("hello / n=2" in line for line in log["lines"]), log
            with c.stream("GET", base + "/tasks/hello/tries/1/log/follow") as events:
                body = "".join(events.iter_text())
            assert json.dumps("hello / n=2") in body and "event: end" in body
        assert c.get("/api/v1/runs").json()["runs"][0]["run_id"] == RUN_ID
        assert c.get(api + "/tasks/nope").status_code == 404

        page = c.get(f"/dags/web_demo/runs/{q}")
        assert page.status_code == 200
        assert f'href="/dags/web_demo/runs/{q}/tasks/hello"' in page.text
        task = c.get(f"/dags/web_demo/runs/{q}/tasks/hello")
        assert task.status_code == 200 and "hello / n=2" in task.text
        dag = c.get("/dags/web_demo")
        assert f'href="/dags/web_demo/runs/{q}/tasks/hello"' in dag.text  # grid and graph
        assert f'href="/dags/web_demo/runs/{q}"' in c.get("/runs").text
        assert f'href="/dags/web_demo/runs/{q}"' in c.get("/").text  # the recent-run dots

        csrf = _csrf(c)
        cleared = c.post(
            f"/dags/web_demo/runs/{q}/tasks/middle/clear",
            data={"csrf_token": csrf, "downstream": "true"},
        )
        assert cleared.status_code == 303
        assert cleared.headers["location"] == f"/dags/web_demo/runs/{q}"
        states = {t["task_id"]: t["state"] for t in c.get(api + "/tasks").json()["task_instances"]}
        assert states == {"hello": "success", "middle": "none", "bye": "none"}
        assert c.post(api + "/tasks/hello/clear", json={}).json() == {"cleared": ["hello"]}
        failed = c.post(f"/dags/web_demo/runs/{q}/mark-failed", data={"csrf_token": csrf})
        assert failed.status_code == 303
        assert c.get(api).json()["state"] == "failed"
        assert c.post(api + "/mark-failed", json={}).json()["state"] == "failed"
