"""The vaccines tables in the warehouse and their write-audit-publish.

vaccines.people_per_dose (one row per state and DC) and vaccines.excluded_jurisdictions (territories
and federal entities with their doses) are published together in ONE transaction:

1. lock (one publisher at a time), create the schema/tables if missing, add a doses_<manufacturer>
   column for a newly configured manufacturer (ALTER TABLE .. ADD COLUMN, only when it is missing);
2. stage: COPY the new rows into temporary tables shaped like the targets (dropped at commit);
3. audit the staged rows (audit_or_raise): a failing blocking audit raises, the transaction rolls
   back, DDL included, and readers keep seeing the published tables;
4. publish: upsert by key (INSERT .. ON CONFLICT DO UPDATE only where a value differs) and delete keys
   no longer staged. Readers see the old tables or the new ones, never a mix (MVCC); rows whose values
   did not change keep their loaded_at, so an unchanged source changes nothing. Before the merge the
   publish claims the download it reflects in vaccines.source_versions (lib/source_versions.py): a run
   whose download is older than the published one merges nothing and returns ``superseded``.

A manufacturer removed from the configuration keeps its column, NULL in every row after the next
publish (NULL = "not in the current configuration", 0 = "configured, no doses").
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd
import psycopg
import pyarrow as pa
from psycopg import sql

from covid_lakehouse.defs.vaccines.transform import STATES, Result
from covid_lakehouse.lib.migrate import ensure_migrated
from covid_lakehouse.lib.postgres import (
    PostgresResource,
    UpsertCounts,
    run_ddl,
    table_ident,
    validate_identifier,
)
from covid_lakehouse.lib.source_versions import SourceVersion, Superseded, claim
from covid_lakehouse.lib.wap import Audit, AuditResult, audit_or_raise

SCHEMA = "vaccines"
PEOPLE_TABLE = "people_per_dose"
EXCLUDED_TABLE = "excluded_jurisdictions"
VERSIONS_TABLE = "source_versions"  # the download the tables reflect (migrations/0003)
MIGRATION_SCOPE = "vaccines"  # the tables' DDL: covid_lakehouse/defs/vaccines/migrations/
_LOCK_KEY = "vaccines.people_per_dose publish"


# ---- what was staged, handed to every audit --------------------------------------------------------


@dataclass(frozen=True)
class SourceTotals:
    """Figures computed from the parsed sources themselves, independently of the transform."""

    population: int  # every county row of the population source
    population_outside: dict[str, int]  # source population in jurisdictions that are not a state/DC
    doses: dict[str, int]  # dose column -> 1st + 2nd doses over every source row of that manufacturer
    truncation_warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Staged:
    conn: psycopg.Connection
    people: sql.Composable
    excluded: sql.Composable
    dose_columns: list[str]
    expected: SourceTotals


def _scalar(conn: psycopg.Connection, query: sql.Composable):
    return conn.execute(query).fetchone()[0]


def audit_fifty_one_rows(s: Staged) -> AuditResult:
    states = [r[0] for r in s.conn.execute(sql.SQL("SELECT state FROM {}").format(s.people)).fetchall()]
    missing = sorted(set(STATES) - set(states))
    unexpected = sorted(set(states) - set(STATES))
    duplicated = sorted({x for x in states if states.count(x) > 1})
    passed = len(states) == 51 and not (missing or unexpected or duplicated)
    detail = "; ".join(
        f"{label}: {', '.join(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("duplicated", duplicated))
        if names
    )
    description = f"{len(states)} rows" + (", one per state and DC" if passed else f" (expected 51; {detail})")
    return AuditResult(passed, description, {"rows": len(states), "missing": ", ".join(missing),
                                             "unexpected": ", ".join(unexpected)})


def audit_population_total(s: Staged) -> AuditResult:
    table_total = int(_scalar(s.conn, sql.SQL("SELECT coalesce(sum(population), 0) FROM {}").format(s.people)))
    source_total = s.expected.population
    passed = table_total == source_total
    description = f"table {table_total:,} = source total {source_total:,}"
    if not passed:
        description = f"table {table_total:,} != source total {source_total:,} (difference {source_total - table_total:,})"
        if s.expected.population_outside:
            outside = ", ".join(f"{k}: {v:,}" for k, v in sorted(s.expected.population_outside.items()))
            description += (f"; the population source counts people outside the 50 states and DC ({outside}): "
                            "point VACCINES_POPULATION_URL at a file of the 50 states and DC only")
    return AuditResult(passed, description, {"table_total": table_total, "source_total": source_total,
                                             "difference": source_total - table_total})


def audit_doses_reconcile(s: Staged) -> AuditResult:
    problems: list[str] = []
    metadata: dict[str, int] = {}
    for column in [*s.dose_columns, "total_doses"]:
        ident = sql.Identifier(column)
        included = int(_scalar(s.conn, sql.SQL("SELECT coalesce(sum({}), 0) FROM {}").format(ident, s.people)))
        excluded = int(_scalar(s.conn, sql.SQL("SELECT coalesce(sum({}), 0) FROM {}").format(ident, s.excluded)))
        source = sum(s.expected.doses.values()) if column == "total_doses" else s.expected.doses[column]
        metadata |= {f"{column}_included": included, f"{column}_excluded": excluded, f"{column}_source": source}
        if included + excluded != source:
            problems.append(f"{column}: included {included:,} + excluded {excluded:,} != source {source:,}")
    row_sum = sql.SQL(" + ").join(sql.SQL("coalesce({}, 0)").format(sql.Identifier(c)) for c in s.dose_columns)
    for table, label in ((s.people, "people_per_dose"), (s.excluded, "excluded_jurisdictions")):
        bad = _scalar(s.conn, sql.SQL("SELECT count(*) FROM {} WHERE total_doses <> {}").format(table, row_sum))
        if bad:
            problems.append(f"{bad} {label} row(s) whose total_doses is not the sum of the manufacturers' doses")
    total = sum(s.expected.doses.values())
    description = "; ".join(problems) or f"included + excluded = {total:,} doses, every source row"
    return AuditResult(not problems, description, metadata)


def audit_sources_complete(s: Staged) -> AuditResult:
    warnings = s.expected.truncation_warnings
    if not warnings:
        return AuditResult(True, "no allocation source looks truncated")
    return AuditResult(False, " | ".join(warnings), {"truncated_sources": len(warnings)})


AUDITS = [
    Audit("fifty_one_rows", audit_fifty_one_rows, blocking=True,
          description="exactly 51 rows: the 50 states and DC, each once"),
    Audit("population_total", audit_population_total, blocking=True,
          description="the states' populations add up to the population source's total (327,167,434 for 2018)"),
    Audit("doses_reconcile", audit_doses_reconcile, blocking=True,
          description="doses in the table + excluded jurisdictions = the sum of every source row, per manufacturer"),
    Audit("sources_not_truncated", audit_sources_complete, blocking=False,
          description="WARN when an allocation source looks cut at the Socrata API's 1,000-row default"),
]


# ---- tables ----------------------------------------------------------------------------------------


def people_columns(dose_columns: Sequence[str]) -> list[tuple[str, str, str]]:
    """(name, SQL type, description) of the columns this run writes, in table order."""
    return [
        ("state", "text", "state or District of Columbia"),
        ("population", "bigint", "2018 population estimate (sum of the state's counties)"),
        *[(c, "bigint", f"1st + 2nd dose allocations, {c.removeprefix('doses_')}") for c in dose_columns],
        ("total_doses", "bigint", "doses over every configured manufacturer"),
        ("people_per_dose", "double precision", "population / total_doses (NULL without doses)"),
        ("first_allocation_week", "date", "first week with a non-zero allocation"),
        ("last_allocation_week", "date", "last week with a non-zero allocation"),
        ("loaded_at", "timestamptz", "when the row's current values were first published"),
    ]


def excluded_columns(dose_columns: Sequence[str]) -> list[tuple[str, str, str]]:
    return [
        ("jurisdiction", "text", "territory or federal entity, as the CDC names it"),
        *[(c, "bigint", f"1st + 2nd dose allocations, {c.removeprefix('doses_')}") for c in dose_columns],
        ("total_doses", "bigint", "doses over every configured manufacturer"),
        ("loaded_at", "timestamptz", "when the row's current values were first published"),
    ]


def _add_configured_columns(conn: psycopg.Connection, table: str, columns: list[tuple[str, str, str]]) -> None:
    target = table_ident(SCHEMA, table)
    existing = set(table_columns(conn, table))
    for name, sqltype, _ in columns:
        if name not in existing:  # a newly configured manufacturer: nullable, NULL until published
            run_ddl(conn, sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                target, sql.Identifier(validate_identifier(name, what="column")), sql.SQL(sqltype)),
                relation=f"{SCHEMA}.{table}", what=f"adding column {name}")


def ensure_tables(conn: psycopg.Connection, dose_columns: Sequence[str]) -> None:
    """The tables come from the domain's migrations; configured manufacturers beyond the defaults add
    their dose column here (configuration-driven and additive, so not a migration file)."""
    ensure_migrated(conn, MIGRATION_SCOPE)
    _add_configured_columns(conn, PEOPLE_TABLE, people_columns(dose_columns))
    _add_configured_columns(conn, EXCLUDED_TABLE, excluded_columns(dose_columns))


def table_columns(conn: psycopg.Connection, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position", (SCHEMA, table)).fetchall()]


# ---- arrow ---------------------------------------------------------------------------------------


def _date_array(values: pd.Series) -> pa.Array:
    return pa.array(values, pa.timestamp("ns"), from_pandas=True).cast(pa.date32())


def people_arrow(result: Result, dose_columns: Sequence[str]) -> pa.Table:
    t = result.table
    return pa.table({
        "state": pa.array(t["state"], pa.string()),
        "population": pa.array(t["population"], pa.int64()),
        **{c: pa.array(t[c], pa.int64()) for c in dose_columns},
        "total_doses": pa.array(t["total_doses"], pa.int64()),
        "people_per_dose": pa.array(t["people_per_dose"], pa.float64(), from_pandas=True),  # NaN -> NULL
        "first_allocation_week": _date_array(t["first_allocation_week"]),
        "last_allocation_week": _date_array(t["last_allocation_week"]),
    })


def excluded_arrow(result: Result, dose_columns: Sequence[str]) -> pa.Table:
    e = result.excluded
    return pa.table({
        "jurisdiction": pa.array(e["jurisdiction"], pa.string()),
        **{c: pa.array(e[c] if c in e else [0] * len(e), pa.int64()) for c in dose_columns},
        "total_doses": pa.array(e["total_doses"], pa.int64()),
    })


# ---- write-audit-publish -------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishOutcome:
    people: UpsertCounts
    people_deleted: int
    excluded: UpsertCounts
    excluded_deleted: int
    superseded: Superseded | None = None  # the tables reflect a newer download: nothing was merged

    @property
    def changed(self) -> int:
        return (self.people.inserted + self.people.updated + self.people_deleted
                + self.excluded.inserted + self.excluded.updated + self.excluded_deleted)


def _merge(conn: psycopg.Connection, table: str, staging: sql.Composable, key: str) -> tuple[UpsertCounts, int]:
    target = table_ident(SCHEMA, table)
    values = [c for c in table_columns(conn, table) if c not in (key, "loaded_at")]
    counts = PostgresResource.upsert(conn, target=target, source=staging, key_columns=[key], value_columns=values,
                                     touch_columns={"loaded_at": sql.SQL("now()")})
    deleted = conn.execute(sql.SQL("DELETE FROM {} t WHERE NOT EXISTS (SELECT 1 FROM {} s WHERE s.{} = t.{})").format(
        target, staging, sql.Identifier(key), sql.Identifier(key))).rowcount
    return counts, deleted


def write_audit_publish(conn: psycopg.Connection, result: Result, dose_columns: Sequence[str],
                        expected: SourceTotals, *, asset_key: dg.AssetKey, version: SourceVersion
                        ) -> Iterator[dg.AssetCheckResult]:
    """Stage, audit and publish both tables inside ``conn``'s transaction (see the module docstring).
    Yields the audits' check results; returns a PublishOutcome (use ``yield from``), ``superseded`` when
    the tables already reflect a newer download than ``version`` (then nothing is merged)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_LOCK_KEY,))
    ensure_tables(conn, dose_columns)
    people = PostgresResource.create_staging_like(conn, table_ident(SCHEMA, PEOPLE_TABLE), "vaccines_people_stage")
    excluded = PostgresResource.create_staging_like(conn, table_ident(SCHEMA, EXCLUDED_TABLE),
                                                    "vaccines_excluded_stage")
    PostgresResource.copy_arrow(conn, people, people_arrow(result, dose_columns))
    PostgresResource.copy_arrow(conn, excluded, excluded_arrow(result, dose_columns))

    staged = Staged(conn, people, excluded, list(dose_columns), expected)
    yield from audit_or_raise(AUDITS, staged, asset_key=asset_key, asset_label=asset_key.to_user_string())

    # after the audits (the check results describe this run's rows either way), under the publish lock
    newer = claim(conn, table_ident(SCHEMA, VERSIONS_TABLE), {"published": PEOPLE_TABLE}, version,
                  _scalar(conn, sql.SQL("SELECT now()")))
    if newer is not None:
        return PublishOutcome(UpsertCounts(0, 0, 0), 0, UpsertCounts(0, 0, 0), 0, superseded=newer)
    people_counts, people_deleted = _merge(conn, PEOPLE_TABLE, people, "state")
    excluded_counts, excluded_deleted = _merge(conn, EXCLUDED_TABLE, excluded, "jurisdiction")
    return PublishOutcome(people_counts, people_deleted, excluded_counts, excluded_deleted)
