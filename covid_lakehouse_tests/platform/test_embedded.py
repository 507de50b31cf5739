"""The embedded stack: real servers on loopback, reused between commands, clear errors."""

import boto3
import psycopg
import pytest

from covid_lakehouse.lib.embedded import EmbeddedStack, ServiceStartError
from covid_lakehouse.lib.migrate import migrate
from covid_lakehouse.lib.settings import BUCKETS

pytestmark = pytest.mark.integration


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
