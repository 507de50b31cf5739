"""The code location as a Dagster engineer meets it: it loads with no service and no secret, its specs
match a reviewed snapshot, and `dg check defs`, `dg list defs` and `dg dev` work in a bare shell.

A change to any asset, check, job, schedule or sensor shows up here as a snapshot diff; after reviewing
it, refresh the snapshot with `UPDATE_DEFS_SNAPSHOT=1 .venv/bin/pytest covid_lakehouse_tests/platform/test_defs.py`."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg

from covid_lakehouse.lib.embedded import free_port
from covid_lakehouse.lib.settings import EXTERNAL_SERVICE_VARS
from covid_lakehouse.runtime import terminate_tree

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SNAPSHOT = Path(__file__).with_name("defs_snapshot.json")
# Nothing listens here: loading the definitions must not connect to anything.
PLACEHOLDER_ENV = {
    "WAREHOUSE_DSN": "postgresql://placeholder:placeholder@127.0.0.1:9/warehouse",
    "S3_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "placeholder",
    "AWS_SECRET_ACCESS_KEY": "placeholder",
}


def _bare_env(home: Path) -> dict[str, str]:
    """What `env -i` leaves, plus a PATH to the venv (as an activated venv has) and a HOME."""
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home)}


def _specs(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "owners": list(node.owners),
            "kinds": sorted(node.kinds),
            "partitions": type(node.partitions_def).__name__ if node.partitions_def else None,
            "external": node.is_external,
            "freshness": node.freshness_policy is not None,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "code_reference": "dagster/code_references" in node.metadata,
        }
    checks = sorted(
        f"{key.asset_key.to_user_string()}:{key.name}{' (blocking)' if graph.get_check_spec(key).blocking else ''}"
        for key in graph.asset_check_keys)
    schedules = {s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone} for s in defs.schedules or []}
    return {
        "assets": assets,
        "asset_checks": checks,
        "jobs": sorted(j.name for j in defs.jobs or []),
        "schedules": dict(sorted(schedules.items())),
        "sensors": sorted(s.name for s in defs.sensors or []),
        "resources": sorted(defs.resources or {}),
    }


def test_definitions_load_without_services_or_secrets_and_match_the_snapshot(monkeypatch):
    for name in (*EXTERNAL_SERVICE_VARS, "LAKEHOUSE_CATALOG_DSN", "DAGSTER_STORAGE_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in PLACEHOLDER_ENV.items():
        monkeypatch.setenv(name, value)
    from covid_lakehouse.definitions import code_location

    defs = code_location()
    defs.resolve_all_job_defs()  # every job resolves against the resources
    specs = _specs(defs)
    if os.environ.get("UPDATE_DEFS_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(specs, indent=2) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert specs == expected, f"the definitions changed: review, then refresh {SNAPSHOT.name} (see module docstring)"
    # policies applied once at the root: every asset has an owner, every asset computed here a code reference
    assert all(a["owners"] for a in specs["assets"].values())
    assert all(a["code_reference"] for a in specs["assets"].values() if not a["external"])


def test_dg_check_and_list_defs_in_a_bare_shell(tmp_path):
    env = _bare_env(tmp_path)
    check = subprocess.run([str(BIN / "dg"), "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All definitions loaded successfully" in check.stdout + check.stderr
    listed = subprocess.run([str(BIN / "dg"), "list", "defs", "--json"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    assets = {a["asset_key"] for a in listing["assets"]}
    expected = json.loads(SNAPSHOT.read_text())
    assert assets == set(expected["assets"])
    assert {s["name"] for s in listing["schedules"]} == set(expected["schedules"])
    assert {s["name"] for s in listing["sensors"]} == set(expected["sensors"])


def _location_status(port: int) -> list[tuple[str, str, str | None]]:
    query = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
      locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
    return [(e["name"], e["loadStatus"], (e["locationOrLoadError"] or {}).get("message")) for e in entries]


def test_dg_dev_serves_the_code_location_in_a_bare_shell(tmp_path):
    port = free_port()
    proc = subprocess.Popen([str(BIN / "dg"), "dev", "-p", str(port), "-h", "127.0.0.1"], cwd=REPO,
                            env=_bare_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                status = _location_status(port)
            except OSError:
                status = None
            if status and all(s == "LOADED" for _, s, _ in status):
                break
            time.sleep(0.5)  # polling a separate process until it serves
        assert status == [("covid_lakehouse", "LOADED", None)], status
    finally:
        terminate_tree([proc])  # as `covid-lakehouse up` stops its children: SIGTERM, then SIGKILL after 20 s
