"""A generated application database for the demo and the tests: schema marketing_rds_source in the
warehouse database with customers and orders whose updated_at spreads over the last weeks, like a live
app's. Generated once (only if empty); deterministic. The product reads it like any RDS source, through
MARKETING_RDS_DSN and MARKETING_RDS_SCHEMA (``demo_env``).

Writes: marketing_rds_source.customers, marketing_rds_source.orders."""

import random
from datetime import UTC, datetime, timedelta

import psycopg

from covid_lakehouse.defs.marketing.rds import DSN_ENV, SCHEMA_ENV

DEMO_SCHEMA = "marketing_rds_source"
CUSTOMERS = 300
ORDERS = 1_200
SPREAD_DAYS = 40
_COUNTRIES = ("US", "GB", "DE", "FR", "IN", "BR")
_STATUSES = ("placed", "paid", "shipped", "delivered", "refunded")

_DDL = (
    "CREATE SCHEMA IF NOT EXISTS marketing_rds_source",
    "CREATE TABLE IF NOT EXISTS marketing_rds_source.customers (id bigint PRIMARY KEY, email text NOT NULL, "
    "full_name text, phone text, country text, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS marketing_rds_source.orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL "
    "REFERENCES marketing_rds_source.customers (id), status text NOT NULL, amount numeric(12, 2) NOT NULL, "
    "currency text NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)",
    "CREATE INDEX IF NOT EXISTS customers_updated_at ON marketing_rds_source.customers (updated_at)",
    "CREATE INDEX IF NOT EXISTS orders_updated_at ON marketing_rds_source.orders (updated_at)",
)


def demo_env(warehouse_dsn: str) -> dict[str, str]:
    """The settings that point the marketing domain at the demo source."""
    return {DSN_ENV: warehouse_dsn, SCHEMA_ENV: DEMO_SCHEMA}


def ensure_demo_source(dsn: str, now: datetime | None = None) -> bool:
    """Create and fill the demo source unless it holds rows; True if it was filled now."""
    now = now or datetime.now(UTC)
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('covid_lakehouse_dev.sources.marketing_rds'))")
        for statement in _DDL:
            conn.execute(statement)
        if conn.execute("SELECT EXISTS (SELECT 1 FROM marketing_rds_source.customers)").fetchone()[0]:
            return False
        rng = random.Random(4)
        start = now - timedelta(days=SPREAD_DAYS)

        def moment() -> datetime:
            return start + timedelta(seconds=rng.randrange(SPREAD_DAYS * 86_400))

        customers = []
        for i in range(1, CUSTOMERS + 1):
            created = moment()
            updated = min(created + timedelta(days=rng.randrange(10)), now)
            customers.append((i, f" Customer.{i}@Example.com ", f"Customer {i}", f"+1555{i:07d}",
                              rng.choice(_COUNTRIES), created, updated))
        orders = []
        for i in range(1, ORDERS + 1):
            created = moment()
            updated = min(created + timedelta(hours=rng.randrange(72)), now)
            orders.append((i, rng.randrange(1, CUSTOMERS + 1), rng.choice(_STATUSES),
                           f"{rng.uniform(5, 400):.2f}", "USD", created, updated))
        with conn.cursor() as cur:
            with cur.copy("COPY marketing_rds_source.customers FROM STDIN") as copy:
                for row in customers:
                    copy.write_row(row)
            with cur.copy("COPY marketing_rds_source.orders FROM STDIN") as copy:
                for row in orders:
                    copy.write_row(row)
    return True
