"""Warehouse side of the load: staging, per-county upserts, the reference table and the analyst view.

Layout (the schemas and the reference table are made by defs/ny_testing/migrations/; county tables here):
  ny_testing.<county_slug>              one table per county, test_date primary key
  ny_testing.all_counties               view: every county table with a county column
  ny_testing_reference.geography_totals REGION / STATEWIDE rows (not counties), for reconciliation
  ny_testing_staging.county_tests_<run> UNLOGGED copy of one raw object, dropped when the load ends
                                        (or by the next load's sweep, lib/staging.py, if the run was killed)

Identifiers built from data are validated (parsing.county_slug, then validate_identifier) and quoted;
county names reach SQL as bound parameters or psycopg literals, never through string formatting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from covid_lakehouse.defs.ny_testing.parsing import MEASURES, UnsafeIdentifierError, county_slug
from covid_lakehouse.defs.ny_testing.spool import unit_codes
from covid_lakehouse.lib.migrate import ensure_migrated
from covid_lakehouse.lib.postgres import (
    PostgresResource,
    UpsertCounts,
    run_ddl,
    table_ident,
    validate_identifier,
)
from covid_lakehouse.lib.postgres import UnsafeIdentifierError as UnsafeTableError
from covid_lakehouse.lib.source_versions import SourceVersion, Superseded, claim
from covid_lakehouse.lib.staging import claim_staging, sweep_staging

MIGRATION_SCOPE = "ny_testing"  # schemas, reference table, analyst grants: defs/ny_testing/migrations/
COUNTY_SCHEMA = "ny_testing"  # one table per county + the all_counties view, nothing else
REFERENCE_SCHEMA = "ny_testing_reference"  # REGION / STATEWIDE rows, for reconciliation
STAGING_SCHEMA = "ny_testing_staging"  # one UNLOGGED table per running load, dropped after it
COUNTY = "COUNTY"
VIEW = "all_counties"
REFERENCE_TABLE = "geography_totals"
VERSIONS_TABLE = "table_versions"  # per published table: the raw download it reflects (migrations/0003)
COUNTY_COLUMNS = ("test_date", *MEASURES, "load_date")
# Dagster refuses these in partition keys (dagster._core.definitions.partitions.utils.base).
_BAD_PARTITION_KEY = re.compile(r"\.\.\.|[\x00-\x1f\x7f]")


def county_table(name: str) -> str:
    """The table of a county name; raises UnsafeIdentifierError naming the county when the name gives no
    safe identifier, takes the view's name, or cannot be a Dagster partition key."""
    slug = county_slug(name)
    try:
        validate_identifier(slug, what=f"table name for county {name!r}")
    except UnsafeTableError as err:
        raise UnsafeIdentifierError(str(err)) from None
    if slug == VIEW:
        raise UnsafeIdentifierError(f"county {name!r} would take the name of the view {VIEW!r}")
    if not can_be_partition_key(name):
        raise UnsafeIdentifierError(f"county {name!r} cannot be a partition key (control character or '...')")
    return slug


def can_be_partition_key(name: str) -> bool:
    return not _BAD_PARTITION_KEY.search(name)


def county_tables(names: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(table per usable county name, reason per unusable one). Several names may share a table: they are
    the source's spellings of one county over time ("St. Lawrence", later "St Lawrence"), loaded into one
    table. Two names of the same download sharing one is a conflict: see ``download_name_problems``."""
    tables: dict[str, str] = {}
    unusable: dict[str, str] = {}
    for name in dict.fromkeys(names):
        try:
            tables[name] = county_table(name)
        except UnsafeIdentifierError as err:
            unusable[name] = str(err)
    return tables, unusable


def download_name_problems(names: Iterable[str]) -> dict[str, str]:
    """Reason per county name of ONE download that cannot be loaded: unusable as a table or partition, or
    sharing its table with another name of the same download (then neither is loaded: which one's rows
    would the table hold?)."""
    tables, problems = county_tables(names)
    by_table: dict[str, list[str]] = {}
    for name, table in tables.items():
        by_table.setdefault(table, []).append(name)
    for table, group in by_table.items():
        for name in group if len(group) > 1 else ():
            others = " and ".join(repr(o) for o in sorted(group) if o != name)
            problems[name] = (
                f"counties {name!r} and {others} in the same download both map to table {COUNTY_SCHEMA}.{table}, "
                "so neither is published and the table keeps its rows. To resolve: if they are one county "
                "spelled two ways, the source must list one spelling (ask the publisher; the next download "
                "then loads it); if they are two counties, one must be renamed at the source")
    return problems


def _measure_defs() -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{} bigint NOT NULL").format(sql.Identifier(m)) for m in MEASURES)


def skipped(newer: Superseded) -> str:
    """What a run reports for a table it left alone: ``newer`` names a raw download by its key."""
    return f"skipped: {replace(newer, identity=f'download {newer.identity}')}"


@dataclass(frozen=True)
class CountyResult:
    county: str
    table: str  # schema.table, for people
    counts: UpsertCounts
    rows: int  # in the table after the load
    first_test_date: date | None
    last_test_date: date | None
    created: bool
    superseded: Superseded | None = None


class Warehouse:
    """The SQL of one load. Every method takes or opens its own connection (workers run in parallel)."""

    county_schema = COUNTY_SCHEMA
    reference_schema = REFERENCE_SCHEMA
    staging_schema = STAGING_SCHEMA

    def __init__(self, warehouse: PostgresResource, *, order_staging_above_mb: int | None = None) -> None:
        self.pg = warehouse
        self.order_staging_above_mb = order_staging_above_mb

    # -- staging ------------------------------------------------------------------------------------
    def staging_table(self, run_id: str) -> sql.Composed:
        return table_ident(self.staging_schema, "county_tests_" + re.sub(r"[^a-z0-9]", "", run_id.lower())[:32])

    def stage(self, staging: sql.Composed, batches: Iterable[pa.RecordBatch]) -> int:
        """COPY every parsed row (counties and reference rows) into an UNLOGGED table that the
        publishing workers read over their own connections; committed on return."""
        with self.pg.connection() as conn:
            ensure_migrated(conn, MIGRATION_SCOPE)  # the schemas and the reference table
            sweep_staging(conn, self.staging_schema)  # staging of runs no longer in progress (killed ones too)
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging))  # a retried attempt of this run
            conn.execute(sql.SQL(
                "CREATE UNLOGGED TABLE {} (geography text NOT NULL, county text NOT NULL, "
                "test_date date NOT NULL, {})").format(staging, _measure_defs()))
            claim_staging(conn, staging)
            rows = PostgresResource.copy_arrow(conn, staging, batches)
            conn.execute(sql.SQL("CREATE INDEX ON {} (geography, county, test_date)").format(staging))
            conn.execute(sql.SQL("ANALYZE {}").format(staging))
        return rows

    def order_staging(self, staging: sql.Composed) -> bool:
        """Rewrite the staged rows in (geography, county, test_date) order when they outgrow shared_buffers
        (or the configured ``order_staging_above_mb``); True if it did.

        The source lists every geography for a day before the next day, so each county's rows sit on
        nearly every page of the staging table: each county's upsert would read the whole table, from
        disk once it no longer fits in shared_buffers (62 x 550 MB at 100x the snapshot). In key order
        a county's rows are contiguous, and the audits' GROUP BY and window scans follow the index.
        Below that size the table is read from memory and the rewrite would cost more than it saves."""
        above = None if self.order_staging_above_mb is None else self.order_staging_above_mb * 1024 * 1024
        with self.pg.connection() as conn:
            name = staging.as_string(conn)
            big, index = conn.execute(
                "SELECT pg_relation_size(%s::regclass) > coalesce(%s, pg_size_bytes(current_setting('shared_buffers'))), "
                "(SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = %s::regclass LIMIT 1)",
                (name, above, name)).fetchone()
            if not big or index is None:
                return False
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")  # the sort, in memory as far as it goes
            conn.execute(sql.SQL("CLUSTER {} USING {}").format(staging, sql.Identifier(index)))
            conn.execute(sql.SQL("ANALYZE {}").format(staging))
        return True

    def drop_staging(self, staging: sql.Composed) -> None:
        with self.pg.connection() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging))

    # -- counties -----------------------------------------------------------------------------------
    def publish_county(self, staging: sql.Composed, county: str, slug: str, loaded_at: datetime,
                       version: SourceVersion) -> CountyResult:
        """Upsert one county's staged rows into its table (created on first sight): new dates are
        inserted, revised ones updated, identical ones untouched; load_date moves only with the data.
        Nothing is written when the table already reflects a newer download than ``version``."""
        target = table_ident(self.county_schema, slug)
        with self.pg.connection() as conn:
            newer = self.claim_version(conn, f"{self.county_schema}.{slug}", county, version)
            if newer is not None:
                return CountyResult(county, f"{self.county_schema}.{slug}", UpsertCounts(0, 0, 0), 0, None, None,
                                    False, newer)
            created = not PostgresResource.table_exists(conn, self.county_schema, slug)
            if created:
                conn.execute(sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (test_date date PRIMARY KEY, {}, load_date timestamptz NOT NULL)"
                ).format(target, _measure_defs()))
                conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
                    target, sql.Literal(f"NYS COVID-19 tests for {county} county (health.data.ny.gov xdss-u53e)")))
            counts = PostgresResource.upsert(
                conn, target=target, source=staging, key_columns=["test_date"], value_columns=list(MEASURES),
                touch_columns={"load_date": sql.Literal(loaded_at)},
                source_filter=sql.SQL("geography = {} AND county = {}").format(sql.Literal(COUNTY),
                                                                               sql.Literal(county)))
            rows, first, last = conn.execute(
                sql.SQL("SELECT count(*), min(test_date), max(test_date) FROM {}").format(target)).fetchone()
        return CountyResult(county, f"{self.county_schema}.{slug}", counts, rows, first, last, created)

    def claim_version(self, conn, target: str, county: str | None, version: SourceVersion) -> Superseded | None:
        """Claim ``target`` (schema.table) for ``version`` in the publishing transaction (lib/source_versions);
        the row also records the county name the table is published under (NULL for the reference table).
        The table predates the lib: it keeps the identity as ``raw_key`` (migrations/0003).

        ``published_at`` is the claim's time, not the run's ``load_date``: a run that started earlier
        can claim after another run published, and the row must not date its table's last publish
        before the rows that publish left."""
        return claim(conn, table_ident(self.reference_schema, VERSIONS_TABLE), {"target_table": target}, version,
                     datetime.now(UTC), identity_column="raw_key", also_set={"county": county})

    def refresh_view(self, tables: dict[str, str]) -> int:
        """(Re)create ny_testing.all_counties over every existing county table; returns how many.

        ``tables`` (county -> table, from the run's partitions) is completed by the tables other runs
        published (their version rows), and both are read under the view's lock: concurrent loads
        rebuild the view in turn, and each rebuild sees every table an earlier one published."""
        view = table_ident(self.county_schema, VIEW)
        with self.pg.connection() as conn:
            # Concurrent loads would otherwise race on the view's catalog row ("tuple concurrently updated").
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self.county_schema}.{VIEW}",))
            named = self.table_names(conn, tables)
            if not named:
                return 0
            cols = sql.SQL(", ").join(map(sql.Identifier, COUNTY_COLUMNS))
            union = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}::text AS county, {} FROM {}").format(
                    sql.Literal(county), cols, table_ident(self.county_schema, table))
                for table, county in sorted(named.items(), key=lambda item: item[1]))
            # An open transaction reading the view (an analyst's) must not hang the load: bounded waits.
            run_ddl(conn, sql.SQL("CREATE OR REPLACE VIEW {} AS {}").format(view, union),
                    relation=f"{self.county_schema}.{VIEW}", what="rebuilding the all-counties view "
                    "(the county tables are published)")
            conn.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(
                view, sql.Literal("Every ny_testing county table, with its county name (recreated by each load)")))
        return len(named)

    def table_names(self, conn, tables: dict[str, str]) -> dict[str, str]:
        """One county name per existing county table: the name it was last published under (its version
        row; tables only other runs know of too), else, for a county whose partitions are several
        spellings of it, the partition added last (``tables`` is in partition order)."""
        named = {table: county for county, table in tables.items()}
        prefix = f"{self.county_schema}."
        published = conn.execute(sql.SQL("SELECT target_table, county FROM {} WHERE county IS NOT NULL "
                                         "AND starts_with(target_table, %s)")
                                 .format(table_ident(self.reference_schema, VERSIONS_TABLE)), (prefix,)).fetchall()
        named.update({target.removeprefix(prefix): county for target, county in published})
        # one query for every county, not one each: this runs while the view lock is held
        qualified = [sql.SQL("{}").format(table_ident(self.county_schema, table)).as_string(conn) for table in named]
        existing = {name for (name,) in conn.execute(
            "SELECT name FROM unnest(%s::text[], %s::text[]) AS t(qualified, name) WHERE to_regclass(qualified) IS NOT NULL",
            (qualified, list(named))).fetchall()}
        return {table: county for table, county in named.items() if table in existing}

    # -- reference rows ---------------------------------------------------------------------------------
    def publish_reference(self, staging: sql.Composed, loaded_at: datetime,
                          version: SourceVersion) -> UpsertCounts | Superseded:
        """Upsert the non-county rows (REGION, STATEWIDE) into ny_testing_reference.geography_totals, unless
        it already reflects a newer download than ``version``."""
        target = table_ident(self.reference_schema, REFERENCE_TABLE)
        measures = sql.SQL(", ").join(map(sql.Identifier, MEASURES))
        source = sql.SQL("(SELECT geography, county AS name, test_date, {} FROM {} WHERE geography <> {}) AS staged"
                         ).format(measures, staging, sql.Literal(COUNTY))
        with self.pg.connection() as conn:
            newer = self.claim_version(conn, f"{self.reference_schema}.{REFERENCE_TABLE}", None, version)
            if newer is not None:
                return newer
            return PostgresResource.upsert(
                conn, target=target, source=source, key_columns=["geography", "name", "test_date"],
                value_columns=list(MEASURES), touch_columns={"load_date": sql.Literal(loaded_at)})


def staged_units(batches: Iterable[pa.RecordBatch], seen: set[tuple[str, str]]) -> Iterator[pa.RecordBatch]:
    """Pass batches through, noting each (geography, name) on the way (one read feeds COPY and this)."""
    for batch in batches:
        codes, unit_of = unit_codes(batch)
        seen.update(unit_of(code) for code in pc.unique(codes).to_pylist())
        yield batch
