"""The REST API over real HTTP against a real `miniflow webserver`, on SQLite and Postgres."""

from __future__ import annotations

from urllib.parse import quote

import httpx

from tests.web.server import Site, WebServer


def _q(value: str) -> str:
    return quote(value, safe="")


def _test_run(client: httpx.Client) -> str:
    runs = client.get("/api/v1/runs", params={"run_type": "test"}).json()["runs"]
    assert len(runs) == 1
    return str(runs[0]["run_id"])


def test_read_endpoints(server: WebServer) -> None:
    with server.client() as c:
        dags = c.get("/api/v1/dags").json()
        assert dags["total"] == 1
        (dag,) = dags["dags"]
        assert dag["dag_id"] == "web_demo"
        assert dag["tags"] == ["web"] and dag["tasks"] == 3 and dag["is_paused"] is False
        assert [r["state"] for r in dag["recent_runs"]] == ["success"]
        assert c.get("/api/v1/dags", params={"q": "nothing-like-it"}).json()["total"] == 0
        assert c.get("/api/v1/dags", params={"tag": "web"}).json()["total"] == 1

        detail = c.get("/api/v1/dags/web_demo").json()
        assert detail["params"] == {"who": "world", "n": 2}
        assert [t["task_id"] for t in detail["task_specs"]] == ["hello", "middle", "bye"]
        assert c.get("/api/v1/import-errors").json() == {"import_errors": []}

        run_id = _test_run(c)
        run = c.get(f"/api/v1/dags/web_demo/runs/{_q(run_id)}").json()
        assert run["state"] == "success" and run["conf"] == {"who": "tester"}
        assert (
            c.get("/api/v1/runs", params={"dag_id": "web_demo", "state": "failed"}).json()["total"]
            == 0
        )

        tis = c.get(f"/api/v1/dags/web_demo/runs/{_q(run_id)}/tasks").json()["task_instances"]
        assert {t["task_id"]: t["state"] for t in tis} == dict.fromkeys(
            ["hello", "middle", "bye"], "success"
        )
        hello = c.get(f"/api/v1/dags/web_demo/runs/{_q(run_id)}/tasks/hello").json()
        assert hello["exit_code"] == 0 and hello["try_number"] == 1
        tries = c.get(f"/api/v1/dags/web_demo/runs/{_q(run_id)}/tasks/hello/tries").json()
        assert [(t["try_number"], t["state"]) for t in tries["tries"]] == [(1, "success")]
        one = c.get(f"/api/v1/dags/web_demo/runs/{_q(run_id)}/tasks/hello/tries/1").json()
        assert (one["try_number"], one["state"], one["exit_code"]) == (1, "success", 0)
        log = c.get(f"/api/v1/dags/web_demo/runs/{_q(run_id)}/tasks/hello/tries/1/log").json()
        assert "hello tester n=2" in "\n".join(log["lines"])

        grid = c.get("/api/v1/dags/web_demo/grid").json()
        assert grid["task_ids"] == ["hello", "middle", "bye"]
        assert grid["cells"]["bye"][run_id]["state"] == "success"

        assert c.get("/api/v1/pools").json() == {"pools": []}
        health = c.get("/api/v1/health").json()
        assert health["status"] == "no_scheduler"  # `dags test` registered, then said goodbye
        assert all(s["status"] == "stopped" for s in health["schedulers"])

        schema = c.get("/api/v1/openapi.json").json()
        assert "/api/v1/dags/{dag_id}/runs" in schema["paths"]
        docs = c.get("/api/v1/docs")
        assert docs.status_code == 200
        assert docs.text.count("<tr><td><code>") == sum(len(m) for m in schema["paths"].values())


def test_unknown_ids_are_404_with_the_error_shape(server: WebServer) -> None:
    with server.client() as c:
        run_id = _q(_test_run(c))
        for path in (
            "/api/v1/dags/nope",
            "/api/v1/dags/nope/runs",
            "/api/v1/dags/web_demo/runs/nope",
            f"/api/v1/dags/web_demo/runs/{run_id}/tasks/nope",
            f"/api/v1/dags/web_demo/runs/{run_id}/tasks/nope/tries",
            f"/api/v1/dags/web_demo/runs/{run_id}/tasks/hello/tries/7/log",
            f"/api/v1/dags/web_demo/runs/{run_id}/tasks/hello/tries/7",
            "/api/v1/no-such-endpoint",
        ):
            response = c.get(path)
            assert response.status_code == 404, path
            error = response.json()["error"]
            assert error["code"] == "not_found" and error["message"], path
        response = c.post("/api/v1/dags/nope/pause", json={})
        assert response.status_code == 404


def test_actions(server: WebServer, site: Site) -> None:
    with server.client() as c:
        assert c.post("/api/v1/dags/web_demo/pause", json={}).json()["is_paused"] is True
        assert c.get("/api/v1/dags/web_demo").json()["summary"]["is_paused"] is True
        assert c.post("/api/v1/dags/web_demo/unpause", json={}).json()["is_paused"] is False

        bad = c.post("/api/v1/dags/web_demo/runs", json={"conf": {"who": "x", "colour": 1}})
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "invalid_conf"
        assert "'colour'" in bad.json()["error"]["message"]
        not_object = c.post("/api/v1/dags/web_demo/runs", json={"conf": [1]})
        assert not_object.status_code == 422 and "conf" in not_object.json()["error"]["message"]

        created = c.post(
            "/api/v1/dags/web_demo/runs", json={"conf": {"who": "api"}, "run_id": "from-api"}
        )
        assert created.status_code == 201, created.text
        assert created.json()["state"] == "queued" and created.json()["conf"] == {"who": "api"}
        again = c.post("/api/v1/dags/web_demo/runs", json={"run_id": "from-api"})
        assert again.status_code == 409

        failed = c.post("/api/v1/dags/web_demo/runs/from-api/mark-failed", json={}).json()
        assert failed["state"] == "failed"
        tis = c.get("/api/v1/dags/web_demo/runs/from-api/tasks").json()["task_instances"]
        assert {t["state"] for t in tis} == {"skipped"}

        run_id = _q(_test_run(c))
        cleared = c.post(
            f"/api/v1/dags/web_demo/runs/{run_id}/tasks/middle/clear", json={"downstream": True}
        ).json()
        assert cleared == {"cleared": ["middle", "bye"]}
        states = {
            t["task_id"]: t["state"]
            for t in c.get(f"/api/v1/dags/web_demo/runs/{run_id}/tasks").json()["task_instances"]
        }
        assert states == {"hello": "success", "middle": "none", "bye": "none"}
        assert c.get(f"/api/v1/dags/web_demo/runs/{run_id}").json()["state"] == "running"

        pools = c.post("/api/v1/pools/db", json={"slots": 2, "description": "the database"})
        assert pools.json()["pools"] == [
            {"name": "db", "slots": 2, "description": "the database", "occupied": 0}
        ]
        assert c.post("/api/v1/pools/db", json={"slots": -1}).status_code == 422


def test_pagination_and_filters(server: WebServer) -> None:
    with server.client() as c:
        for i in range(5):
            day = f"2026-02-0{i + 1}T00:00:00+00:00"
            r = c.post("/api/v1/dags/web_demo/runs", json={"run_id": f"r{i}", "logical_date": day})
            assert r.status_code == 201, r.text
        page = c.get(
            "/api/v1/runs",
            params={"dag_id": "web_demo", "run_type": "manual", "limit": 2, "offset": 1},
        ).json()
        assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 1
        assert [r["run_id"] for r in page["runs"]] == ["r3", "r2"]  # newest first
        last = c.get(
            "/api/v1/dags/web_demo/runs", params={"run_type": "manual", "limit": 2, "offset": 4}
        ).json()
        assert [r["run_id"] for r in last["runs"]] == ["r0"]
        queued = c.get("/api/v1/runs", params={"state": "queued"}).json()
        assert queued["total"] == 5
        bad = c.get("/api/v1/runs", params={"limit": 0})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_api_posts_need_a_json_body(server: WebServer) -> None:
    """A cross-site form can POST only form-encoded or plain text bodies: refused."""
    with server.client() as c:
        refused = c.post("/api/v1/dags/web_demo/pause", data={"x": "1"})
        assert refused.status_code == 415
        assert refused.json()["error"]["code"] == "json_required"
        assert c.get("/api/v1/dags/web_demo").json()["summary"]["is_paused"] is False
