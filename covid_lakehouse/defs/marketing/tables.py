"""The warehouse tables of the marketing domain (schema ``marketing``): one typed table per source and
the cross-platform model, with their natural keys. DDL is static SQL; nothing here is built from data."""

from dataclasses import dataclass

import pyarrow as pa
from psycopg import sql

SCHEMA = "marketing"


@dataclass(frozen=True)
class TableSpec:
    name: str
    ddl: str  # CREATE TABLE IF NOT EXISTS ... ({schema} is replaced by SCHEMA)
    arrow_schema: pa.Schema  # the columns a load stages (COPY order)
    key: tuple[str, ...]
    lineage: tuple[str, ...] = ("raw_object",)  # updated with the values, never compared

    @property
    def ident(self) -> sql.Composed:
        return sql.Identifier(SCHEMA, self.name)

    @property
    def staged(self) -> list[str]:
        return self.arrow_schema.names

    @property
    def values(self) -> list[str]:
        return [c for c in self.staged if c not in self.key and c not in self.lineage]


_TIMESTAMPS = "loaded_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now()"

FACEBOOK = TableSpec(
    name="facebook_ad_insights_daily",
    ddl=f"""CREATE TABLE IF NOT EXISTS {{schema}}.facebook_ad_insights_daily (
        account_id text NOT NULL, account_name text, account_currency text NOT NULL,
        campaign_id text NOT NULL, campaign_name text, adset_id text, adset_name text,
        ad_id text NOT NULL, ad_name text, date date NOT NULL,
        impressions bigint NOT NULL, clicks bigint NOT NULL, spend numeric(20, 6) NOT NULL,
        actions jsonb NOT NULL, raw_object text NOT NULL, {_TIMESTAMPS},
        PRIMARY KEY (account_id, ad_id, date))""",
    arrow_schema=pa.schema([
        ("account_id", pa.string()), ("account_name", pa.string()), ("account_currency", pa.string()),
        ("campaign_id", pa.string()), ("campaign_name", pa.string()), ("adset_id", pa.string()),
        ("adset_name", pa.string()), ("ad_id", pa.string()), ("ad_name", pa.string()), ("date", pa.date32()),
        ("impressions", pa.int64()), ("clicks", pa.int64()), ("spend", pa.string()), ("actions", pa.string()),
        ("raw_object", pa.string()),
    ]),
    key=("account_id", "ad_id", "date"),
)

GOOGLE_ADS = TableSpec(
    name="google_ads_ad_daily",
    ddl=f"""CREATE TABLE IF NOT EXISTS {{schema}}.google_ads_ad_daily (
        customer_id text NOT NULL, customer_name text, currency_code text NOT NULL,
        campaign_id text NOT NULL, campaign_name text, ad_group_id text NOT NULL, ad_group_name text,
        ad_id text NOT NULL, date date NOT NULL,
        impressions bigint NOT NULL, clicks bigint NOT NULL, cost_micros bigint NOT NULL,
        cost numeric(20, 6) GENERATED ALWAYS AS (cost_micros / 1000000.0) STORED,
        conversions double precision NOT NULL, raw_object text NOT NULL, {_TIMESTAMPS},
        PRIMARY KEY (customer_id, ad_group_id, ad_id, date))""",
    arrow_schema=pa.schema([
        ("customer_id", pa.string()), ("customer_name", pa.string()), ("currency_code", pa.string()),
        ("campaign_id", pa.string()), ("campaign_name", pa.string()), ("ad_group_id", pa.string()),
        ("ad_group_name", pa.string()), ("ad_id", pa.string()), ("date", pa.date32()),
        ("impressions", pa.int64()), ("clicks", pa.int64()), ("cost_micros", pa.int64()),
        ("conversions", pa.float64()), ("raw_object", pa.string()),
    ]),
    key=("customer_id", "ad_group_id", "ad_id", "date"),
)

CLEVERTAP = TableSpec(
    name="clevertap_events",
    ddl=f"""CREATE TABLE IF NOT EXISTS {{schema}}.clevertap_events (
        event_key text NOT NULL, occurrence integer NOT NULL, event_name text NOT NULL,
        event_date date NOT NULL, event_ts timestamptz NOT NULL, profile_object_id text,
        platform text, app_version text, event_props jsonb NOT NULL, session_props jsonb NOT NULL,
        raw_object text NOT NULL, {_TIMESTAMPS},
        PRIMARY KEY (event_key, occurrence))""",
    arrow_schema=pa.schema([
        ("event_key", pa.string()), ("occurrence", pa.int32()), ("event_name", pa.string()),
        ("event_date", pa.date32()), ("event_ts", pa.timestamp("us", tz="UTC")), ("profile_object_id", pa.string()),
        ("platform", pa.string()), ("app_version", pa.string()), ("event_props", pa.string()),
        ("session_props", pa.string()), ("raw_object", pa.string()),
    ]),
    key=("event_key", "occurrence"),
)

RDS_CUSTOMERS = TableSpec(
    name="rds_customers",
    ddl=f"""CREATE TABLE IF NOT EXISTS {{schema}}.rds_customers (
        customer_id bigint PRIMARY KEY, email_sha256 text, country text,
        created_at timestamptz NOT NULL, source_updated_at timestamptz NOT NULL, {_TIMESTAMPS})""",
    arrow_schema=pa.schema([
        ("customer_id", pa.int64()), ("email_sha256", pa.string()), ("country", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")), ("source_updated_at", pa.timestamp("us", tz="UTC")),
    ]),
    key=("customer_id",),
    lineage=(),
)

RDS_ORDERS = TableSpec(
    name="rds_orders",
    ddl=f"""CREATE TABLE IF NOT EXISTS {{schema}}.rds_orders (
        order_id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL,
        amount numeric(14, 2) NOT NULL, currency text NOT NULL,
        created_at timestamptz NOT NULL, source_updated_at timestamptz NOT NULL, {_TIMESTAMPS})""",
    arrow_schema=pa.schema([
        ("order_id", pa.int64()), ("customer_id", pa.int64()), ("status", pa.string()),
        ("amount", pa.string()), ("currency", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")), ("source_updated_at", pa.timestamp("us", tz="UTC")),
    ]),
    key=("order_id",),
    lineage=(),
)

AD_PERFORMANCE = TableSpec(
    name="ad_performance_daily",
    ddl=f"""CREATE TABLE IF NOT EXISTS {{schema}}.ad_performance_daily (
        platform text NOT NULL, account_id text NOT NULL, account_name text,
        campaign_id text NOT NULL, campaign_name text, ad_id text NOT NULL, date date NOT NULL,
        impressions bigint NOT NULL, clicks bigint NOT NULL, spend numeric(20, 6) NOT NULL,
        currency text NOT NULL, conversions numeric(20, 6) NOT NULL, {_TIMESTAMPS},
        PRIMARY KEY (platform, account_id, ad_id, date))""",
    arrow_schema=pa.schema([
        ("platform", pa.string()), ("account_id", pa.string()), ("account_name", pa.string()),
        ("campaign_id", pa.string()), ("campaign_name", pa.string()), ("ad_id", pa.string()), ("date", pa.date32()),
        ("impressions", pa.int64()), ("clicks", pa.int64()), ("spend", pa.string()), ("currency", pa.string()),
        ("conversions", pa.string()),
    ]),
    key=("platform", "account_id", "ad_id", "date"),
    lineage=(),
)

ALL = (FACEBOOK, GOOGLE_ADS, CLEVERTAP, RDS_CUSTOMERS, RDS_ORDERS, AD_PERFORMANCE)


def ensure_tables(conn, *specs: TableSpec) -> None:
    # Runs of different sources start together; concurrent CREATE .. IF NOT EXISTS can still collide.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('covid_lakehouse.marketing.ddl'))")
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    for spec in specs:
        conn.execute(sql.SQL(spec.ddl.replace("{schema}", "{}")).format(sql.Identifier(SCHEMA)))
