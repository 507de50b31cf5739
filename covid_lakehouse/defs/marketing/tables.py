"""The warehouse tables of the marketing domain (schema ``marketing``): one typed table per source and
the cross-platform model, with their natural keys. ``date`` is always the day in the ad account's own
time zone (as Facebook's date_start and Google's segments.date are), named in ``account_timezone``. Their DDL is in migrations/0001_marketing_tables.sql;
the specs here say what a load stages and how it merges."""

from dataclasses import dataclass

import pyarrow as pa
from psycopg import sql

from covid_lakehouse.lib.migrate import ensure_migrated

SCHEMA = "marketing"
MIGRATION_SCOPE = "marketing"  # the tables' DDL: covid_lakehouse/defs/marketing/migrations/


@dataclass(frozen=True)
class TableSpec:
    name: str
    arrow_schema: pa.Schema  # the columns a load stages (COPY order)
    key: tuple[str, ...]
    lineage: tuple[str, ...] = ("raw_object",)  # updated with the values, never compared
    row_version: str | None = None  # a source column that orders a row's versions: an older one is never merged

    @property
    def ident(self) -> sql.Composed:
        return sql.Identifier(SCHEMA, self.name)

    @property
    def staged(self) -> list[str]:
        return self.arrow_schema.names

    @property
    def values(self) -> list[str]:
        return [c for c in self.staged if c not in self.key and c not in self.lineage]


FACEBOOK = TableSpec(
    name="facebook_ad_insights_daily",
    arrow_schema=pa.schema([
        ("account_id", pa.string()), ("account_name", pa.string()), ("account_currency", pa.string()),
        ("campaign_id", pa.string()), ("campaign_name", pa.string()), ("adset_id", pa.string()),
        ("adset_name", pa.string()), ("ad_id", pa.string()), ("ad_name", pa.string()), ("date", pa.date32()),
        ("impressions", pa.int64()), ("clicks", pa.int64()), ("spend", pa.string()), ("actions", pa.string()),
        ("raw_object", pa.string()), ("account_timezone", pa.string()),  # table order: added by migration 0005
    ]),
    key=("account_id", "ad_id", "date"),
)

GOOGLE_ADS = TableSpec(
    name="google_ads_ad_daily",
    arrow_schema=pa.schema([
        ("customer_id", pa.string()), ("customer_name", pa.string()), ("currency_code", pa.string()),
        ("campaign_id", pa.string()), ("campaign_name", pa.string()), ("ad_group_id", pa.string()),
        ("ad_group_name", pa.string()), ("ad_id", pa.string()), ("date", pa.date32()),
        ("impressions", pa.int64()), ("clicks", pa.int64()), ("cost_micros", pa.int64()),
        ("conversions", pa.float64()), ("raw_object", pa.string()), ("account_timezone", pa.string()),
    ]),
    key=("customer_id", "ad_group_id", "ad_id", "date"),
)

CLEVERTAP = TableSpec(
    name="clevertap_events",
    arrow_schema=pa.schema([
        ("event_key", pa.string()), ("occurrence", pa.int32()), ("event_name", pa.string()),
        ("event_date", pa.date32()), ("event_ts", pa.timestamp("us", tz="UTC")), ("profile_object_id", pa.string()),
        ("platform", pa.string()), ("app_version", pa.string()), ("event_props", pa.string()),
        ("session_props", pa.string()), ("raw_object", pa.string()),
        ("key_version", pa.int32()), ("account_timezone", pa.string()),  # added by migration 0004
    ]),
    key=("event_key", "occurrence"),
)

RDS_CUSTOMERS = TableSpec(
    name="rds_customers",
    arrow_schema=pa.schema([
        ("customer_id", pa.int64()), ("email_sha256", pa.string()), ("country", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")), ("source_updated_at", pa.timestamp("us", tz="UTC")),
    ]),
    key=("customer_id",),
    lineage=(),
    row_version="source_updated_at",
)

RDS_ORDERS = TableSpec(
    name="rds_orders",
    arrow_schema=pa.schema([
        ("order_id", pa.int64()), ("customer_id", pa.int64()), ("status", pa.string()),
        ("amount", pa.string()), ("currency", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")), ("source_updated_at", pa.timestamp("us", tz="UTC")),
    ]),
    key=("order_id",),
    lineage=(),
    row_version="source_updated_at",
)

AD_PERFORMANCE = TableSpec(
    name="ad_performance_daily",
    arrow_schema=pa.schema([
        ("platform", pa.string()), ("account_id", pa.string()), ("account_name", pa.string()),
        ("campaign_id", pa.string()), ("campaign_name", pa.string()), ("ad_id", pa.string()), ("date", pa.date32()),
        ("impressions", pa.int64()), ("clicks", pa.int64()), ("spend", pa.string()), ("currency", pa.string()),
        ("conversions", pa.string()), ("account_timezone", pa.string()),
    ]),
    key=("platform", "account_id", "ad_id", "date"),
    lineage=(),
)

ALL = (FACEBOOK, GOOGLE_ADS, CLEVERTAP, RDS_CUSTOMERS, RDS_ORDERS, AD_PERFORMANCE)


def ensure_tables(conn) -> None:
    """Every marketing table exists once the domain's migrations have run (a no-op when up to date)."""
    ensure_migrated(conn, MIGRATION_SCOPE)
