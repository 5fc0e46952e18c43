"""The HTML pages and their forms over real HTTP, on SQLite and Postgres."""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx

from tests.web.server import Site, WebServer, webserver


def _csrf(client: httpx.Client) -> str:
    client.get("/")
    token = client.cookies.get("miniflow_csrf")
    assert token
    return str(token)


def _test_run(client: httpx.Client) -> str:
    return str(client.get("/api/v1/runs", params={"run_type": "test"}).json()["runs"][0]["run_id"])


def test_pages_show_dags_runs_tasks_and_logs(server: WebServer) -> None:
    with server.client() as c:
        home = c.get("/")
        assert home.status_code == 200
        assert 'href="/dags/web_demo"' in home.text and "a small DAG for the web tests" in home.text
        assert 'class="dot st-success"' in home.text  # the finished run, as a green dot

        run_id = _test_run(c)
        dag = c.get("/dags/web_demo")
        assert dag.status_code == 200
        cells = re.findall(r'class="cell st-(\w+)" data-task="(\w+)"', dag.text)
        assert cells == [("success", "hello"), ("success", "middle"), ("success", "bye")]
        assert 'name="param.who" id="param-who" value="world"' in dag.text
        nodes = re.findall(r'<g class="node" data-task="(\w+)" data-state="(\w+)"', dag.text)
        assert nodes == [("hello", "success"), ("middle", "success"), ("bye", "success")]
        assert dag.text.count('class="edge"') == 2  # hello -> middle -> bye

        run = c.get(f"/dags/web_demo/runs/{quote(run_id, safe='')}")
        assert run.status_code == 200 and run.text.count("st-success") >= 4
        task = c.get(f"/dags/web_demo/runs/{quote(run_id, safe='')}/tasks/hello")
        assert task.status_code == 200
        assert "hello tester n=2" in task.text  # the task's own output, from its log

        code = c.get("/dags/web_demo/code")
        assert code.status_code == 200 and "hello &gt;&gt; middle &gt;&gt; bye" in code.text
        api_source = c.get("/api/v1/dags/web_demo/source").json()
        assert api_source["fileloc"] == "web_demo.py" and "hello >> middle" in api_source["source"]
        for path in ("/import-errors", "/pools", "/health"):
            assert c.get(path).status_code == 200, path
        missing = c.get("/dags/nope")
        assert missing.status_code == 404 and "no DAG &#39;nope&#39;" in missing.text


def test_forms_trigger_pause_clear_and_mark_failed(server: WebServer) -> None:
    with server.client() as c:
        csrf = _csrf(c)
        bad = c.post(
            "/dags/web_demo/trigger",
            data={"csrf_token": csrf, "param.who": "form", "param.n": "not json"},
        )
        assert bad.status_code == 422
        assert "n: not a JSON value" in bad.text and 'value="not json"' in bad.text

        made = c.post(
            "/dags/web_demo/trigger", data={"csrf_token": csrf, "param.who": "form", "param.n": "5"}
        )
        assert made.status_code == 303
        run_path = made.headers["location"]
        run = c.get(run_path)
        assert run.status_code == 200 and "&#34;who&#34;: &#34;form&#34;" in run.text
        runs = c.get("/api/v1/runs", params={"run_type": "manual"}).json()["runs"]
        assert runs[0]["conf"] == {"who": "form", "n": 5}

        paused = c.post(
            "/dags/web_demo/pause", data={"csrf_token": csrf, "paused": "true", "next": "/"}
        )
        assert paused.status_code == 303 and paused.headers["location"] == "/"
        assert c.get("/api/v1/dags/web_demo").json()["summary"]["is_paused"] is True

        assert c.post(run_path + "/mark-failed", data={"csrf_token": csrf}).status_code == 303
        assert runs[0]["run_id"] in run_path or quote(runs[0]["run_id"], safe="") in run_path
        assert (
            c.get("/api/v1/runs", params={"run_type": "manual"}).json()["runs"][0]["state"]
            == "failed"
        )

        test_run = quote(_test_run(c), safe="")
        cleared = c.post(
            f"/dags/web_demo/runs/{test_run}/tasks/hello/clear",
            data={"csrf_token": csrf, "downstream": "true"},
        )
        assert cleared.status_code == 303
        tis = c.get(f"/api/v1/dags/web_demo/runs/{test_run}/tasks").json()["task_instances"]
        assert {t["state"] for t in tis} == {"none"}

        pools = c.post("/pools", data={"csrf_token": csrf, "name": "gpu", "slots": "1"})
        assert pools.status_code == 303
        assert [p["name"] for p in c.get("/api/v1/pools").json()["pools"]] == ["gpu"]


def test_the_runs_page_is_paginated_and_filtered(server: WebServer) -> None:
    with server.client() as c:
        for i in range(52):
            day = f"2026-03-01T00:{i:02d}:00+00:00"
            made = c.post(
                "/api/v1/dags/web_demo/runs", json={"run_id": f"m{i:02d}", "logical_date": day}
            )
            assert made.status_code == 201
        first = c.get("/runs", params={"run_type": "manual"})
        assert first.status_code == 200
        assert re.findall(r">(m\d\d)</a>", first.text)[:2] == ["m51", "m50"]
        assert len(re.findall(r">(m\d\d)</a>", first.text)) == 50
        assert "page 1 of 2" in first.text and 'id="next"' in first.text
        second = c.get("/runs", params={"run_type": "manual", "page": 2})
        assert re.findall(r">(m\d\d)</a>", second.text) == ["m01", "m00"]
        assert 'id="prev"' in second.text and 'id="next"' not in second.text
        tests = c.get("/runs", params={"run_type": "test"})
        assert "page 1 of 1" in tests.text and "m51" not in tests.text


def test_import_errors_are_listed_and_flagged(site: Site) -> None:
    broken = site.dags / "web_demo.py"
    broken.write_text(broken.read_text() + "\nraise RuntimeError('broken on purpose')\n")
    site.cli("dags", "reparse")
    with webserver(site.env()) as server, server.client() as c:
        (error,) = c.get("/api/v1/import-errors").json()["import_errors"]
        assert error["fileloc"] == "web_demo.py" and "broken on purpose" in error["error"]
        (dag,) = c.get("/api/v1/dags").json()["dags"]
        assert dag["has_import_error"] is True  # its last good version still shown
        assert "broken on purpose" in c.get("/import-errors").text
        assert 'title="its file has an import error"' in c.get("/").text
        assert "broken on purpose" in c.get("/dags/web_demo").text
