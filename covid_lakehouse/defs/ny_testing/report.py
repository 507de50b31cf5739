"""What the ny_testing assets report: the raw download's metadata, each published county's, and the
per-county picture of a whole county run (one observation over all its partitions)."""

from datetime import UTC, datetime
from typing import Any

import dagster as dg

from covid_lakehouse.defs.ny_testing.asset_keys import COUNTY_TABLE_SCHEMA
from covid_lakehouse.defs.ny_testing.checks import Blocked, unit_label
from covid_lakehouse.defs.ny_testing.raw import RawSummary, bundled_snapshot_sha256, parsed_key
from covid_lakehouse.defs.ny_testing.warehouse import CountyResult, skipped
from covid_lakehouse.lib.http import DownloadResult
from covid_lakehouse.lib.source_versions import Superseded


def stored_metadata(shown: str, bucket: str, key: str, download: DownloadResult, summary: RawSummary,
                     reused: bool, parsed_size: int) -> dict[str, Any]:
    """The raw asset's metadata: where the download came from and went, and what it holds."""
    bundled = download.sha256 == bundled_snapshot_sha256()
    updated = summary.rows_updated_at
    return {
        "data_source": ("bundled offline snapshot (thru 2022-09-13, data/xdss-u53e_rows.json.gz) served at " + shown
                        if bundled else f"downloaded from {shown}"),
        "s3_key": key,
        "s3_uri": f"s3://{bucket}/{key}",
        "parsed_key": parsed_key(key),
        "parsed_bytes": parsed_size,
        "sha256": download.sha256,
        "bytes": download.bytes,
        "already_stored": reused,
        "dagster/row_count": summary.rows,
        "rows": summary.rows,
        "county_count": len(summary.counties),
        "counties": summary.counties,
        "reference_geographies": summary.reference,
        "first_test_date": str(summary.first_test_date),
        "last_test_date": str(summary.last_test_date),
        "rows_updated_at": datetime.fromtimestamp(updated, UTC).isoformat() if updated is not None else "unknown",
        "column_mapping": summary.column_mapping,
        "ignored_columns": summary.ignored_columns,
        # Not loaded, each blocking only its county (the county run's checks say so too).
        "unusable_counties": summary.unusable_counties,
        "rows_with_bad_values": {unit_label(geography, name): f"{n} row(s); {first}"
                                 for (geography, name), (n, first) in sorted(summary.bad_rows.items())},
    }


def county_metadata(result: CountyResult, raw_key: str) -> dict:
    return {
        "dagster/row_count": result.rows,
        "dagster/table_name": result.table,
        "dagster/column_schema": COUNTY_TABLE_SCHEMA,
        "inserted": result.counts.inserted,
        "updated": result.counts.updated,
        "unchanged": result.counts.unchanged,
        "first_test_date": str(result.first_test_date),
        "last_test_date": str(result.last_test_date),
        "table_created": result.created,
        "raw_key": raw_key,
    }


def run_summary(counties: list[str], in_source: set[str], loaded: dict[str, CountyResult],
                 superseded: dict[str, Superseded], errors: dict[str, Exception], blocked: Blocked, failures, reference, in_view: int,
                 raw_key: str, staged_from: str, staged_rows: int, county_schema: str) -> dict:
    """One run covers many partitions: this table is the per-county picture of the whole run."""
    blocked_by: dict[str, list[str]] = {}
    for name, result in failures:
        for county in result.metadata.get("failing_counties", counties):
            reason = result.metadata.get("problems", {}).get(county)  # the row and column, or the name's problem
            blocked_by.setdefault(county, []).append(f"{name} ({reason})" if reason else name)
    lines = ["| county | table | rows | inserted | updated | unchanged | first date | last date | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for county in counties:
        if county in loaded:
            r = loaded[county]
            status = "created" if r.created else "published"
            lines.append(f"| {county} | {r.table} | {r.rows} | {r.counts.inserted} | {r.counts.updated} | "
                         f"{r.counts.unchanged} | {r.first_test_date} | {r.last_test_date} | {status} |")
            continue
        if county in superseded:
            status = skipped(superseded[county])
        elif county not in in_source:
            status = "absent from the source: table kept"
        elif county in errors:
            status = f"error: {type(errors[county]).__name__}"
        else:
            status = "held back: " + ", ".join(blocked_by.get(county, ["blocking check"]))
        lines.append(f"| {county} | | | | | | | | {status} |")
    dates = [d for r in loaded.values() for d in (r.first_test_date, r.last_test_date) if d is not None]
    metadata = {
        "load_summary": dg.MetadataValue.md("\n".join(lines)),
        "raw_key": raw_key,
        "staged_from": staged_from,
        "staged_rows": staged_rows,
        "counties_in_run": len(counties),
        "counties_published": len(loaded),
        "counties_superseded": sorted(superseded),
        "counties_held_back": sorted(c for c in counties if c in in_source and blocked.county_blocked(c)),
        "counties_absent_from_source": sorted(set(counties) - in_source),
        "rows_inserted": sum(r.counts.inserted for r in loaded.values()),
        "rows_updated": sum(r.counts.updated for r in loaded.values()),
        "rows_unchanged": sum(r.counts.unchanged for r in loaded.values()),
        "first_test_date": str(min(dates)) if dates else "none",
        "last_test_date": str(max(dates)) if dates else "none",
        "view": f"{county_schema}.all_counties over {in_view} county tables",
    }
    if isinstance(reference, Superseded):
        metadata["reference_rows"] = skipped(reference)
    elif reference is not None:
        metadata["reference_rows"] = (f"{reference.inserted} inserted, {reference.updated} updated, "
                                      f"{reference.unchanged} unchanged")
    else:
        metadata["reference_rows"] = "held back by a blocking check"
    return metadata
