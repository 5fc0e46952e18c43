"""`--output json` on the CLI's list commands: the REST API's field names and values."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.helpers import run_cli
from tests.web.server import Site, WebServer


def _json(site: Site, *args: str) -> Any:
    result = run_cli([*args, "--output", "json"], site.env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_cli_json_matches_the_api(site: Site, server: WebServer) -> None:
    with server.client() as c:
        (api_run,) = c.get("/api/v1/runs").json()["runs"]
        run_id = api_run["run_id"]
        api_tis = c.get(f"/api/v1/dags/web_demo/runs/{run_id}/tasks").json()["task_instances"]
        api_tries = c.get(f"/api/v1/dags/web_demo/runs/{run_id}/tasks/hello/tries").json()
        (api_dag,) = c.get("/api/v1/dags").json()["dags"]

    (cli_run,) = _json(site, "runs", "list")
    assert cli_run.keys() == api_run.keys()
    assert cli_run["run_id"] == run_id and cli_run["conf"] == api_run["conf"] == {"who": "tester"}

    cli_tis = _json(site, "tasks", "list", "web_demo", run_id)
    assert [t.keys() for t in cli_tis] == [t.keys() for t in api_tis]
    assert [(t["task_id"], t["state"]) for t in cli_tis] == [
        (t["task_id"], t["state"]) for t in api_tis
    ]
    cli_tries = _json(site, "tasks", "list", "web_demo", run_id, "--all-tries")
    assert cli_tries[0].keys() == api_tries["tries"][0].keys()
    assert [t["task_id"] for t in cli_tries] == ["hello", "middle", "bye"]

    (cli_dag,) = _json(site, "dags", "list", "--no-parse")
    assert set(cli_dag) <= set(api_dag)  # the API adds description, tags, recent runs
    assert {k: api_dag[k] for k in cli_dag if k != "next_run"} == {
        k: v for k, v in cli_dag.items() if k != "next_run"
    }
    assert _json(site, "dags", "errors") == []
    site.cli("pools", "set", "db", "3")
    with server.client() as c:
        (api_pool,) = c.get("/api/v1/pools").json()["pools"]
    (cli_pool,) = _json(site, "pools", "list")
    assert cli_pool == {k: api_pool[k] for k in cli_pool} and set(cli_pool) < set(api_pool)
