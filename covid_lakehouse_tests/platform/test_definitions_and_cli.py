"""The code location loads, `dg check defs` passes, and the CLI's user-facing commands work against
the real services: demo, env, sql, and `up` starting and stopping every process."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from covid_lakehouse import cli, runtime
from covid_lakehouse.lib.embedded import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_definitions_load_with_every_domain_and_resource(services):
    from covid_lakehouse.definitions import code_location

    defs = code_location()

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"platform/smoke_warehouse", "platform/smoke_lakehouse"} <= keys
    assert {"warehouse", "warehouse_io_manager", "s3", "lakehouse", "http"} <= set(defs.resources)
    defs.resolve_all_job_defs()  # every job resolves against the resources


def test_demo_materializes_every_asset_and_reports_it(services, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COVID_LAKEHOUSE_HOME", str(tmp_path))
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "platform/smoke_warehouse" in out and "platform/smoke_lakehouse" in out
    assert "warehouse platform.smoke_warehouse: 1,000" in out
    assert "lakehouse platform.smoke: 1,000" in out
    assert ", 0 failed" in out and "FAIL " not in out
    # every domain's downstream asset, fed by its IO managers (ranking, shown per group: unpartitioned;
    # the others by their follow sensors' tick)
    for key in ("vaccines/people_per_dose_ranking", "ads/shown_per_group_daily", "ny_testing/positivity_7d",
                "omop/providers_per_specialty", "marketing/cost_per_conversion_daily"):
        assert key in out, key
    # the run history is kept in the Dagster instance the UI will show
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        assert instance.get_latest_materialization_event(dg.AssetKey(["platform", "smoke_lakehouse"])) is not None


def test_env_prints_exports_of_the_configured_services(services, capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"export WAREHOUSE_DSN='{services.warehouse_dsn}'" in out
    assert f"export S3_ENDPOINT_URL='{services.s3_endpoint_url}'" in out


def test_sql_joins_warehouse_and_lakehouse_tables(services, capsys, resources, instance):
    from covid_lakehouse.defs.platform.assets import smoke_lakehouse, smoke_warehouse

    assert dg.materialize([smoke_warehouse, smoke_lakehouse], resources=resources, instance=instance).success
    capsys.readouterr()
    assert cli.main(["sql", "select count(*) as n from lakehouse.platform.smoke s "
                            "join warehouse.platform.smoke_warehouse w using (id)"]) == 0
    assert capsys.readouterr().out.split() == ["n", "1000"]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def test_up_serves_the_ui_with_daemon_and_ctrl_c_stops_everything(services, tmp_path):
    port = free_port()
    env = {**os.environ, "COVID_LAKEHOUSE_HOME": str(tmp_path)}
    proc = subprocess.Popen([str(BIN / "covid-lakehouse"), "up", "--port", str(port)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        assets = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                data = _graphql(port, "{ assetNodes { assetKey { path } } instance { daemonHealth { "
                                      "daemonStatus(daemonType: \"SCHEDULER\") { healthy } } } }")
                assets = {"/".join(n["assetKey"]["path"]) for n in data["data"]["assetNodes"]}
                if data["data"]["instance"]["daemonHealth"]["daemonStatus"]["healthy"]:
                    break
            except OSError:
                pass
            time.sleep(0.5)  # polling a condition with a deadline, not synchronising on time
        assert assets and "platform/smoke_lakehouse" in assets, proc.stdout.read() if proc.poll() else assets
        children = _descendants(proc.pid)
        assert children, "webserver and daemon should be running"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    still_alive = [pid for pid in children if _alive(pid)]
    import psutil
    assert still_alive == [], [psutil.Process(p).cmdline() for p in still_alive]


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]  # noqa


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_runtime_points_domains_at_the_bundled_snapshots_unless_configured(services, monkeypatch, tmp_path):
    with runtime.services(stand_ins=True, home=tmp_path) as svc:
        assert svc.embedded is None  # external services mode: the session's servers via env vars
        urls = {name: value for name, value in svc.demo_env.items() if value.startswith("http")}
        assert urls, "at least one domain points at a mock API"
        for name, value in svc.demo_env.items():
            assert os.environ[name] == value
        for value in urls.values():
            assert value.startswith(svc.mock_api_url)
