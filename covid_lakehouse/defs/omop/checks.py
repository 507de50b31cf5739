"""Audits run on the staged Iceberg data before it is published (write-audit-publish): blocking ones
stop the publication, WARN ones are reported with the data."""

from __future__ import annotations

from collections.abc import Collection

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from covid_lakehouse.defs.omop.transform import Reconciliation
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


def _care_site_fk(care_site_ids: Collection[int]):
    def audit(table: pa.Table) -> AuditResult:
        used = set(pc.unique(table["care_site_id"].drop_null()).to_pylist())
        dangling = sorted(used - set(care_site_ids))
        return AuditResult(not dangling, f"{len(dangling)} care_site_id value(s) not in care_site",
                           {"dangling": len(dangling), "examples": ", ".join(map(str, dangling[:10]))})
    return audit


def _reconciles(counts: Reconciliation):
    def audit(_: pa.Table) -> AuditResult:
        rows = "\n".join(f"| {name} | {left:,} | {right:,} | {'ok' if left == right else 'UNBALANCED'} |"
                         for name, left, right in counts.equations())
        broken = [name for name, left, right in counts.equations() if left != right]
        return AuditResult(not broken, "; ".join(broken) or "every count balances",
                           {"equations": dg.MetadataValue.md("| equation | left | right | |\n|---|---:|---:|---|\n" + rows)})
    return audit


def _npi_check_digit(flags: pa.Table):
    """Reports the transform's npi_check_digit flags, which it computed on exactly these providers."""
    failing = flags.filter(pc.equal(flags["flag"], "npi_check_digit"))

    def audit(table: pa.Table) -> AuditResult:
        count = failing.num_rows
        with_npi = table.num_rows - table["npi"].null_count
        examples = failing["provider_id"].slice(0, 10).to_pylist()
        return AuditResult(count == 0, f"{count} of {with_npi} NPIs fail the check digit (kept, flagged)",
                           {"failing": count, "share": round(count / with_npi, 4) if with_npi else 0.0,
                            "example_provider_ids": ", ".join(map(str, examples))})
    return audit


def _specialty_share(table: pa.Table) -> AuditResult:
    mapped = pc.sum(pc.greater(table["specialty_concept_id"], 0)).as_py() or 0
    share = mapped / table.num_rows if table.num_rows else 1.0
    return AuditResult(share >= MIN_MAPPED_SPECIALTY_SHARE,
                       f"{share:.1%} of providers have a mapped specialty (minimum {MIN_MAPPED_SPECIALTY_SHARE:.0%})",
                       {"mapped": mapped, "share": round(share, 4)})


def provider_audits(counts: Reconciliation, care_site_ids: Collection[int], flags: pa.Table) -> list[Audit]:
    return [
        Audit("provider_id_unique", _unique("provider_id"), description="provider_id is unique and never null"),
        Audit("provider_name_not_null", _not_null("provider_name"),
              description="every provider has a name (OMOP requires it)"),
        Audit("care_site_fk_resolves", _care_site_fk(care_site_ids),
              description="every care_site_id is a published care_site"),
        Audit("counts_reconcile", _reconciles(counts),
              description="rows read = new + merged + quarantined, for the source and the files"),
        Audit("npi_check_digit", _npi_check_digit(flags), blocking=False,
              description="NPIs pass the Luhn check digit (failures are kept and flagged)"),
        Audit("specialty_mapped_share", _specialty_share, blocking=False,
              description=f"at least {MIN_MAPPED_SPECIALTY_SHARE:.0%} of providers have a specialty concept"),
    ]


CARE_SITE_AUDITS = [
    Audit("care_site_id_unique", _unique("care_site_id"), description="care_site_id is unique and never null"),
    Audit("care_site_name_not_null", _not_null("care_site_name"), description="every care site has a name"),
]

