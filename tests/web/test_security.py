"""Authentication, CSRF, read-only mode and secrets, against a real server (SQLite; the
database plays no part in these, except the URL that must never be shown)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.dbs import PostgresDatabases
from tests.e2e.helpers import run_cli
from tests.web.server import Site, make_site, webserver

TOKEN = "tok-3f9a-very-secret"


@pytest.fixture
def lite(tmp_path: Path) -> Site:
    state = tmp_path / "state"
    site = make_site(f"sqlite+aiosqlite:///{state / 'miniflow.db'}", tmp_path)
    site.cli("dags", "reparse")
    return site


def test_beyond_localhost_without_a_token_refuses_to_start(lite: Site) -> None:
    result = run_cli(["webserver", "--host", "0.0.0.0", "--port", "0"], lite.env(), timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: MINIFLOW_WEB_HOST=0.0.0.0 is reachable")
    assert "MINIFLOW_WEB_TOKEN" in result.stderr


def test_auth_none_beyond_localhost_warns(lite: Site) -> None:
    env = lite.env(MINIFLOW_WEB_AUTH="none", MINIFLOW_WEB_HOST="0.0.0.0")
    with webserver(env) as server, server.client() as c:
        assert c.get("/api/v1/dags").status_code == 200
        assert any("MINIFLOW_WEB_AUTH=none" in line for line in server.output)


def test_token_is_required_and_never_shown(lite: Site) -> None:
    with webserver(lite.env(MINIFLOW_WEB_TOKEN=TOKEN)) as server:
        with server.client() as anonymous:
            refused = anonymous.get("/api/v1/dags")
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
            wrong = anonymous.get("/api/v1/dags", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert anonymous.post("/api/v1/dags/web_demo/pause", json={}).status_code == 401
            page = anonymous.get("/dags/web_demo")
            assert page.status_code == 303 and page.headers["location"].startswith("/login")
            assert anonymous.get("/static/miniflow.css").status_code == 200

        headers = {"Authorization": f"Bearer {TOKEN}"}
        with server.client(headers=headers) as c:
            assert c.get("/api/v1/dags").json()["total"] == 1

        with server.client() as browser:
            browser.get("/login")
            csrf = browser.cookies.get("miniflow_csrf")
            failed = browser.post("/login", data={"csrf_token": csrf, "token": "nope"})
            assert failed.status_code == 401
            ok = browser.post("/login", data={"csrf_token": csrf, "token": TOKEN, "next": "/"})
            assert ok.status_code == 303
            assert browser.cookies.get("miniflow_session") not in (None, TOKEN)
            home = browser.get("/")
            assert home.status_code == 200 and "web_demo" in home.text
            assert TOKEN not in home.text


def test_forms_without_the_csrf_token_are_refused(lite: Site) -> None:
    with webserver(lite.env()) as server, server.client() as c:
        home = c.get("/")
        assert "script-src 'self'" in home.headers["content-security-policy"]
        assert home.headers["x-frame-options"] == "DENY"
        no_token = c.post("/dags/web_demo/pause", data={"paused": "true"})
        assert no_token.status_code == 403 and "CSRF" in no_token.text
        forged = c.post("/dags/web_demo/pause", data={"paused": "true", "csrf_token": "forged"})
        assert forged.status_code == 403
        assert c.get("/api/v1/dags/web_demo").json()["summary"]["is_paused"] is False
        with server.client() as stranger:  # no cookie at all: a cross-site form post
            assert (
                stranger.post("/dags/web_demo/trigger", data={"csrf_token": "x"}).status_code == 403
            )
        assert c.get("/api/v1/runs").json()["total"] == 0


def test_read_only_refuses_actions(lite: Site) -> None:
    with webserver(lite.env(MINIFLOW_WEB_READ_ONLY="true")) as server, server.client() as c:
        refused = c.post("/api/v1/dags/web_demo/runs", json={})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "read_only"
        c.get("/")
        csrf = c.cookies.get("miniflow_csrf")
        form = c.post("/dags/web_demo/pause", data={"csrf_token": csrf, "paused": "true"})
        assert form.status_code == 403
        assert c.get("/api/v1/runs").json()["total"] == 0
        assert "disabled" in c.get("/dags/web_demo").text


def test_bad_web_settings_are_one_line(lite: Site) -> None:
    for env, named in (
        ({"MINIFLOW_WEB_PORT": "http"}, "MINIFLOW_WEB_PORT must be an integer"),
        ({"MINIFLOW_WEB_PORT": "70000"}, "MINIFLOW_WEB_PORT must be a port"),
        ({"MINIFLOW_WEB_AUTH": "basic"}, "MINIFLOW_WEB_AUTH must be one of token, none"),
        ({"MINIFLOW_WEB_READ_ONLY": "maybe"}, "MINIFLOW_WEB_READ_ONLY must be true or false"),
    ):
        result = run_cli(["webserver"], lite.env(**env), timeout=60)
        assert result.returncode == 2, env
        assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
        assert named in result.stderr


async def test_no_secret_in_any_response(postgres_dbs: PostgresDatabases, tmp_path: Path) -> None:
    """The database URL's password and the token appear in no page and no API answer."""
    password = "pw-must-not-leak-77"
    url = (await postgres_dbs.clone()).replace("postgres@", f"postgres:{password}@")
    site = make_site(url, tmp_path)
    site.cli("dags", "test", "web_demo")
    env = site.env(MINIFLOW_WEB_TOKEN=TOKEN)
    with webserver(env) as server:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as c:
            run_id = (await c.get("/api/v1/runs")).json()["runs"][0]["run_id"]
            base = f"/dags/web_demo/runs/{run_id}"
            paths = [
                "/",
                "/dags/web_demo",
                base,
                f"{base}/tasks/hello",
                "/import-errors",
                "/pools",
                "/health",
                "/login",
                "/dags/nope",
                "/api/v1/dags",
                "/api/v1/dags/web_demo",
                "/api/v1/runs",
                f"/api/v1{base}",
                f"/api/v1{base}/tasks",
                f"/api/v1{base}/tasks/hello/tries",
                f"/api/v1{base}/tasks/hello/tries/1/log",
                "/api/v1/health",
                "/api/v1/pools",
                "/api/v1/openapi.json",
                "/api/v1/dags/nope",
            ]
            for path in paths:
                body = (await c.get(path)).text
                assert password not in body, path
                assert TOKEN not in body, path
