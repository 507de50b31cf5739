"""Audits of the staged rows, run before anything is published (write-audit-publish, lib/wap.py).

Each audit covers every unit of the load at once - the run's counties plus the reference rows (REGION,
STATEWIDE) - and names the failing units in its metadata, so that a county failing a blocking audit is
held back while the others are published. Check results apply to the asset (there is one per run, not
one per partition); the per-county details are in their metadata.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import psycopg
from psycopg import sql

from covid_lakehouse.defs.ny_testing.parsing import MEASURES, BadRows
from covid_lakehouse.defs.ny_testing.warehouse import (
    COUNTY,
    can_be_partition_key,
    county_tables,
    download_name_problems,
)
from covid_lakehouse.lib.wap import Audit, AuditResult

_MD_ROWS = 25  # markdown tables list the first failures; counts cover all of them


@dataclass(frozen=True)
class Staged:
    """What every audit receives: the staged rows and the context to judge them."""

    conn: psycopg.Connection
    table: sql.Composable
    counties: Sequence[str]  # the run's county partitions: the county units under audit
    rows_updated_at: int | None  # the source's meta.view.rowsUpdatedAt (epoch seconds)
    today: date
    max_age_days: int
    in_source: frozenset[str]  # every county name of the download
    bad_rows: BadRows  # rows the parse left out for a bad value, per unit


@dataclass(frozen=True)
class Blocked:
    """Units a blocking audit failed for: they are not published this run."""

    counties: frozenset[str]
    reference: bool  # a REGION/STATEWIDE row failed: the reference table is left as it was
    everything: bool  # an audit could not tell which units failed: nothing is published

    def county_blocked(self, county: str) -> bool:
        return self.everything or county in self.counties


def blocked_units(failures: Sequence[tuple[str, AuditResult]]) -> Blocked:
    counties: set[str] = set()
    reference = everything = False
    for _, result in failures:
        if "failing_counties" not in result.metadata:  # the audit raised: its verdict covers nothing
            everything = True
            continue
        counties.update(result.metadata["failing_counties"])
        reference = reference or bool(result.metadata["failing_reference"])
    return Blocked(frozenset(counties), reference or everything, everything)


def _savepoint(fn: Callable[[Staged], AuditResult]) -> Callable[[Staged], AuditResult]:
    # An audit whose SQL fails must not abort the transaction the next audits run in.
    @functools.wraps(fn)
    def run(staged: Staged) -> AuditResult:
        with staged.conn.transaction():
            return fn(staged)

    return run


def _md(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows[:_MD_ROWS]]
    if len(rows) > _MD_ROWS:
        lines.append(f"\n({len(rows) - _MD_ROWS} more)")
    return "\n".join(lines)


# The audited rows: the run's counties (bound as %s) and every reference row.
_SCOPE = sql.SQL("(geography <> {} OR county = ANY(%s))").format(sql.Literal(COUNTY))


def unit_label(geography: str, name: str) -> str:
    """How a unit is named in reports: a county by its name, a reference unit with its geography."""
    return name if geography == COUNTY else f"{name} [{geography}]"


def _failing_units(rows: Sequence[Sequence], description: str, count_label: str, headers: Sequence[str],
                   **extra: object) -> AuditResult:
    """The result over rows (geography, name, bad rows, ...) of failing units: those units are held back."""
    return AuditResult(not rows, description, {
        "failing_counties": sorted(r[1] for r in rows if r[0] == COUNTY),
        "failing_reference": sorted(unit_label(r[0], r[1]) for r in rows if r[0] != COUNTY),
        count_label: sum(r[2] for r in rows),
        **extra,
        "details": _md(headers, rows) if rows else "none",
    })


def _blocking(staged: Staged, query: sql.Composable, problem: str, count_label: str) -> AuditResult:
    """Run a query returning (geography, county, bad_rows) per failing unit and report it."""
    rows = staged.conn.execute(query, (list(staged.counties),)).fetchall()
    if rows:
        units = ", ".join(unit_label(g, c) for g, c, _ in rows)
        description = f"{problem}: {sum(n for *_, n in rows)} row(s) in {units}; these are not published"
    else:
        description = f"no {problem}"
    return _failing_units(rows, description, count_label, ["geography", "name", count_label])


def _blocked_units(rows: Sequence[tuple[str, str, int, str]], problem: str, count_label: str,
                   headers: Sequence[str]) -> AuditResult:
    """Report (geography, name, bad rows, first problem) per failing unit, each named with its reason."""
    if rows:
        reasons = "; ".join(f"{unit_label(g, n)}: {first}" for g, n, _, first in rows[:_MD_ROWS])
        description = f"{problem} in {len(rows)} unit(s), not published ({reasons})"
    else:
        description = f"no {problem}"
    return _failing_units(rows, description, count_label, headers,
                          problems={unit_label(g, n): first for g, n, _, first in rows})


def values_readable(staged: Staged) -> AuditResult:
    """Rows with a blank, non-integer or impossible value were left out by the parse: their unit is
    incomplete, so it is held back (one county, not the download)."""
    rows = [(g, n, count, first) for (g, n), (count, first) in sorted(staged.bad_rows.items())
            if g != COUNTY or n in staged.counties]
    return _blocked_units(rows, "unreadable values", "rows_with_bad_values",
                          ["geography", "name", "rows with bad values", "first (row: column, value)"])


def county_names_usable(staged: Staged) -> AuditResult:
    """Names of this run's counties that cannot be loaded: no safe table name, the view's name, not a
    partition key (then never a partition, so reported by every run), or two names of this download
    sharing one table."""
    problems = download_name_problems(staged.in_source)
    rows = [(COUNTY, name, 1, reason) for name, reason in sorted(problems.items())
            if name in staged.counties or not can_be_partition_key(name)]
    return _blocked_units(rows, "unusable county names", "unusable_names", ["geography", "county", "names", "reason"])


@_savepoint
def no_duplicate_test_dates(staged: Staged) -> AuditResult:
    query = sql.SQL(
        "SELECT geography, county, count(*) FROM (SELECT geography, county, test_date FROM {t} WHERE {scope} "
        "GROUP BY 1, 2, 3 HAVING count(*) > 1) d GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(t=staged.table, scope=_SCOPE)
    return _blocking(staged, query, "duplicate test dates", "duplicated_dates")


@_savepoint
def no_negative_counts(staged: Staged) -> AuditResult:
    query = sql.SQL(
        "SELECT geography, county, count(*) FROM {t} WHERE {scope} AND least(new_positives, "
        "cumulative_number_of_positives, total_number_of_tests_performed, cumulative_number_of_tests_performed) < 0 "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(t=staged.table, scope=_SCOPE)
    return _blocking(staged, query, "negative counts", "negative_rows")


@_savepoint
def positives_within_tests(staged: Staged) -> AuditResult:
    query = sql.SQL(
        "SELECT geography, county, count(*) FROM {t} WHERE {scope} AND (new_positives > total_number_of_tests_performed "
        "OR cumulative_number_of_positives > cumulative_number_of_tests_performed) GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(t=staged.table, scope=_SCOPE)
    return _blocking(staged, query, "more positives than tests", "rows_positives_over_tests")


@_savepoint
def cumulative_consistent(staged: Staged) -> AuditResult:
    query = sql.SQL(
        "SELECT county, count(*) FILTER (WHERE cumulative_number_of_positives <> prev_positives + new_positives), "
        "count(*) FILTER (WHERE cumulative_number_of_tests_performed <> prev_tests + total_number_of_tests_performed) "
        "FROM (SELECT *, lag(cumulative_number_of_positives) OVER w AS prev_positives, "
        "lag(cumulative_number_of_tests_performed) OVER w AS prev_tests FROM {t} "
        "WHERE geography = {county} AND county = ANY(%s) WINDOW w AS (PARTITION BY county ORDER BY test_date)) d "
        "WHERE prev_positives IS NOT NULL GROUP BY county ORDER BY county"
    ).format(t=staged.table, county=sql.Literal(COUNTY))
    rows = [r for r in staged.conn.execute(query, (list(staged.counties),)).fetchall() if r[1] or r[2]]
    positives, tests = sum(r[1] for r in rows), sum(r[2] for r in rows)
    description = (f"{positives} day(s) where cumulative positives != previous + new, {tests} for tests, "
                   f"in {len(rows)} count{'y' if len(rows) == 1 else 'ies'}") if rows else (
        "every day's cumulative figures equal the previous day's plus the new ones")
    return AuditResult(not rows, description, {
        "days_positives_differ": positives,
        "days_tests_differ": tests,
        "counties_affected": [r[0] for r in rows],
        "details": _md(["county", "days positives differ", "days tests differ"], rows) if rows else "none",
    })


@_savepoint
def counties_sum_to_statewide(staged: Staged) -> AuditResult:
    sums = sql.SQL(", ").join(sql.SQL("sum({m}) AS {m}").format(m=sql.Identifier(m)) for m in MEASURES)
    pairs = sql.SQL(", ").join(sql.SQL("c.{m}, s.{m}").format(m=sql.Identifier(m)) for m in MEASURES)
    c_row = sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(m)) for m in MEASURES)
    s_row = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(m)) for m in MEASURES)
    # Over every county in the source (not only this run's): the statewide row counts them all.
    query = sql.SQL(
        "WITH c AS (SELECT test_date, {sums} FROM {t} WHERE geography = {county} GROUP BY test_date), "
        "s AS (SELECT * FROM {t} WHERE geography = 'STATEWIDE') "
        "SELECT s.test_date, {pairs} FROM s LEFT JOIN c USING (test_date) "
        "WHERE ({c_row}) IS DISTINCT FROM ({s_row}) ORDER BY s.test_date"
    ).format(sums=sums, t=staged.table, county=sql.Literal(COUNTY), pairs=pairs, c_row=c_row, s_row=s_row)
    compared = staged.conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE geography = 'STATEWIDE'").format(staged.table)).fetchone()[0]
    if not compared:
        return AuditResult(True, "no STATEWIDE rows in the source to reconcile with", {"dates_compared": 0})
    rows = staged.conn.execute(query).fetchall()
    description = (f"on {len(rows)} of {compared} date(s) the counties do not add up to STATEWIDE" if rows
                   else f"the counties add up to STATEWIDE on all {compared} date(s)")
    table = [(r[0], *(f"{r[i]} vs {r[i + 1]}" for i in range(1, 9, 2))) for r in rows]
    return AuditResult(not rows, description, {
        "dates_compared": compared,
        "dates_differing": len(rows),
        "details": _md(["test_date", "new positives (sum vs statewide)", "cumulative positives",
                        "tests", "cumulative tests"], table) if rows else "none",
    })


@_savepoint
def fresh(staged: Staged) -> AuditResult:
    last = staged.conn.execute(sql.SQL(
        "SELECT max(test_date) FROM {} WHERE geography = {} AND county = ANY(%s)").format(
        staged.table, sql.Literal(COUNTY)), (list(staged.counties),)).fetchone()[0]
    updated = (datetime.fromtimestamp(staged.rows_updated_at, UTC).isoformat()
               if staged.rows_updated_at is not None else "unknown")
    if last is None:
        return AuditResult(False, "no county rows in the source", {"source_rows_updated_at": updated})
    age = (staged.today - last).days
    ok = age <= staged.max_age_days
    description = (f"newest test_date {last} is {age} day(s) old" + ("" if ok else
                   f" (more than {staged.max_age_days}: the dataset was frozen on 2023-09-01)")
                   + f"; source rowsUpdatedAt {updated}")
    return AuditResult(ok, description, {"last_test_date": last.isoformat(), "days_old": age,
                                         "source_rows_updated_at": updated})


@_savepoint
def counties_present(staged: Staged) -> AuditResult:
    present = {r[0] for r in staged.conn.execute(sql.SQL(
        "SELECT DISTINCT county FROM {} WHERE geography = {} AND county = ANY(%s)").format(
        staged.table, sql.Literal(COUNTY)), (list(staged.counties),)).fetchall()}
    absent = sorted(set(staged.counties) - present)
    # A partition whose table another name of the source loads is the same county, renamed by the source.
    tables, _ = county_tables([*staged.in_source, *absent])
    current = {tables[n]: n for n in staged.in_source if n in tables}
    renamed = {n: current[tables[n]] for n in absent if tables.get(n) in current}
    missing = [n for n in absent if n not in renamed]
    description = (f"{len(missing)} county partition(s) absent from the source kept their tables unchanged: "
                   + ", ".join(missing)) if missing else "every county partition is in the source"
    if renamed:
        description += "; spelled differently now (same table): " + ", ".join(f"{o} -> {n}" for o, n in renamed.items())
    return AuditResult(not missing, description, {"missing_counties": missing, "renamed_counties": renamed})


BLOCKING_AUDITS = [
    Audit("values_readable", values_readable, blocking=True,
          description="Every value parses: no blank, non-integer or impossible value (a bad one holds back its "
          "county only, naming the row and column)."),
    Audit("county_names_usable", county_names_usable, blocking=True,
          description="Each county name gives its own safe table name and partition key (an unusable name, or "
          "two names of one download sharing a table, holds back that county only)."),
    Audit("no_duplicate_test_dates", no_duplicate_test_dates, blocking=True,
          description="Each county (and reference row set) has at most one row per test_date."),
    Audit("no_negative_counts", no_negative_counts, blocking=True,
          description="No count is negative."),
    Audit("positives_within_tests", positives_within_tests, blocking=True,
          description="New positives never exceed tests performed; cumulative positives never exceed cumulative tests."),
]
WARN_AUDITS = [
    Audit("cumulative_consistent", cumulative_consistent, blocking=False,
          description="Each day's cumulative figures equal the previous day's plus the day's new ones."),
    Audit("counties_sum_to_statewide", counties_sum_to_statewide, blocking=False,
          description="Per test_date, the counties add up to the STATEWIDE row (where the source has one)."),
    Audit("fresh", fresh, blocking=False,
          description="The newest test_date is recent (the dataset was frozen on 2023-09-01, so this warns)."),
    Audit("counties_present", counties_present, blocking=False,
          description="Every county partition is still in the source (absent ones keep their tables)."),
]
AUDITS = [*BLOCKING_AUDITS, *WARN_AUDITS]
