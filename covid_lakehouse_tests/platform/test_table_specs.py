"""The Python descriptions of warehouse tables agree with the tables the DDL creates.

The DDL lives in the migrations (covid_lakehouse/defs/<domain>/migrations, covid_lakehouse/lib/migrations);
the domains also describe their tables in Python: what a load COPYs and in which order (marketing
TableSpec, the ads staging columns, ny_testing's parsed batches), the column schemas shown in Dagster
(ads, ny_testing, vaccines) and the keys a load merges on. Every migration is applied to a new database
of the embedded PostgreSQL (no other test's changes in it) and each spec is checked against
information_schema: column names (and order where the spec is a COPY or table order), types compatible
with the Arrow or SQL type the spec gives, and the spec's key equal to the table's primary key."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import NamedTuple

import dagster as dg
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from covid_lakehouse.defs.ads.api import ADS_ARROW_SCHEMA
from covid_lakehouse.defs.ads.assets import ADS_COLUMNS
from covid_lakehouse.defs.ads.warehouse import STAGING_COLUMNS
from covid_lakehouse.defs.marketing import tables as marketing
from covid_lakehouse.defs.ny_testing import parsing as ny_parsing
from covid_lakehouse.defs.ny_testing.asset_keys import COUNTY_TABLE_SCHEMA
from covid_lakehouse.defs.ny_testing.warehouse import (
    COUNTY_COLUMNS,
    COUNTY_SCHEMA,
    REFERENCE_SCHEMA,
    REFERENCE_TABLE,
    STAGING_SCHEMA,
    SourceVersion,
    Warehouse,
)
from covid_lakehouse.defs.vaccines import publish as vaccines
from covid_lakehouse.defs.vaccines.resources import DEFAULT_ALLOCATION_URLS
from covid_lakehouse.defs.vaccines.transform import dose_column
from covid_lakehouse.lib.migrate import migrate
from covid_lakehouse.lib.postgres import PostgresResource

pytestmark = pytest.mark.integration

# The PostgreSQL types (information_schema.columns.data_type) a column may have for the Arrow type that
# is COPYed into it as CSV. Strings also feed numeric (decimal amounts kept exact), jsonb and uuid columns.
ARROW_TO_PG = {
    pa.string(): {"text", "character varying", "numeric", "jsonb", "uuid"},
    pa.int32(): {"integer", "bigint"},
    pa.int64(): {"bigint"},
    pa.float64(): {"double precision"},
    pa.bool_(): {"boolean"},
    pa.date32(): {"date"},
    pa.timestamp("us", tz="UTC"): {"timestamp with time zone"},
}
# The short names the specs write, as information_schema spells them.
SQL_ALIASES = {"timestamptz": "timestamp with time zone", "int": "integer", "int8": "bigint", "bool": "boolean"}


class Column(NamedTuple):
    name: str
    data_type: str  # information_schema.columns.data_type
    has_default: bool
    generated: bool


def table_columns(conn: psycopg.Connection, schema: str, table: str) -> list[Column]:
    rows = conn.execute(
        "SELECT column_name, data_type, column_default IS NOT NULL, is_generated = 'ALWAYS' "
        "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (schema, table)).fetchall()
    assert rows, f"{schema}.{table} does not exist"
    return [Column(*r) for r in rows]


def primary_key(conn: psycopg.Connection, schema: str, table: str) -> tuple[str, ...]:
    rows = conn.execute(
        "SELECT k.column_name FROM information_schema.table_constraints c "
        "JOIN information_schema.key_column_usage k ON k.constraint_schema = c.constraint_schema "
        "AND k.constraint_name = c.constraint_name "
        "WHERE c.table_schema = %s AND c.table_name = %s AND c.constraint_type = 'PRIMARY KEY' "
        "ORDER BY k.ordinal_position", (schema, table)).fetchall()
    return tuple(r[0] for r in rows)


def assert_arrow_fits(arrow: pa.Schema, columns: list[Column], what: str) -> None:
    """Every field of ``arrow`` is a column of the table, of a type its values COPY into."""
    by_name = {c.name: c for c in columns}
    missing = [f.name for f in arrow if f.name not in by_name]
    assert not missing, f"{what}: {missing} are not columns of the table"
    wrong = {f.name: (str(f.type), by_name[f.name].data_type) for f in arrow
             if by_name[f.name].data_type not in ARROW_TO_PG[f.type]}
    assert not wrong, f"{what}: (arrow type, column type) that do not fit: {wrong}"


def assert_same_columns(described: list[tuple[str, str]], columns: list[Column], what: str) -> None:
    """``described`` (name, SQL type) is the table's columns, in table order, with the table's types."""
    assert [(n, SQL_ALIASES.get(t, t)) for n, t in described] == [(c.name, c.data_type) for c in columns], what


def declared_key(schema: dg.TableSchema) -> tuple[str, ...]:
    return tuple(c.name for c in schema.columns
                 if c.constraints.unique or (c.description or "").startswith("primary key"))


@pytest.fixture(scope="module")
def migrated(embedded_stack) -> Iterator[str]:
    """The DSN of a new database of the embedded PostgreSQL with every migration applied, as on a new
    deployment; dropped afterwards."""
    state = embedded_stack.state
    name = "specs_" + uuid.uuid4().hex[:10]
    writer = state.settings().warehouse_dsn
    with psycopg.connect(state.superuser_dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER warehouse_writer").format(sql.Identifier(name)))
    dsn = writer.rsplit("/", 1)[0] + "/" + name
    try:
        migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(state.superuser_dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def conn(migrated: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(migrated, autocommit=True) as connection:
        yield connection


@pytest.mark.parametrize("spec", marketing.ALL, ids=lambda s: s.name)
def test_marketing_specs_are_their_tables(conn, spec):
    columns = table_columns(conn, marketing.SCHEMA, spec.name)
    assert_arrow_fits(spec.arrow_schema, columns, spec.name)
    # The spec is the COPY column list: the table's columns in order, leaving out only those the
    # table fills itself (defaults such as loaded_at, generated columns).
    filled_by_table = [c.name for c in columns if c.has_default or c.generated]
    assert spec.staged == [c.name for c in columns if c.name not in filled_by_table]
    assert spec.key == primary_key(conn, marketing.SCHEMA, spec.name)
    assert conn.execute("SELECT to_regnamespace('marketing_staging') IS NOT NULL").fetchone()[0]


def test_ads_specs_are_the_ads_table(conn):
    columns = table_columns(conn, "ads", "ads")
    assert_same_columns([(c.name, c.type) for c in ADS_COLUMNS.columns], columns, "ADS_COLUMNS")
    assert declared_key(ADS_COLUMNS) == primary_key(conn, "ads", "ads") == ("ad_id",)
    # a parsed page and the staged columns upserted into ads.ads, in table order
    assert_arrow_fits(ADS_ARROW_SCHEMA, columns, "ADS_ARROW_SCHEMA")
    assert list(STAGING_COLUMNS) == [c.name for c in columns if c.name in STAGING_COLUMNS]
    assert STAGING_COLUMNS[0] == "ad_id"


def test_vaccines_columns_are_their_tables(conn):
    doses = [dose_column(m) for m in DEFAULT_ALLOCATION_URLS]  # the manufacturers the migration has columns for
    for table, described in ((vaccines.PEOPLE_TABLE, vaccines.people_columns(doses)),
                             (vaccines.EXCLUDED_TABLE, vaccines.excluded_columns(doses))):
        assert_same_columns([(n, t) for n, t, _ in described], table_columns(conn, vaccines.SCHEMA, table), table)
    assert primary_key(conn, vaccines.SCHEMA, vaccines.PEOPLE_TABLE) == ("state",)
    assert primary_key(conn, vaccines.SCHEMA, vaccines.EXCLUDED_TABLE) == ("jurisdiction",)


def test_ny_testing_tables_made_in_python_match_the_migration(conn, migrated):
    """The reference table exists by migration only; county tables and staging are made by the load.
    All must agree with the specs, and a load publishes into the migrated reference table."""
    warehouse = Warehouse(PostgresResource(dsn=migrated))
    staging = warehouse.staging_table("specs")
    warehouse.stage(staging, iter([]))
    version = SourceVersion("specs", datetime.now(UTC))
    warehouse.publish_county(staging, "Albany", "albany", datetime.now(UTC), version)
    warehouse.publish_reference(staging, datetime.now(UTC), version)  # upserts into the migrated table's columns
    assert primary_key(conn, REFERENCE_SCHEMA, REFERENCE_TABLE) == ("geography", "name", "test_date")

    county = table_columns(conn, COUNTY_SCHEMA, "albany")
    assert_same_columns([(c.name, c.type) for c in COUNTY_TABLE_SCHEMA.columns], county, "COUNTY_TABLE_SCHEMA")
    assert [c.name for c in county] == list(COUNTY_COLUMNS)
    assert declared_key(COUNTY_TABLE_SCHEMA) == primary_key(conn, COUNTY_SCHEMA, "albany")

    staged = table_columns(conn, STAGING_SCHEMA, "county_tests_specs")  # staging_table("specs")
    assert [c.name for c in staged] == ny_parsing.SCHEMA.names  # the parsed batches are COPYed in this order
    assert_arrow_fits(ny_parsing.SCHEMA, staged, "ny_testing parsing.SCHEMA")
