"""`covid-lakehouse report people-per-dose`: the published table as text, fewest people per dose first."""

from __future__ import annotations

import psycopg
from psycopg import sql

from covid_lakehouse.defs.vaccines.publish import EXCLUDED_TABLE, PEOPLE_TABLE, SCHEMA, table_columns
from covid_lakehouse.lib.postgres import PostgresResource, table_ident


class ReportUnavailable(LookupError):
    """The table has not been published yet."""


def _dose_columns(conn: psycopg.Connection, table: str) -> list[str]:
    """doses_<manufacturer> columns that hold data (a manufacturer no longer configured is all NULL)."""
    target = table_ident(SCHEMA, table)
    return [
        c for c in table_columns(conn, table)
        if c.startswith("doses_")
        and conn.execute(sql.SQL("SELECT count({}) FROM {}").format(sql.Identifier(c), target)).fetchone()[0]
    ]


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _render(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Aligned columns: the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def people_per_dose_report(conn: psycopg.Connection) -> str:
    """vaccines.people_per_dose sorted by people per dose (fewest first, states without doses last),
    then the excluded jurisdictions with their doses. Raises ReportUnavailable if not published yet."""
    if not PostgresResource.table_exists(conn, SCHEMA, PEOPLE_TABLE):
        raise ReportUnavailable(f"{SCHEMA}.{PEOPLE_TABLE} has not been published yet: run `make demo` or "
                                "materialize vaccines/people_per_dose")
    doses = _dose_columns(conn, PEOPLE_TABLE)
    manufacturers = [c.removeprefix("doses_") for c in doses]
    query = sql.SQL(
        "SELECT state, population, {doses}, total_doses, people_per_dose, first_allocation_week, "
        "last_allocation_week, loaded_at FROM {table} ORDER BY people_per_dose ASC NULLS LAST, state"
    ).format(doses=sql.SQL(", ").join(map(sql.Identifier, doses)) if doses else sql.SQL("NULL"),
             table=table_ident(SCHEMA, PEOPLE_TABLE))
    rows = conn.execute(query).fetchall()
    n = len(doses) or 1  # columns: state, population, doses x n, total, ratio, first, last, loaded_at
    first = min((r[4 + n] for r in rows if r[4 + n]), default=None)
    last = max((r[5 + n] for r in rows if r[5 + n]), default=None)
    loaded = max((r[6 + n] for r in rows), default=None)

    out = [
        f"People per COVID-19 vaccine dose allocated ({SCHEMA}.{PEOPLE_TABLE}: {len(rows)} rows, 50 states and DC)",
        f"manufacturers: {', '.join(manufacturers) or 'none'}; allocation weeks {first} .. {last}; "
        f"last change published {loaded.isoformat(sep=' ', timespec='seconds') if loaded else 'never'}",
        "",
    ]
    body = [
        [str(i), r[0], _num(r[1]), *map(_num, r[2:2 + len(doses)]), _num(r[2 + n]),
         "n/a" if r[3 + n] is None else f"{r[3 + n]:.2f}"]
        for i, r in enumerate(rows, start=1)
    ]
    out += _render(["#", "state", "population", *manufacturers, "total doses", "people per dose"], body, left=2)

    if PostgresResource.table_exists(conn, SCHEMA, EXCLUDED_TABLE):
        ex_doses = [c for c in _dose_columns(conn, EXCLUDED_TABLE) if c in doses] or doses
        excluded = conn.execute(sql.SQL(
            "SELECT jurisdiction, {doses}, total_doses FROM {table} ORDER BY total_doses DESC, jurisdiction"
        ).format(doses=sql.SQL(", ").join(map(sql.Identifier, ex_doses)),
                 table=table_ident(SCHEMA, EXCLUDED_TABLE))).fetchall()
        total = sum(r[-1] for r in excluded)
        out += ["", f"Excluded (territories and federal entities: no state population), {total:,} doses:"]
        out += _render(["jurisdiction", *[c.removeprefix("doses_") for c in ex_doses], "total doses"],
                       [[r[0], *map(_num, r[1:])] for r in excluded])
    return "\n".join(out) + "\n"
