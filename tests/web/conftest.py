"""Fixtures for the web tests: a site (DAG + database) with one finished run, and a server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.server import Site, WebServer, make_site, webserver


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Site:
    """`web_demo` parsed, with one finished run (`miniflow dags test`: real tries and logs)."""
    site = make_site(db_url, tmp_path)
    site.cli("dags", "test", "web_demo", "--conf", '{"who": "tester"}')
    return site


@pytest.fixture
def server(site: Site) -> Iterator[WebServer]:
    with webserver(site.env()) as running:
        yield running
