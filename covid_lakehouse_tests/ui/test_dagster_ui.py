"""The UI as a user sees it: `covid-lakehouse up` (the `make up` entry point) in a real headless
Chromium: every domain's asset group is listed, a materialization launched from the UI succeeds
(followed through the GraphQL API), a download launched from the UI is followed by the real daemon
(the ny_testing sensor's run publishes every county), every domain's schedules and sensors are listed
with none in error, and a fresh `up` shows no failed run. Screenshots are saved to test-artifacts/ui/.

The daemon is a separate process: its progress is polled through GraphQL with a deadline."""

import importlib
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

from covid_lakehouse.defs.ny_testing.sensors import ny_testing_county_partitions
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


RUNS_QUERY = """query Runs($filter: RunsFilter) { runsOrError(filter: $filter) { ... on Runs { results {
  runId status assetSelection { path } tags { key value } } } } }"""
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
NY_SENSOR = ny_testing_county_partitions.name
COUNTY_PARTITIONS = 62  # the bundled rows.json snapshot (the live dataset's 62 counties)

# Every schedule and sensor of the code location with its state and latest tick.
INSTIGATORS_QUERY = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
  schedules { name scheduleState { status ticks(limit: 1) { status error { message } } } }
  sensors { name sensorState { status ticks(limit: 1) { status error { message } } } } } } } }"""


def _runs(port: int, **run_filter) -> list[dict]:
    return _graphql(port, RUNS_QUERY, {"filter": run_filter})["runsOrError"]["results"]


def _instigators(port: int) -> dict[str, dict]:
    """name -> {"kind", "status" (RUNNING/STOPPED), "tick" (latest, or None)} of every schedule and sensor."""
    out = {}
    for repo in _graphql(port, INSTIGATORS_QUERY)["repositoriesOrError"]["nodes"]:
        for kind, state_field in (("schedules", "scheduleState"), ("sensors", "sensorState")):
            for item in repo[kind]:
                state = item[state_field]
                out[item["name"]] = {"kind": kind, "status": state["status"],
                                     "tick": state["ticks"][0] if state["ticks"] else None}
    return out


def _domain_instigators() -> dict[str, set[str]]:
    """domain -> names of the schedules and sensors its definitions.py registers."""
    defs_dir = REPO / "covid_lakehouse" / "defs"
    out = {}
    for domain in sorted(p.name for p in defs_dir.iterdir() if (p / "definitions.py").exists()):
        defs = importlib.import_module(f"covid_lakehouse.defs.{domain}.definitions").defs
        out[domain] = {i.name for i in [*(defs.schedules or []), *(defs.sensors or [])]}
    return out


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


def _finished(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r["status"] in FINISHED]


def test_a_download_from_the_ui_is_followed_by_the_daemons_sensor_run_over_every_county(ui, services):
    driver, port = ui
    assert _instigators(port)[NY_SENSOR]["status"] == "RUNNING", "the county sensor must run by default in `up`"

    driver.get(f"http://127.0.0.1:{port}/assets/ny_testing/raw_rows_json")
    WebDriverWait(driver, 60).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "Materialize"))
    _click(driver, "//button[normalize-space(.)='Materialize']")
    raw = ["ny_testing", "raw_rows_json"]
    seen: list = []

    def download_done():
        seen[:] = [r for r in _runs(port) if {"path": raw} in (r["assetSelection"] or [])]
        return _finished(seen)

    (download,) = _wait_until(download_done, 240, lambda: f"the download launched from the UI (runs: {seen})")
    assert download["status"] == "SUCCESS", download

    # The daemon's sensor tick (every 60 s) registers the counties and requests one run over all of them.
    sensor_runs: list = []

    def sensor_run_done():
        sensor_runs[:] = _runs(port, tags=[{"key": "dagster/sensor_name", "value": NY_SENSOR}])
        return _finished(sensor_runs)

    (load,) = _wait_until(sensor_run_done, 420, lambda: f"the run of {NY_SENSOR} (runs: {sensor_runs}, "
                                                       f"sensor: {_instigators(port)[NY_SENSOR]})")
    assert load["status"] == "SUCCESS", load
    tags = {t["key"]: t["value"] for t in load["tags"]}
    assert "dagster/asset_partition_range_start" in tags and "dagster/asset_partition_range_end" in tags

    expected = {"numPartitions": COUNTY_PARTITIONS, "numMaterialized": COUNTY_PARTITIONS, "numFailed": 0}
    stats: dict = {}

    def every_county_materialized() -> bool:
        # The webserver's partition status is refreshed from the event log after the run ends, not with it.
        stats.update(_graphql(port, """{ assetNodeOrError(assetKey: {path: ["ny_testing", "county_tests"]}) {
            ... on AssetNode { partitionStats { numPartitions numMaterialized numFailed } } } }"""
                              )["assetNodeOrError"]["partitionStats"])
        return stats == expected

    _wait_until(every_county_materialized, 60, lambda: f"every county partition materialized ({stats})")
    driver.get(f"http://127.0.0.1:{port}/assets/ny_testing/county_tests?view=partitions")
    WebDriverWait(driver, 60).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"),
                                                                   f"Materialized ({COUNTY_PARTITIONS})"))
    driver.save_screenshot(str(ARTIFACTS / "ny_testing_county_partitions.png"))


def test_every_domains_schedules_and_sensors_are_listed_and_none_is_in_error(ui, services):
    driver, port = ui
    expected = _domain_instigators()
    assert set(expected) >= {"ads", "marketing", "ny_testing", "omop", "platform", "vaccines"}
    listed = _instigators(port)
    for domain, names in expected.items():
        assert names <= set(listed), f"{domain}: {sorted(names - set(listed))} not listed by the webserver"

    # Each running sensor has been evaluated by the daemon at least once (a tick finished), so "no error"
    # below is about real evaluations; schedules tick only at their cron time.
    def every_running_sensor_ticked():
        states = _instigators(port)
        waiting = [n for n, s in states.items() if s["kind"] == "sensors" and s["status"] == "RUNNING"
                   and (s["tick"] is None or s["tick"]["status"] == "STARTED")]
        return states if not waiting else None

    states = _wait_until(every_running_sensor_ticked, 240, "a finished tick of every running sensor")
    failing = {n: s["tick"]["error"] for n, s in states.items() if s["tick"] and s["tick"]["status"] == "FAILURE"}
    assert failing == {}

    driver.get(f"http://127.0.0.1:{port}/automation")
    everything = set().union(*expected.values())
    try:
        WebDriverWait(driver, 90).until(lambda d: everything <= set(d.find_element(By.TAG_NAME, "body").text.split()))
    except TimeoutException:
        driver.save_screenshot(str(ARTIFACTS / "automation_missing.png"))
        shown = set(driver.find_element(By.TAG_NAME, "body").text.split())
        raise AssertionError(f"not listed on the automation page: {sorted(everything - shown)}") from None
    driver.save_screenshot(str(ARTIFACTS / "automation.png"))


def test_a_fresh_up_shows_no_failed_run(ui, services):
    """Runs the daemon started on its own (the omop tenants sensor's run for the demo tenant, whose
    source `up` prepares before the daemon starts) and the ones above all end well."""
    _, port = ui
    runs: list = []

    def all_finished():
        runs[:] = _runs(port)
        return runs if len(_finished(runs)) == len(runs) else None

    _wait_until(all_finished, 420, lambda: f"every run to finish (runs: {[(r['runId'], r['status']) for r in runs]})")
    tenant_runs = [r for r in runs if {"key": "dagster/sensor_name", "value": "omop_tenants"} in r["tags"]]
    assert tenant_runs, "the omop_tenants sensor launched no run for the demo tenant"
    assert [r for r in runs if r["status"] != "SUCCESS"] == []
