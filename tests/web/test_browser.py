"""A real Chromium (headless, through chromium-driver) against `miniflow webserver` and
`miniflow scheduler` running a small DAG: what a user sees and clicks.

Set MINIFLOW_SCREENSHOTS=docs/images to refresh the README's screenshots.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import EXAMPLES, spawn_cli, stop
from tests.web.server import Site, make_site, webserver

pytest.importorskip("selenium")

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 60

GATED_DAG = """
from datetime import datetime

from miniflow import DAG, Bash

with DAG(
    "web_demo",
    start_date=datetime(2026, 1, 1),
    params={"who": "world", "n": 2},
    tags=["web"],
    description="extract, wait for the gate file, report",
):
    hello = Bash("hello", "echo hello {{ params.who }} n={{ params.n }}")
    middle = Bash(
        "middle",
        "echo waiting for the gate; while [ ! -f {{ params.gate }} ]; do sleep 0.05; done; "
        "echo through",
    )
    bye = Bash("bye", 'echo bye {{ params.who }}; test "{{ params.who }}" != fail')
    hello >> middle >> bye
"""


def _binaries() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "chromium and chromium-driver are not installed (scripts/test.sh installs them "
            "with `apt-get install -y chromium chromium-driver`)"
        )
    return browser, driver


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    binary, driver_path = _binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-gpu",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _until(driver: WebDriver, what: str, check: Callable[[WebDriver], Any]) -> Any:
    # the page replaces its content while something runs: an element may go stale under us
    wait = WebDriverWait(
        driver, WAIT, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(check, message=what)


def _shot(driver: WebDriver, name: str, tmp: Path) -> None:
    folder = Path(os.environ.get("MINIFLOW_SCREENSHOTS") or tmp)
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))


def _attr(driver: WebDriver, css: str, name: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].get_attribute(name) if found else None


def test_a_user_triggers_watches_reads_the_log_and_pauses(
    browser: WebDriver, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    site: Site = make_site(f"sqlite+aiosqlite:///{tmp_path / 'state' / 'miniflow.db'}", tmp_path)
    (site.dags / "web_demo.py").write_text(
        GATED_DAG.replace('"n": 2}', f'"n": 2, "gate": "{gate}"}}').lstrip()
    )
    for example in EXAMPLES.glob("*.py"):  # company for the screenshots
        shutil.copy(example, site.dags)
    site.cli("db", "upgrade")
    scheduler = spawn_cli(["scheduler"], site.env(), tmp_path / "scheduler.log")
    try:
        with webserver(site.env()) as server:
            b = browser
            # the DAG list shows the DAG once the scheduler has parsed it
            b.get(server.url + "/")
            _until(
                b,
                "the DAG in the list",
                lambda d: d.refresh() or d.find_elements(By.LINK_TEXT, "web_demo"),
            )

            # the trigger form starts a run with the conf typed in
            b.find_element(By.LINK_TEXT, "web_demo").click()
            who = b.find_element(By.ID, "param-who")
            who.clear()
            who.send_keys("selenium")
            b.find_element(By.ID, "trigger").click()
            _until(b, "the run page", lambda d: "/runs/manual__" in d.current_url)
            assert '"who": "selenium"' in b.find_element(By.ID, "conf").get_attribute("textContent")

            # the grid shows the run running, then (the gate opened) success, by itself
            b.get(server.url + "/dags/web_demo")
            _until(
                b,
                "middle running",
                lambda d: _attr(d, '.cell[data-task="middle"]', "data-state") == "running",
            )
            assert _attr(b, ".run-head", "data-state") == "running"
            assert _attr(b, '.cell[data-task="hello"]', "data-state") == "success"

            # a running task's log streams into its page, which reloads when the try ends
            b.find_element(By.CSS_SELECTOR, '.cell[data-task="middle"]').click()
            _until(b, "the live log", lambda d: "waiting" in d.find_element(By.ID, "log").text)
            assert b.find_elements(By.ID, "following")
            _shot(b, "task-live-log", tmp_path)
            gate.touch()
            _until(
                b,
                "the rest of the log, once the try ended",
                lambda d: "through" in d.find_element(By.ID, "log").text
                and not d.find_elements(By.ID, "following"),
            )
            b.get(server.url + "/dags/web_demo")
            _until(
                b, "the run to succeed", lambda d: _attr(d, ".run-head", "data-state") == "success"
            )
            assert _attr(b, '.cell[data-task="bye"]', "data-state") == "success"

            # a task's cell opens its log, with the task's own output
            b.find_element(By.CSS_SELECTOR, '.cell[data-task="hello"]').click()
            _until(
                b, "the log", lambda d: "hello selenium n=2" in d.find_element(By.ID, "log").text
            )
            _shot(b, "task-log", tmp_path)

            # clear re-runs a task: its try 2 runs and succeeds
            b.find_element(By.PARTIAL_LINK_TEXT, "manual__").click()
            row = b.find_element(By.CSS_SELECTOR, 'tr[data-task="bye"]')
            row.find_element(By.TAG_NAME, "button").click()
            _until(
                b,
                "bye's second try to succeed",
                lambda d: (
                    (r := d.find_elements(By.CSS_SELECTOR, 'tr[data-task="bye"] td'))
                    and r[2].text.startswith("2")
                    and "success" in r[1].text
                ),
            )
            _shot(b, "run", tmp_path)

            # the pause toggle pauses and unpauses
            b.get(server.url + "/")
            b.find_element(By.ID, "pause-web_demo").click()
            _until(b, "paused", lambda d: _attr(d, "#pause-web_demo", "data-paused") == "true")
            api = httpx.get(server.url + "/api/v1/dags/web_demo", timeout=30).json()
            assert api["summary"]["is_paused"] is True
            b.find_element(By.ID, "pause-web_demo").click()
            _until(b, "unpaused", lambda d: _attr(d, "#pause-web_demo", "data-paused") == "false")

            # a failing run shows red in the grid (and a second good one: a grid to look at)
            for who in ("fail", "again"):
                made = httpx.post(
                    server.url + "/api/v1/dags/web_demo/runs",
                    json={"conf": {"who": who}},
                    timeout=30,
                )
                assert made.status_code == 201, made.text
            b.get(server.url + "/dags/web_demo")
            _until(
                b,
                "three finished runs",
                lambda d: (
                    [
                        e.get_attribute("data-state")
                        for e in d.find_elements(By.CSS_SELECTOR, ".run-head")
                    ]
                    in (["success", "failed", "success"], ["success", "success", "failed"])
                ),
            )
            _shot(b, "dag", tmp_path)
            b.get(server.url + "/")
            _shot(b, "dags", tmp_path)

            b.get(server.url + "/health")
            assert "alive" in b.find_element(By.ID, "schedulers").text
            _shot(b, "health", tmp_path)
    finally:
        gate.touch()  # never leave a task waiting
        stop(scheduler)


BIG_DAG = """
from datetime import datetime
from miniflow import DAG, Bash

with DAG("big_200", start_date=datetime(2026, 1, 1)):
    stages = []
    for s in range(10):
        stage = [Bash(f"stage_{s:02d}_extract_customer_partition_{i:02d}", "true")
                 for i in range(20)]
        if stages:
            for i, t in enumerate(stage):
                stages[-1][i] >> t
                stages[-1][(i + 7) % 20] >> t
        stages.append(stage)
"""

MEASURE = """
var nodes = document.querySelectorAll('svg.graph g.node');
var overflow = [];
nodes.forEach(function (g) {
  var rect = g.querySelector('rect').getBBox(), text = g.querySelector('text').getBBox();
  if (text.x + text.width > rect.x + rect.width - 2) { overflow.push(g.dataset.task); }
});
var wrap = document.querySelector('.graph-wrap');
return [nodes.length, overflow, wrap.scrollWidth > wrap.clientWidth];
"""


def test_a_graph_of_200_tasks_is_readable(browser: WebDriver, tmp_path: Path) -> None:
    """Chromium's own text measurements: every label fits inside its node."""
    site: Site = make_site(f"sqlite+aiosqlite:///{tmp_path / 'state' / 'miniflow.db'}", tmp_path)
    (site.dags / "big_200.py").write_text(BIG_DAG)
    site.cli("dags", "list")
    with webserver(site.env()) as server:
        browser.get(server.url + "/dags/big_200")
        count, overflowing, scrolls = browser.execute_script(MEASURE)
        assert (count, overflowing) == (200, [])
        assert scrolls  # ten columns: the graph scrolls in its box, the page keeps its width
        browser.execute_script("document.querySelector('.graph-wrap').scrollIntoView()")
        _shot(browser, "graph-200", tmp_path)
