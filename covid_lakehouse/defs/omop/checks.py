"""Audits run on the staged Iceberg data before it is published (write-audit-publish): blocking ones
stop the publication, WARN ones are reported with the data."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from covid_lakehouse.defs.omop.transform import Reconciliation, connect
from covid_lakehouse.lib.settings import SettingError, setting
from covid_lakehouse.lib.wap import Audit, AuditResult

# The gate's asset (assets.landing_files) and its op, whose config is the run's flags
# (assets.TenantRunConfig): here, where the blocked check's hint and assets.run_flags both read them
# (assets imports this module, not the other way). The op's name is Dagster's for the key.
LANDING_KEY = dg.AssetKey(["omop", "landing_files"])
GATE_OP = LANDING_KEY.to_python_identifier()
# Below this share of providers with a mapped specialty, the mapping table probably lacks a label.
MIN_MAPPED_SPECIALTY_SHARE = 0.95
# A source read empty or mostly empty (a table emptied by mistake, a reload half done, the wrong schema)
# would publish its providers as deleted: above this share the publication waits for an operator.
MAX_DELETED_SHARE = setting(
    "OMOP_MAX_DELETED_SHARE", "the share (0 to 1) of the source providers a tenant's last run published above which a "
    "run that finds them gone from the source is stopped before publishing (blocking check "
    "source_deletions_bounded); a run launched with config allow_deleted_providers: n publishes them as deleted "
    "when exactly n are gone; 1: never stopped", default="0.5", scope="omop")


def max_deleted_share() -> float:
    share = MAX_DELETED_SHARE.number(minimum=0)
    if share > 1:
        raise SettingError(f"{MAX_DELETED_SHARE.name} must be at most 1, got {share:g}: {MAX_DELETED_SHARE.doc}")
    return share


# What an audit reports, whether its figures come from an Arrow table or from the staged files' scan.
def _unique_result(column: str, rows: int, duplicates: int, nulls: int) -> AuditResult:
    return AuditResult(duplicates == 0 and nulls == 0, f"{duplicates} duplicate and {nulls} null {column} in {rows} rows",
                       {"duplicates": duplicates, "nulls": nulls})


def _not_null_result(column: str, missing: int) -> AuditResult:
    return AuditResult(missing == 0, f"{missing} rows without {column}", {"missing": missing})


def _unique(column: str):
    """For integer ids: sorting finds duplicates several times faster than hashing."""
    def audit(table: pa.Table) -> AuditResult:
        values = np.sort(table[column].drop_null().to_numpy())
        duplicates = int(np.count_nonzero(values[1:] == values[:-1]))
        return _unique_result(column, table.num_rows, duplicates, table[column].null_count)
    return audit


def _not_null(column: str):
    def audit(table: pa.Table) -> AuditResult:
        # values are trimmed: an empty string is no value either
        return _not_null_result(column, table[column].null_count + (pc.sum(pc.equal(table[column], "")).as_py() or 0))
    return audit


class _StagedProviders:
    """Every figure the provider audits report, from ONE DuckDB session and query over the staged
    parquet files (the rows never sit whole in memory): a session and a scan per audit cost more than
    the audits themselves at a tenant of 20,000 providers. Computed when the first audit asks for the
    files it receives, and again only if another audit receives other files (the transform's flag files
    are read once: they are the same for every staged file list)."""

    def __init__(self, care_site_ids: Collection[int], flag_files: Sequence[Path]):
        self.known = pa.table({"care_site_id": pa.array(sorted(set(care_site_ids)), pa.int64())})
        self.flag_files = [str(f) for f in flag_files]
        self._files: list[str] | None = None
        self._figures: dict = {}
        self._flag_figures: dict | None = None

    def __call__(self, files: Sequence[Path]) -> dict:
        wanted = [str(f) for f in files]
        if wanted != self._files:
            self._figures, self._files = self._scan(wanted), wanted
        return self._figures

    def _scan(self, files: list[str]) -> dict:
        con = connect()
        try:
            con.register("known", self.known)
            cursor = con.execute("""
                SELECT count(*) AS rows,
                       count(provider_id) - count(DISTINCT provider_id) AS duplicate_ids,
                       count(*) - count(provider_id) AS null_ids,
                       count(*) FILTER (provider_name IS NULL OR provider_name = '') AS missing_names,
                       count(npi) AS with_npi,
                       count(*) FILTER (specialty_concept_id > 0) AS mapped,
                       count(DISTINCT care_site_id) FILTER (
                           care_site_id NOT IN (SELECT care_site_id FROM known)) AS dangling
                FROM read_parquet($files)""", {"files": files})
            figures = dict(zip([d[0] for d in cursor.description], cursor.fetchone(), strict=True))
            if self._flag_figures is None:  # the flag files do not change with the staged files: read once
                self._flag_figures = self._flags(con)
            figures.update(self._flag_figures)
            figures["dangling_examples"] = ""
            if figures["dangling"]:  # only when the audit fails: the first ten, for the message
                (figures["dangling_examples"],) = con.execute("""
                    SELECT string_agg(care_site_id::VARCHAR, ', ' ORDER BY care_site_id)
                    FROM (SELECT DISTINCT care_site_id FROM read_parquet($files)
                          WHERE care_site_id NOT IN (SELECT care_site_id FROM known) ORDER BY care_site_id LIMIT 10)""",
                    {"files": files}).fetchone()
            return figures
        finally:
            con.close()

    def _flags(self, con: duckdb.DuckDBPyConnection) -> dict:
        """The transform's npi_check_digit flags, which it computed on exactly these providers: their count
        and the first ten in the flags' own order (a LIMIT keeps the file order). A query of its own:
        only the WARN audit reads them, so flags it cannot read fail that audit alone and the blocking
        audits still answer."""
        figures = {"failing": 0, "failing_examples": None, "flags_error": None}
        if self.flag_files:
            try:
                figures["failing"], figures["failing_examples"] = con.execute("""
                    SELECT (SELECT count(*) FROM read_parquet($flags) WHERE flag = 'npi_check_digit'),
                           (SELECT list(provider_id) FROM (SELECT provider_id FROM read_parquet($flags)
                                                           WHERE flag = 'npi_check_digit' LIMIT 10))""",
                    {"flags": self.flag_files}).fetchone()
            except duckdb.Error as err:
                figures["flags_error"] = err
        return figures


def _care_site_fk(staged: _StagedProviders):
    def audit(files: Sequence[Path]) -> AuditResult:
        figures = staged(files)
        return AuditResult(not figures["dangling"], f"{figures['dangling']} care_site_id value(s) not in care_site",
                           {"dangling": figures["dangling"], "examples": figures["dangling_examples"]})
    return audit


def _reconciles(counts: Reconciliation):
    def audit(_) -> AuditResult:
        rows = "\n".join(f"| {name} | {left:,} | {right:,} | {'ok' if left == right else 'UNBALANCED'} |"
                         for name, left, right in counts.equations())
        broken = [name for name, left, right in counts.equations() if left != right]
        return AuditResult(not broken, "; ".join(broken) or "every count balances",
                           {"equations": dg.MetadataValue.md("| equation | left | right | |\n|---|---:|---:|---|\n" + rows)})
    return audit


def _deletions_bounded(counts: Reconciliation, limit: float, allowed: int):
    """Blocking when more than ``limit`` (max_deleted_share, read once as the step starts) of the source
    rows the last run published are gone from the source now, unless exactly ``allowed`` are (the run's
    config confirmed that count: a backfill's one count then confirms no tenant that lost another number,
    a wiped small tenant among them). Rows it quarantined are not counted: removing junk from a source
    takes nothing from the published tables."""
    def audit(_) -> AuditResult:
        gone, before = counts.source_published_gone, counts.source_previously_published
        share = gone / before if before else 0.0
        figures = {"deleted": gone, "previously_published": before, "share": round(share, 4),
                   "max_share": limit, "allow_deleted_providers": allowed}
        said = f"{gone:,} of the {before:,} source providers the last run published are gone from the source ({share:.1%})"
        if share <= limit or gone == allowed:
            confirmed = f"; over the limit, confirmed by the run's allow_deleted_providers={allowed}" if share > limit else ""
            return AuditResult(True, f"{said}; limit {MAX_DELETED_SHARE.name}={limit:g}{confirmed}", figures)
        this_run = f"; this run confirmed {allowed:,}" if allowed else ""
        return AuditResult(False, (
            f"{said}, over {MAX_DELETED_SHARE.name}={limit:g}: the provider tables are not published. If the source "
            f"is right, launch the tenant again with run config ops.{GATE_OP}.config.allow_deleted_providers: "
            f"{gone} (exactly the count gone{this_run}); if it was emptied or loaded only in part, restore it and run again"), figures)
    return audit


def _npi_check_digit(staged: _StagedProviders):
    """Reports the transform's npi_check_digit flags, which it computed on exactly these providers."""
    def audit(files: Sequence[Path]) -> AuditResult:
        figures = staged(files)
        if figures["flags_error"] is not None:
            raise figures["flags_error"]  # run_audits reports it as this (WARN) audit's failure
        count, with_npi = figures["failing"], figures["with_npi"]
        return AuditResult(count == 0, f"{count} of {with_npi} NPIs fail the check digit (kept, flagged)",
                           {"failing": count, "share": round(count / with_npi, 4) if with_npi else 0.0,
                            "example_provider_ids": ", ".join(map(str, figures["failing_examples"] or []))})
    return audit


def _specialty_share(staged: _StagedProviders):
    def audit(files: Sequence[Path]) -> AuditResult:
        figures = staged(files)
        rows, mapped = figures["rows"], figures["mapped"]
        share = mapped / rows if rows else 1.0
        return AuditResult(share >= MIN_MAPPED_SPECIALTY_SHARE,
                           f"{share:.1%} of providers have a mapped specialty (minimum {MIN_MAPPED_SPECIALTY_SHARE:.0%})",
                           {"mapped": mapped, "share": round(share, 4)})
    return audit


def provider_audits(counts: Reconciliation, care_site_ids: Collection[int], flag_files: Sequence[Path], *,
                    max_share: float, allow_deleted_providers: int = 0) -> list[Audit]:
    """Audits of the staged provider parquet files (the transform's ``flag_files`` for the check digit),
    all answered by one scan of them, and of the run's reconciled counts; ``max_share``: the validated
    max_deleted_share()."""
    staged = _StagedProviders(care_site_ids, flag_files)
    return [
        Audit("provider_id_unique", lambda files: _unique_result(
            "provider_id", *(staged(files)[k] for k in ("rows", "duplicate_ids", "null_ids"))),
              description="provider_id is unique and never null"),
        Audit("provider_name_not_null", lambda files: _not_null_result("provider_name", staged(files)["missing_names"]),
              description="every provider has a name (OMOP requires it)"),
        Audit("care_site_fk_resolves", _care_site_fk(staged), description="every care_site_id is a published care_site"),
        Audit("counts_reconcile", _reconciles(counts),
              description="rows read = new + merged + quarantined, for the source and the files"),
        Audit("source_deletions_bounded", _deletions_bounded(counts, max_share, allow_deleted_providers),
              description="a run that finds most of the source providers gone (over OMOP_MAX_DELETED_SHARE of those "
                          "the last run published) publishes them as deleted only when its config confirms that count"),
        Audit("npi_check_digit", _npi_check_digit(staged), blocking=False,
              description="NPIs pass the Luhn check digit (failures are kept and flagged)"),
        Audit("specialty_mapped_share", _specialty_share(staged), blocking=False,
              description=f"at least {MIN_MAPPED_SPECIALTY_SHARE:.0%} of providers have a specialty concept"),
    ]


CARE_SITE_AUDITS = [
    Audit("care_site_id_unique", _unique("care_site_id"), description="care_site_id is unique and never null"),
    Audit("care_site_name_not_null", _not_null("care_site_name"), description="every care site has a name"),
]
