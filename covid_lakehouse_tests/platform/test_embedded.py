"""The embedded stack: real servers on loopback, reused between commands, clear errors."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import boto3
import psycopg
import pytest

from covid_lakehouse.lib.embedded import EmbeddedStack, ServiceStartError, StackState
from covid_lakehouse.lib.migrate import migrate
from covid_lakehouse.lib.settings import BUCKETS, COVID_LAKEHOUSE_HOME

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_services_listen_on_loopback_with_roles_and_buckets(services, embedded_stack):
    assert services.warehouse_dsn.split("@")[1].startswith("127.0.0.1:")
    with psycopg.connect(services.warehouse_dsn) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "warehouse_writer"
        roles = {r for (r,) in conn.execute("select rolname from pg_roles")}
    assert {"warehouse_writer", "lakehouse_catalog", "dagster", "analyst"} <= roles
    client = boto3.client("s3", endpoint_url=services.s3_endpoint_url, aws_access_key_id=services.aws_access_key_id,
                          aws_secret_access_key=services.aws_secret_access_key, region_name="us-east-1")
    assert set(BUCKETS) <= {b["Name"] for b in client.list_buckets()["Buckets"]}


def test_s3_enforces_credentials(services):
    client = boto3.client("s3", endpoint_url=services.s3_endpoint_url, aws_access_key_id="wrong",
                          aws_secret_access_key="wrong-secret", region_name="us-east-1")
    with pytest.raises(Exception, match="(?i)access|denied|signature|invalid"):
        client.list_buckets()


def test_analyst_reads_published_tables_and_nothing_else(services, embedded_stack, pg, unique_schema):
    migrate(services.warehouse_dsn)  # the published tables exist (another test may have reset a domain)
    pg.execute(f'create schema "{unique_schema}"')  # a schema no migration published
    pg.execute(f'create table "{unique_schema}".t (id int)')
    with psycopg.connect(embedded_stack.state.analyst_dsn(), autocommit=True) as analyst:
        for published in ("ads.ads", "vaccines.people_per_dose", "marketing.ad_performance_daily",
                          "ny_testing_reference.geography_totals"):
            analyst.execute(f"select count(*) from {published}")
        for internal in ("ops.schema_migrations", "ads.archive_batches", f'"{unique_schema}".t'):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                analyst.execute(f"select count(*) from {internal}")
        with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)):
            analyst.execute("delete from ads.ads")


def test_a_second_stack_on_the_same_folder_reuses_the_running_servers(embedded_stack):
    again = EmbeddedStack(embedded_stack.home)
    settings = again.start()
    assert settings == embedded_stack.state.settings()
    assert again.started_here is False


def test_postgres_that_cannot_start_gives_a_clear_error(tmp_path):
    stack = EmbeddedStack(tmp_path / "broken")
    (stack.pgdata).mkdir(parents=True)
    (stack.pgdata / "PG_VERSION").write_text("not-a-version\n")  # a data folder postgres refuses
    with pytest.raises(ServiceStartError, match="embedded PostgreSQL"):
        stack.start()
    assert not (tmp_path / "broken" / "stack.json").exists()


def test_stop_then_start_keeps_data(tmp_path):
    stack = EmbeddedStack(tmp_path / "persist")
    settings = stack.start()
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        conn.execute("create table kept (v int)")
        conn.execute("insert into kept values (42)")
    stack.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(settings.warehouse_dsn, connect_timeout=2)
    restarted = EmbeddedStack(tmp_path / "persist")
    settings2 = restarted.start()
    try:
        with psycopg.connect(settings2.warehouse_dsn) as conn:
            assert conn.execute("select v from kept").fetchone()[0] == 42
    finally:
        restarted.stop()


def test_clean_after_stop_leaves_its_caller_alive_and_removes_the_home(tmp_path):
    # After a stop the state file records PID 0; signalling it used to hit the caller's process group, so
    # `make clean` printed "Terminated" and a script running it died. The script here runs the CLI as
    # `make clean` does, in its own session so a regression kills the script, not pytest.
    home = tmp_path / "home"
    stack = EmbeddedStack(home)
    stack.start()
    stack.stop()
    assert json.loads((home / "stack.json").read_text())["s3_pid"] == 0
    # The project's own Makefile, in a scratch project whose venv's covid-lakehouse is this one, so
    # `make clean` runs exactly as a user's does without removing this checkout's venv.
    project = tmp_path / "project"
    (project / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(REPO / "Makefile", project / "Makefile")
    cli = project / ".venv" / "bin" / "covid-lakehouse"
    cli.write_text(f"#!/bin/sh\nexec {sys.executable} -m covid_lakehouse.cli \"$@\"\n")
    cli.chmod(0o755)
    script = (
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-m', 'covid_lakehouse.cli', 'stop'], check=True)\n"
        f"subprocess.run(['make', '-C', {str(project)!r}, 'clean'], check=True)\n"
        "print('caller still running')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, COVID_LAKEHOUSE_HOME: str(home)},
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert "caller still running" in done.stdout
    assert not home.exists()
    assert not (project / ".venv").exists()  # make clean went on to remove the venv


def test_stop_and_clean_never_signal_a_process_that_is_not_our_server(tmp_path):
    # After a reboot the recorded PIDs may belong to anything; this stand-in waits on its stdin.
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        stack = EmbeddedStack(tmp_path / "rebooted")
        stack.pgdata.mkdir(parents=True)
        stack.logs.mkdir()
        (stack.pgdata / "postmaster.pid").write_text(f"{bystander.pid}\n{stack.pgdata}\n")
        stack.state_file.write_text(json.dumps(asdict(StackState(
            pg_port=1, pg_password="p", pg_pid=bystander.pid, s3_port=2, s3_pid=bystander.pid,
            s3_access_key="k", s3_secret_key="s"))))
        stack.stop()
        assert bystander.poll() is None
        stack.clean()
        assert bystander.poll() is None
        assert not stack.home.exists()
    finally:
        bystander.stdin.close()
        assert bystander.wait(timeout=10) == 0  # it ended on its own, untouched by any signal
