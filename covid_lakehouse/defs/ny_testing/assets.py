"""The two assets: the raw download kept in S3, and the county tables loaded from it (their steps:
versions.py which download, raw_rows.py reading it back, warehouse.py the SQL, checks.py the audits,
report.py the metadata).

    schedule 09:00 New York -> ny_testing/raw_rows_json  (download, validate, store write-once)
    sensor on its materialization -> adds new counties as partitions, requests one run over all of them
    ny_testing/county_tests (partitioned by county, one run) -> stage once, audit, publish per county
"""

import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from covid_lakehouse.defs.ny_testing.asset_keys import (
    COUNTY_KEY,
    COUNTY_TABLE_SCHEMA,
    GROUP,
    RAW_KEY,
    RAW_KEY_TAG,
)
from covid_lakehouse.defs.ny_testing.checks import AUDITS, Blocked, Staged, blocked_units
from covid_lakehouse.defs.ny_testing.parsing import BadRows, SourceFormatError
from covid_lakehouse.defs.ny_testing.partitions import (
    COUNTY_PARTITIONS_NAME,
    check_new_counties,
    county_partitions,
)
from covid_lakehouse.defs.ny_testing.raw import display_url, parsed_key, put_once, summarize
from covid_lakehouse.defs.ny_testing.raw_rows import open_raw_rows
from covid_lakehouse.defs.ny_testing.report import county_metadata, run_summary, stored_metadata
from covid_lakehouse.defs.ny_testing.resources import NyTestingSettings
from covid_lakehouse.defs.ny_testing.versions import previous_download, source_version
from covid_lakehouse.defs.ny_testing.warehouse import (
    COUNTY,
    CountyResult,
    Warehouse,
    county_tables,
    skipped,
    staged_units,
)
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.resources import HttpResource
from covid_lakehouse.lib.s3 import LakeS3Resource, key_in_prefix
from covid_lakehouse.lib.source_versions import SourceVersion
from covid_lakehouse.lib.wap import audit_check_specs, run_audits


@dg.asset(
    key=RAW_KEY,
    group_name=GROUP,
    kinds={"s3"},
    io_manager_key="s3_object_io_manager",  # loads as the stored bytes (metadata s3_uri + sha256)
    description="The NYS COVID-19 testing dataset (health.data.ny.gov xdss-u53e, rows.json) as downloaded, "
    "checked to parse, kept write-once in S3 (raw/ny_testing/xdss-u53e/sha256=<digest>.json).",
)
def raw_rows_json(context: dg.AssetExecutionContext, http: HttpResource, s3: LakeS3Resource,
                  ny_testing_settings: NyTestingSettings) -> dg.MaterializeResult:
    url = ny_testing_settings.resolved_source_url()
    shown = display_url(url)
    bucket, prefix = ny_testing_settings.raw_bucket, ny_testing_settings.raw_prefix.strip("/")
    with tempfile.TemporaryFile() as body:
        with http.client() as client:  # streams to the file; retries 429/5xx/cut-short bodies
            download = client.download(url, body)
        key = f"{prefix}/sha256={download.sha256}.json"
        known = previous_download(context.instance, key)
        if known is not None and s3.object_exists(bucket, key) and s3.object_exists(bucket, parsed_key(key)):
            # The same bytes as the last download (a frozen dataset, daily): validated and stored then.
            context.log.info("%s: same bytes as the last download, stored at s3://%s/%s", shown, bucket, key)
            return dg.MaterializeResult(metadata={**known, "already_stored": True})
        body.seek(0)
        with tempfile.TemporaryFile() as parsed:
            try:
                summary = summarize(body, source=shown, parsed_sink=parsed)
                if summary.rows == 0:  # the source has had tens of thousands of rows since 2020
                    raise SourceFormatError(shown, "the download has no data rows (a well-formed but empty "
                                            "rows.json): the source is broken, not the epidemic over")
                check_new_counties(context.instance, summary.counties, shown)  # refused whole past the cap
            except SourceFormatError as err:  # the format: a bad value or county name blocks only that county
                quarantine = f"{prefix}/quarantine/sha256={download.sha256}.body"
                put_once(s3, bucket, quarantine, body, {"source": shown})
                raise dg.Failure(
                    description=f"{err}. Nothing was stored as raw data or loaded; the body is kept for "
                    f"inspection at s3://{bucket}/{quarantine}",
                    metadata={"source": shown, "quarantined_at": f"s3://{bucket}/{quarantine}",
                              "bytes": download.bytes},
                    allow_retries=False,  # the same body would fail the same way
                ) from None
            reused = not put_once(s3, bucket, key, body, {"source": shown, "run-id": context.run_id})
            # Derived from the object just stored (same digest in its name): spares the load a second parse.
            parsed_size = parsed.tell()
            put_once(s3, bucket, parsed_key(key), parsed, {"parsed-from": key})
    context.log.info("%s: %d rows, %d counties -> s3://%s/%s%s", shown, summary.rows, len(summary.counties),
                     bucket, key, " (already stored)" if reused else "")
    metadata = stored_metadata(shown, bucket, key, download, summary, reused, parsed_size)
    return dg.MaterializeResult(metadata=metadata)


class CountyLoadConfig(dg.Config):
    raw_key: str = Field(default="", description="Replay: load this raw object (an s3_key from an earlier "
                         "raw_rows_json materialization) instead of the run's (sensor tag) or the latest one.")


@dg.asset(
    key=COUNTY_KEY,
    group_name=GROUP,
    kinds={"postgres"},
    deps=[RAW_KEY],
    partitions_def=county_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=audit_check_specs(COUNTY_KEY, AUDITS),
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
    output_required=False,  # one materialization per county published, none for a county held back
    # Written by the upsert below; loaded as an input from the view, the run's counties only.
    io_manager_key="warehouse_io_manager",
    metadata={"dagster/column_schema": COUNTY_TABLE_SCHEMA, "dagster/table_name": "ny_testing.all_counties",
              "partition_expr": "county"},
    description="One table per county, ny_testing.<county> (test_date, the four counts, load_date), upserted "
    "from the raw download that triggered the run (or the latest) after auditing the staged rows; view ny_testing.all_counties over them; "
    "REGION/STATEWIDE rows go to ny_testing_reference.geography_totals.",
)
def county_tests(context: dg.AssetExecutionContext, config: CountyLoadConfig, warehouse: PostgresResource,
                 s3: LakeS3Resource, ny_testing_settings: NyTestingSettings):
    for field, key in (("config raw_key", config.raw_key), (f"run tag {RAW_KEY_TAG}", context.run.tags.get(RAW_KEY_TAG))):
        if key:  # from whoever launched the run: only this domain's own raw objects
            key_in_prefix(key, ny_testing_settings.raw_prefix, field=field)
    version = source_version(context.instance, config.raw_key, context.run.tags)
    raw_key = version.identity
    counties = list(context.partition_keys)
    # Every partition a usable name has a table; spellings of one county share it (see docs/ny_testing.md).
    tables, _ = county_tables(context.instance.get_dynamic_partitions(COUNTY_PARTITIONS_NAME))
    loaded_at = datetime.now(UTC)  # one load_date for every row this run inserts or revises
    wh = Warehouse(warehouse, order_staging_above_mb=ny_testing_settings.order_staging_above_mb)
    staging = wh.staging_table(context.run_id)
    try:
        raw = _stage(context, wh, staging, s3, ny_testing_settings.raw_bucket, raw_key, len(counties))
        with warehouse.connection() as conn:
            staged = Staged(conn, staging, counties, raw.rows_updated_at, loaded_at.date(),
                            ny_testing_settings.max_age_days, frozenset(raw.in_source), raw.bad_rows)
            results, failures = run_audits(AUDITS, staged, asset_key=COUNTY_KEY)
        yield from results  # before anything is published
        blocked = blocked_units(failures)
        publish = [c for c in counties if c in raw.in_source and c in tables and not blocked.county_blocked(c)]
        loaded, errors = publish_counties(wh, staging, publish, tables, loaded_at, version,
                                          ny_testing_settings.max_workers)
        yield from _county_events(context, loaded, version)
        superseded = {c: r.superseded for c, r in loaded.items() if r.superseded is not None}
        loaded = {c: r for c, r in loaded.items() if r.superseded is None}
        reference = None if blocked.reference else wh.publish_reference(staging, loaded_at, version)
        in_view = wh.refresh_view(tables)
    finally:
        wh.drop_staging(staging)

    yield dg.AssetObservation(asset_key=COUNTY_KEY, metadata=run_summary(
        counties, raw.in_source, loaded, superseded, errors, blocked, failures, reference, in_view, raw_key,
        raw.source, raw.rows, wh.county_schema))
    _raise_unpublished(errors, blocked, failures, published=len(loaded))


def publish_counties(wh: Warehouse, staging, counties: list[str], tables: dict[str, str], loaded_at: datetime,
                     version: SourceVersion, max_workers: int) -> tuple[dict[str, CountyResult], dict[str, Exception]]:
    """Upsert each county on its own pooled connection and transaction; one county's failure leaves the
    others' commits in place. A county whose table reflects a newer download comes back ``superseded``."""
    loaded: dict[str, CountyResult] = {}
    errors: dict[str, Exception] = {}
    with ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="ny-testing-county") as pool:
        futures = {pool.submit(wh.publish_county, staging, c, tables[c], loaded_at, version): c for c in counties}
        for future in as_completed(futures):
            try:
                loaded[futures[future]] = future.result()
            except Exception as err:  # reported with the others after every county had its chance
                errors[futures[future]] = err
    return loaded, errors


@dataclass(frozen=True)
class StagedRaw:
    """What staging a raw download found."""

    rows: int
    source: str  # where the rows were read from
    rows_updated_at: int | None  # the source's meta.view.rowsUpdatedAt
    in_source: set[str]  # county names the download lists (loadable or not)
    bad_rows: BadRows  # rows left out for a bad value


def _stage(context: dg.AssetExecutionContext, wh: Warehouse, staging, s3: LakeS3Resource, bucket: str, raw_key: str,
           counties_in_run: int) -> StagedRaw:
    """COPY every row of the raw download into the run's staging table (committed: the publishing
    workers read it on their own connections)."""
    seen: set[tuple[str, str]] = set()
    with open_raw_rows(s3, bucket, raw_key) as raw:
        staged_rows = wh.stage(staging, staged_units(raw.batches, seen))
        bad_rows = raw.bad_rows()
    in_source = {name for geography, name in (*seen, *bad_rows) if geography == COUNTY}
    # Rows in source order (the JSON fallback, an older parsed file) are regrouped when that pays.
    reordered = not raw.grouped and wh.order_staging(staging)
    context.log.info("staged %d rows from %s (%d counties in the source, %d in this run)%s", staged_rows,
                     raw.source, len(in_source), counties_in_run,
                     "; rewritten in county order (larger than shared_buffers)" if reordered else "")
    return StagedRaw(staged_rows, raw.source, raw.rows_updated_at, in_source, bad_rows)


def _county_events(context: dg.AssetExecutionContext, loaded: dict[str, CountyResult],
                   version: SourceVersion) -> Iterator[dg.AssetMaterialization | dg.AssetObservation]:
    """A materialization per county published; an observation per county left alone as superseded."""
    for county in sorted(loaded):
        if loaded[county].superseded is None:
            yield dg.AssetMaterialization(asset_key=COUNTY_KEY, partition=county,
                                          metadata=county_metadata(loaded[county], version.identity))
            continue
        # Not an error: a retried run of an older download; the table keeps the newer one's rows.
        newer = loaded[county].superseded
        context.log.info("%s: %s", county, newer)
        yield dg.AssetObservation(asset_key=COUNTY_KEY, partition=county, metadata={
            "outcome": skipped(newer), "superseded_by": newer.identity,
            "superseded_by_fetched_at": newer.fetched_at.isoformat(), "raw_key": version.identity,
            "raw_fetched_at": version.fetched_at.isoformat()})


def _raise_unpublished(errors: dict[str, Exception], blocked: Blocked, failures, *, published: int) -> None:
    """Fail the step when a county was not published: retried for an infrastructure error, not for data."""
    if errors:  # infrastructure, not data: the RetryPolicy reruns the step (loads are idempotent)
        names = ", ".join(sorted(errors))
        first = next(iter(errors.values()))
        raise RuntimeError(f"publishing failed for {names}: {type(first).__name__}: {first}") from first
    if blocked.everything or blocked.counties or blocked.reference:
        held = sorted(blocked.counties) + (["reference rows"] if blocked.reference else [])
        failed_checks = ", ".join(name for name, _ in failures)
        reasons = "; ".join(f"{name}: {result.description}" for name, result in failures)
        raise dg.Failure(
            description=f"blocking check(s) failed ({failed_checks}): not published, tables left as they were: "
            f"{'everything' if blocked.everything else ', '.join(held)}; {published} other "
            f"count{'y' if published == 1 else 'ies'} published. {reasons}",
            metadata={"held_back": held, "failed_checks": failed_checks},
            allow_retries=False,  # the data is wrong, a retry would fail the same way
        )
