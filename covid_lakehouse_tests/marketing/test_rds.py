"""The RDS extraction against a real PostgreSQL source (the demo schema of covid_lakehouse_dev): incremental by
updated_at, merged on the primary key, e-mails hashed at the source, source schema changes reported."""

import hashlib
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from covid_lakehouse.defs.marketing.assets import ASSETS, RDS_CUSTOMERS_KEY, RDS_ORDERS_KEY
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse.defs.marketing.rds import RdsSourceResource

pytestmark = pytest.mark.integration


def run(first: datetime, last: datetime, resources: dict, instance) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, selection=[RDS_CUSTOMERS_KEY, RDS_ORDERS_KEY], resources=resources, instance=instance,
                          raise_on_error=False, tags={RANGE_START_TAG: f"{first:%Y-%m-%d}", RANGE_END_TAG: f"{last:%Y-%m-%d}"})


def orders_meta(result: dg.ExecuteInProcessResult) -> dict:
    events = result.asset_materializations_for_node(RDS_ORDERS_KEY.to_python_identifier())  # one per day
    return {k: v.value for k, v in events[0].metadata.items()}


def test_rows_are_extracted_by_updated_at_and_merged_on_the_primary_key(
        clean_marketing, rds_demo_source, marketing_resources, instance, pg: psycopg.Connection) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first, last = today - timedelta(days=45), today - timedelta(days=1)
    assert run(first, last, marketing_resources, instance).success

    expected = pg.execute("SELECT count(*) FROM marketing_rds_source.orders WHERE updated_at >= %s AND updated_at < %s",
                          (first, today)).fetchone()[0]
    assert 0 < expected == pg.execute("SELECT count(*) FROM marketing.rds_orders").fetchone()[0]
    email = pg.execute("SELECT email FROM marketing_rds_source.customers WHERE id = (SELECT min(customer_id) "
                       "FROM marketing.rds_customers)").fetchone()[0]
    assert pg.execute("SELECT email_sha256 FROM marketing.rds_customers ORDER BY customer_id LIMIT 1").fetchone()[0] == \
        hashlib.sha256(email.strip().lower().encode()).hexdigest()
    assert pg.execute("SELECT count(*) FROM marketing.rds_customers WHERE email_sha256 LIKE '%@%'").fetchone()[0] == 0

    # The app refunds an order yesterday: the look-back run over yesterday carries the change.
    changed_at = last + timedelta(hours=12)
    order_id = pg.execute("UPDATE marketing_rds_source.orders SET status = 'refunded', updated_at = %s "
                          "WHERE id = (SELECT min(id) FROM marketing_rds_source.orders WHERE status <> 'refunded') "
                          "RETURNING id", (changed_at,)).fetchone()[0]
    rerun = run(last - timedelta(days=1), last, marketing_resources, instance)

    assert rerun.success
    meta = orders_meta(rerun)
    assert meta["updated"] == 1 and meta["inserted"] == 0
    assert pg.execute("SELECT status, source_updated_at FROM marketing.rds_orders WHERE order_id = %s",
                      (order_id,)).fetchone() == ("refunded", changed_at)
    assert pg.execute("SELECT count(*) FROM marketing.rds_orders").fetchone()[0] == expected


def test_a_changed_source_schema_fails_naming_the_column(clean_marketing, rds_demo_source, marketing_resources,
                                                         instance, pg) -> None:
    pg.execute("ALTER TABLE marketing_rds_source.orders RENAME COLUMN amount TO total_amount")
    yesterday = datetime.now(UTC) - timedelta(days=1)

    result = run(yesterday, yesterday, marketing_resources, instance)

    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert 'rds: unexpected response schema in marketing_rds_source.orders: column "amount" does not exist' in \
        failure.step_failure_data.error.message
    assert pg.execute("SELECT count(*) FROM marketing.rds_orders").fetchone()[0] == 0


def test_an_explicit_dsn_is_used_read_only(services, monkeypatch, pg, unique_schema) -> None:
    pg.execute(f'CREATE SCHEMA "{unique_schema}"')
    pg.execute(f'CREATE TABLE "{unique_schema}".orders (id bigint PRIMARY KEY, customer_id bigint, status text, '
               'amount numeric, currency text, created_at timestamptz, updated_at timestamptz)')
    monkeypatch.setenv("MARKETING_RDS_DSN", services.warehouse_dsn)
    monkeypatch.setenv("MARKETING_RDS_SCHEMA", unique_schema)

    source = RdsSourceResource().source()

    assert source.schema == unique_schema
    with psycopg.connect(source.dsn) as conn:
        conn.read_only = True
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(f'INSERT INTO "{unique_schema}".orders (id) VALUES (1)')


def test_an_unset_dsn_fails_clearly_and_creates_nothing(clean_marketing, services, monkeypatch, pg) -> None:
    monkeypatch.delenv("MARKETING_RDS_DSN", raising=False)

    with pytest.raises(dg.Failure, match="MARKETING_RDS_DSN is not set: point it at the application database"):
        RdsSourceResource().source()
    assert pg.execute("SELECT to_regclass('marketing_rds_source.orders') IS NULL").fetchone()[0]  # no fake data
