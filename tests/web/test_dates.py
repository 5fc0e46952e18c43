"""One way of writing a time everywhere: RFC 3339 in UTC with `Z` (API, CLI JSON, pages)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from miniflow.store.times import rfc3339
from tests.web.server import Site, WebServer

API_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
PAGE_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d[^\s<\"]*")


def times(value: Any, key: str = "") -> list[str]:
    """Every time-valued field of a JSON document (by the API's naming: *_at, *_date...)."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in times(v, k)]
    if isinstance(value, list):
        return [t for v in value for t in times(v, key)]
    named = key.endswith(("_at", "_date", "_start", "_end")) or key == "next_run"
    return [value] if named and isinstance(value, str) else []


def test_the_helper() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 1, 1, 8, 0, tzinfo=plus_two)) == "2026-01-01T06:00:00Z"
    assert rfc3339(datetime(2026, 1, 1, 6, 0, 0, 5000, tzinfo=UTC)) == "2026-01-01T06:00:00.005000Z"
    assert rfc3339(datetime(2026, 1, 1, 6, 0, 0, 5000), "seconds") == "2026-01-01T06:00:00Z"


def test_api_cli_and_pages_write_times_one_way(site: Site, server: WebServer) -> None:
    with server.client() as c:
        run = c.get("/api/v1/runs").json()["runs"][0]
        base = f"/api/v1/dags/web_demo/runs/{quote(run['run_id'], safe='')}"
        found = []
        for path in (
            "/api/v1/dags",
            "/api/v1/dags/web_demo",
            "/api/v1/dags/web_demo/grid",
            "/api/v1/runs",
            base,
            base + "/tasks",
            base + "/tasks/hello",
            base + "/tasks/hello/tries",
            base + "/tasks/hello/tries/1",
            "/api/v1/health",
        ):
            answer = c.get(path)
            assert answer.status_code == 200, path
            found += [(path, t) for t in times(answer.json())]
        assert {p for p, _ in found} >= {"/api/v1/dags/web_demo/grid", base + "/tasks/hello/tries"}
        assert [(p, t) for p, t in found if not API_TIME.match(t)] == []

        pages = [
            c.get(p).text
            for p in ("/", "/runs", "/dags/web_demo", "/health", base.replace("/api/v1", ""))
        ]
        shown = [t for text in pages for t in PAGE_TIME.findall(text)]
        # run ids hold a time too (test__2026-...+00:00): only look at times outside ids
        shown = [t for t in shown if "+00:00" not in t]
        assert shown, "no times on the pages"
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t) for t in shown), shown

    listed = json.loads(site.cli("runs", "list", "--output", "json").stdout)
    assert listed and all(API_TIME.match(t) for t in times(listed))
    assert listed[0]["started_at"] == run["started_at"]  # the same text as the API's
