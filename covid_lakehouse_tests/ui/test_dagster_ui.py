"""The UI as a user sees it: `covid-lakehouse up` (the `make up` entry point) in a real headless
Chromium: every domain's asset group is listed, a materialization launched from the UI succeeds
(followed through the GraphQL API), and screenshots are saved to test-artifacts/ui/."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from covid_lakehouse.lib.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.ui]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]


def _wait_until(condition, timeout: float, what: str):
    """Poll a condition with a deadline (the UI and daemon are separate processes)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except OSError as err:
            last = err
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what} ({last})")


@pytest.fixture(scope="module")
def ui(services, tmp_path_factory):
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert Path(binary).exists(), f"{binary} missing: run `make browser` (Debian's chromium + chromium-driver)"
    port = free_port()
    env = {**os.environ, "COVID_LAKEHOUSE_HOME": str(tmp_path_factory.mktemp("ui-home"))}
    log = open(tmp_path_factory.mktemp("ui-log") / "up.log", "w+")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "covid-lakehouse"), "up", "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until(lambda: proc.poll() is None and _graphql(port, "{ instance { daemonHealth { daemonStatus("
                    "daemonType: \"QUEUED_RUN_COORDINATOR\") { healthy } } } }")["instance"]["daemonHealth"]
                    ["daemonStatus"]["healthy"], 180, "the webserver and a healthy run queue daemon")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1600,1000"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            yield driver, port
        finally:
            driver.quit()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        log.seek(0)
        if proc.returncode != 0:
            print(log.read()[-5000:])


def _click(driver, xpath: str) -> None:
    """Click once the element is there and stable (the UI re-renders while data loads)."""

    def attempt(d) -> bool:
        try:
            d.find_element(By.XPATH, xpath).click()
            return True
        except (StaleElementReferenceException, ElementClickInterceptedException, NoSuchElementException):
            return False

    WebDriverWait(driver, 60).until(attempt)


def test_every_domain_asset_group_is_listed(ui, services):
    driver, port = ui
    from covid_lakehouse.definitions import code_location

    defs = code_location()

    groups = {}
    for key in defs.resolve_asset_graph().materializable_asset_keys:
        groups.setdefault(defs.resolve_asset_graph().get(key).group_name, key)
    for group, key in sorted(groups.items()):
        driver.get(f"http://127.0.0.1:{port}/locations/covid_lakehouse/asset-groups/{group}/list")
        try:
            # the UI shortens long names with an ellipsis: look for the link to the asset instead
            link = "/assets/" + "/".join(key.path)
            WebDriverWait(driver, 90).until(EC.presence_of_element_located((By.CSS_SELECTOR, f"a[href*='{link}']")))
        except TimeoutException:
            driver.save_screenshot(str(ARTIFACTS / f"group_{group}_missing.png"))
            raise AssertionError(f"asset group {group} (asset {key.to_user_string()}) not listed:\n"
                                 + driver.find_element(By.TAG_NAME, "body").text[:1500]) from None
    driver.get(f"http://127.0.0.1:{port}/locations/covid_lakehouse/asset-groups/platform")
    WebDriverWait(driver, 60).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "smoke_lakehouse"))
    driver.save_screenshot(str(ARTIFACTS / "asset_graph_platform.png"))


def test_materialize_from_the_ui_and_see_its_metadata(ui, services):
    driver, port = ui
    driver.get(f"http://127.0.0.1:{port}/assets/platform/smoke_warehouse")
    WebDriverWait(driver, 60).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "Latest materialization"))
    _click(driver, "//button[normalize-space(.)='Materialize']")
    driver.save_screenshot(str(ARTIFACTS / "after_click.png"))

    runs_query = ("{ runsOrError(filter: {pipelineName: \"__ASSET_JOB\"}) { ... on Runs { results { runId status "
                  "assetSelection { path } } } } }")

    seen: list = []

    def finished_run():
        # only the run launched here: sensors may start runs of other assets meanwhile
        runs = [r for r in _graphql(port, runs_query)["runsOrError"]["results"]
                if {"path": ["platform", "smoke_warehouse"]} in (r["assetSelection"] or [])]
        seen[:] = runs
        done = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        return done[0] if done else None

    run = _wait_until(finished_run, 240, lambda: f"the run launched from the UI (runs seen: {seen})")
    assert run["status"] == "SUCCESS"

    driver.get(f"http://127.0.0.1:{port}/assets/platform/smoke_warehouse")
    # The IO manager's metadata as the UI renders it: row count, column schema, the query.
    WebDriverWait(driver, 60).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "Row count"))
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "Row count\n1,000" in body
    assert "timestamptz" in body and 'SELECT * FROM "platform"."smoke_warehouse"' in body
    driver.save_screenshot(str(ARTIFACTS / "materialization_metadata.png"))
