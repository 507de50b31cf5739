"""Audits run on the staged Iceberg data before it is published (write-audit-publish): blocking ones
stop the publication, WARN ones are reported with the data."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from covid_lakehouse.defs.omop.transform import Reconciliation, connect
from covid_lakehouse.lib.wap import Audit, AuditResult

# Below this share of providers with a mapped specialty, the mapping table probably lacks a label.
MIN_MAPPED_SPECIALTY_SHARE = 0.95


def _unique(column: str):
    """For integer ids: sorting finds duplicates several times faster than hashing."""
    def audit(table: pa.Table) -> AuditResult:
        nulls = table[column].null_count
        values = np.sort(table[column].drop_null().to_numpy())
        duplicates = int(np.count_nonzero(values[1:] == values[:-1]))
        return AuditResult(duplicates == 0 and nulls == 0,
                           f"{duplicates} duplicate and {nulls} null {column} in {table.num_rows} rows",
                           {"duplicates": duplicates, "nulls": nulls})
    return audit


def _not_null(column: str):
    def audit(table: pa.Table) -> AuditResult:
        missing = table[column].null_count + (pc.sum(pc.equal(table[column], "")).as_py() or 0)  # values are trimmed
        return AuditResult(missing == 0, f"{missing} rows without {column}", {"missing": missing})
    return audit


# The provider audits run on the staged parquet files (the rows never sit whole in memory): one DuckDB
# query each over ``read_parquet($files)``.
def _query(files: Sequence[Path], query: str, extra: Mapping[str, pa.Table] | None = None) -> tuple:
    con = connect()
    try:
        for name, table in (extra or {}).items():
            con.register(name, table)
        return con.execute(query, {"files": [str(f) for f in files]}).fetchone()
    finally:
        con.close()


def _unique_in_files(column: str):
    def audit(files: Sequence[Path]) -> AuditResult:
        rows, duplicates, nulls = _query(files, f"""
            SELECT count(*), count({column}) - count(DISTINCT {column}), count(*) - count({column})
            FROM read_parquet($files)""")
        return AuditResult(duplicates == 0 and nulls == 0,
                           f"{duplicates} duplicate and {nulls} null {column} in {rows} rows",
                           {"duplicates": duplicates, "nulls": nulls})
    return audit


def _not_null_in_files(column: str):
    def audit(files: Sequence[Path]) -> AuditResult:
        (missing,) = _query(files, f"SELECT count(*) FILTER ({column} IS NULL OR {column} = '') FROM read_parquet($files)")
        return AuditResult(missing == 0, f"{missing} rows without {column}", {"missing": missing})
    return audit


def _care_site_fk(care_site_ids: Collection[int]):
    known = pa.table({"care_site_id": pa.array(sorted(set(care_site_ids)), pa.int64())})

    def audit(files: Sequence[Path]) -> AuditResult:
        (dangling, examples) = _query(files, """
            SELECT count(*), string_agg(care_site_id::VARCHAR, ', ' ORDER BY care_site_id)
                             FILTER (WHERE rank <= 10)
            FROM (SELECT care_site_id, row_number() OVER (ORDER BY care_site_id) AS rank FROM (
                      SELECT DISTINCT care_site_id FROM read_parquet($files) WHERE care_site_id IS NOT NULL
                      AND care_site_id NOT IN (SELECT care_site_id FROM known)))""", {"known": known})
        return AuditResult(not dangling, f"{dangling} care_site_id value(s) not in care_site",
                           {"dangling": dangling, "examples": examples or ""})
    return audit


def _reconciles(counts: Reconciliation):
    def audit(_) -> AuditResult:
        rows = "\n".join(f"| {name} | {left:,} | {right:,} | {'ok' if left == right else 'UNBALANCED'} |"
                         for name, left, right in counts.equations())
        broken = [name for name, left, right in counts.equations() if left != right]
        return AuditResult(not broken, "; ".join(broken) or "every count balances",
                           {"equations": dg.MetadataValue.md("| equation | left | right | |\n|---|---:|---:|---|\n" + rows)})
    return audit


def _npi_check_digit(flag_files: Sequence[Path]):
    """Reports the transform's npi_check_digit flags, which it computed on exactly these providers."""
    def audit(files: Sequence[Path]) -> AuditResult:
        (with_npi,) = _query(files, "SELECT count(npi) FROM read_parquet($files)")
        if flag_files:
            # the first ten in the flags' own order (a LIMIT keeps the file order)
            count, examples = _query(flag_files, """
                SELECT (SELECT count(*) FROM read_parquet($files) WHERE flag = 'npi_check_digit'),
                       (SELECT list(provider_id) FROM (SELECT provider_id FROM read_parquet($files)
                                                       WHERE flag = 'npi_check_digit' LIMIT 10))""")
        else:
            count, examples = 0, []
        return AuditResult(count == 0, f"{count} of {with_npi} NPIs fail the check digit (kept, flagged)",
                           {"failing": count, "share": round(count / with_npi, 4) if with_npi else 0.0,
                            "example_provider_ids": ", ".join(map(str, examples or []))})
    return audit


def _specialty_share(files: Sequence[Path]) -> AuditResult:
    rows, mapped = _query(files, "SELECT count(*), count(*) FILTER (specialty_concept_id > 0) FROM read_parquet($files)")
    share = mapped / rows if rows else 1.0
    return AuditResult(share >= MIN_MAPPED_SPECIALTY_SHARE,
                       f"{share:.1%} of providers have a mapped specialty (minimum {MIN_MAPPED_SPECIALTY_SHARE:.0%})",
                       {"mapped": mapped, "share": round(share, 4)})


def provider_audits(counts: Reconciliation, care_site_ids: Collection[int], flag_files: Sequence[Path]) -> list[Audit]:
    """Audits of the staged provider parquet files (the transform's ``flag_files`` for the check digit)."""
    return [
        Audit("provider_id_unique", _unique_in_files("provider_id"), description="provider_id is unique and never null"),
        Audit("provider_name_not_null", _not_null_in_files("provider_name"),
              description="every provider has a name (OMOP requires it)"),
        Audit("care_site_fk_resolves", _care_site_fk(care_site_ids),
              description="every care_site_id is a published care_site"),
        Audit("counts_reconcile", _reconciles(counts),
              description="rows read = new + merged + quarantined, for the source and the files"),
        Audit("npi_check_digit", _npi_check_digit(flag_files), blocking=False,
              description="NPIs pass the Luhn check digit (failures are kept and flagged)"),
        Audit("specialty_mapped_share", _specialty_share, blocking=False,
              description=f"at least {MIN_MAPPED_SPECIALTY_SHARE:.0%} of providers have a specialty concept"),
    ]


CARE_SITE_AUDITS = [
    Audit("care_site_id_unique", _unique("care_site_id"), description="care_site_id is unique and never null"),
    Audit("care_site_name_not_null", _not_null("care_site_name"), description="every care site has a name"),
]

