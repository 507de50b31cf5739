"""The two assets: the raw download kept in S3, and the county tables loaded from it.

    schedule 09:00 New York -> ny_testing/raw_rows_json  (download, validate, store write-once)
    sensor on its materialization -> adds new counties as partitions, requests one run over all of them
    ny_testing/county_tests (partitioned by county, one run) -> stage once, audit, publish per county
"""

import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import Field

from covid_lakehouse.defs.ny_testing.checks import AUDITS, Blocked, Staged, blocked_units
from covid_lakehouse.defs.ny_testing.parsing import BATCH_ROWS, MEASURES, SourceFormatError, open_rows_json
from covid_lakehouse.defs.ny_testing.parsing import UnsafeIdentifierError as UnsafeCountyError
from covid_lakehouse.defs.ny_testing.partitions import (
    COUNTY_PARTITIONS_NAME,
    check_new_counties,
    county_partitions,
)
from covid_lakehouse.defs.ny_testing.raw import (
    RawSummary,
    bundled_snapshot_sha256,
    display_url,
    parsed_key,
    put_once,
    read_parsed,
    summarize,
)
from covid_lakehouse.defs.ny_testing.resources import NyTestingSettings
from covid_lakehouse.defs.ny_testing.warehouse import (
    COUNTY,
    CountyResult,
    Warehouse,
    county_tables,
    staged_units,
)
from covid_lakehouse.lib.http import DownloadResult
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.postgres import UnsafeIdentifierError as UnsafeTableError
from covid_lakehouse.lib.resources import HttpResource
from covid_lakehouse.lib.s3 import LakeS3Resource, key_in_prefix
from covid_lakehouse.lib.wap import audit_check_specs, run_audits

GROUP = "ny_testing"
RAW_KEY = dg.AssetKey(["ny_testing", "raw_rows_json"])
COUNTY_KEY = dg.AssetKey(["ny_testing", "county_tests"])
RAW_KEY_TAG = "ny_testing/raw_key"  # set by the sensor: the download a county run loads

COUNTY_TABLE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("test_date", "date", description="primary key",
                       constraints=dg.TableColumnConstraints(nullable=False, unique=True)),
        *(dg.TableColumn(m, "bigint", constraints=dg.TableColumnConstraints(nullable=False)) for m in MEASURES),
        dg.TableColumn("load_date", "timestamptz",
                       description="when this row was first loaded or last changed by the source (not every run)",
                       constraints=dg.TableColumnConstraints(nullable=False)),
    ]
)
_BAD_SOURCE = (SourceFormatError, UnsafeCountyError, UnsafeTableError)


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
        known = _previous_download(context.instance, key)
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
            except _BAD_SOURCE as err:
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
    metadata = _stored_metadata(shown, bucket, key, download, summary, reused, parsed_size)
    return dg.MaterializeResult(metadata=metadata)


def _stored_metadata(shown: str, bucket: str, key: str, download: DownloadResult, summary: RawSummary,
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
    }


def _previous_download(instance: dg.DagsterInstance, key: str) -> dict | None:
    """The last raw materialization's metadata if it stored ``key`` (content-addressed: the same bytes)."""
    event = instance.get_latest_materialization_event(RAW_KEY)
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    s3_key = metadata.get("s3_key")
    return dict(metadata) if s3_key is not None and s3_key.value == key else None


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
    raw_key = config.raw_key or context.run.tags.get(RAW_KEY_TAG)
    if raw_key:  # from whoever launched the run: only this domain's own raw objects
        field = "config raw_key" if config.raw_key else f"run tag {RAW_KEY_TAG}"
        key_in_prefix(raw_key, ny_testing_settings.raw_prefix, field=field)
    raw_key = raw_key or _latest_raw_key(context.instance)
    counties = list(context.partition_keys)
    tables = _county_tables(context.instance.get_dynamic_partitions(COUNTY_PARTITIONS_NAME))
    loaded_at = datetime.now(UTC)  # one load_date for every row this run inserts or revises
    wh = Warehouse(warehouse, order_staging_above_mb=ny_testing_settings.order_staging_above_mb)
    staging = wh.staging_table(context.run_id)
    try:
        seen: set[tuple[str, str]] = set()
        with _raw_rows(s3, ny_testing_settings.raw_bucket, raw_key) as (batches, rows_updated_at, staged_from, grouped):
            staged_rows = wh.stage(staging, staged_units(batches, seen))
        in_source = {name for geography, name in seen if geography == COUNTY}
        # Rows in source order (the JSON fallback, an older parsed file) are regrouped when that pays.
        reordered = not grouped and wh.order_staging(staging)
        context.log.info("staged %d rows from %s (%d counties in the source, %d in this run)%s", staged_rows,
                         staged_from, len(in_source), len(counties),
                         "; rewritten in county order (larger than shared_buffers)" if reordered else "")

        with warehouse.connection() as conn:
            staged = Staged(conn, staging, counties, rows_updated_at, loaded_at.date(), ny_testing_settings.max_age_days)
            results, failures = run_audits(AUDITS, staged, asset_key=COUNTY_KEY)
        yield from results  # before anything is published
        blocked = blocked_units(failures)
        publish = [c for c in counties if c in in_source and not blocked.county_blocked(c)]
        loaded, errors = publish_counties(wh, staging, publish, tables, loaded_at, ny_testing_settings.max_workers)
        for county in sorted(loaded):
            yield dg.AssetMaterialization(asset_key=COUNTY_KEY, partition=county,
                                          metadata=_county_metadata(loaded[county], raw_key))
        reference = None if blocked.reference else wh.publish_reference(staging, loaded_at)
        in_view = wh.refresh_view(tables)
    finally:
        wh.drop_staging(staging)

    yield dg.AssetObservation(asset_key=COUNTY_KEY, metadata=_run_summary(
        counties, in_source, loaded, errors, blocked, failures, reference, in_view, raw_key, staged_from,
        staged_rows, wh.county_schema))
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
            f"{'everything' if blocked.everything else ', '.join(held)}; {len(loaded)} other "
            f"count{'y' if len(loaded) == 1 else 'ies'} published. {reasons}",
            metadata={"held_back": held, "failed_checks": failed_checks},
            allow_retries=False,  # the data is wrong, a retry would fail the same way
        )


def _latest_raw_key(instance: dg.DagsterInstance) -> str:
    event = instance.get_latest_materialization_event(RAW_KEY)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"no raw download yet: materialize {RAW_KEY.to_user_string()} first (the 09:00 schedule "
                         "does)", allow_retries=False)
    return event.asset_materialization.metadata["s3_key"].value


@contextmanager
def _raw_rows(s3: LakeS3Resource, bucket: str, raw_key: str
              ) -> Iterator[tuple[Iterator[pa.RecordBatch], int | None, str, bool]]:
    """(batches, rowsUpdatedAt, where from, grouped by unit) of a raw object: its parsed parquet when there
    is one (written by the validating parse, grouped by county), else the rows.json itself, streamed from
    S3 and parsed once (in source order)."""
    client = s3.get_client()
    source = f"s3://{bucket}/{raw_key}"
    if s3.object_exists(bucket, parsed_key(raw_key), client=client):
        with tempfile.TemporaryFile() as local:  # parquet needs a seekable file; it is ~1/10 of the JSON
            # One streamed GET in 1 MiB chunks: boto3's download_fileobj would fetch parts on 10
            # threads and buffer them, tens of MB whatever the batch size.
            body = client.get_object(Bucket=bucket, Key=parsed_key(raw_key))["Body"]
            try:
                shutil.copyfileobj(body, local, 1 << 20)
            finally:
                body.close()
            parsed = read_parsed(local)
            if parsed is not None:
                # use_threads=False: decoding 8k-row batches is cheap; pool threads would each keep memory.
                yield (parsed.file.iter_batches(batch_size=BATCH_ROWS, use_threads=False), parsed.rows_updated_at,
                       f"s3://{bucket}/{parsed_key(raw_key)}", parsed.grouped)
                return
    body = client.get_object(Bucket=bucket, Key=raw_key)["Body"]
    try:
        reader = open_rows_json(body, source=source)
        yield reader.batches(), reader.rows_updated_at, source, False
    except SourceFormatError as err:
        raise dg.Failure(f"{err}; nothing published", allow_retries=False) from None
    finally:
        body.close()


def _county_tables(partition_keys: list[str]) -> dict[str, str]:
    try:
        return county_tables(partition_keys)
    except (UnsafeCountyError, UnsafeTableError) as err:
        raise dg.Failure(f"{err}; nothing published", allow_retries=False) from None


def publish_counties(wh: Warehouse, staging, counties: list[str], tables: dict[str, str], loaded_at: datetime,
                      max_workers: int) -> tuple[dict[str, CountyResult], dict[str, Exception]]:
    """Upsert each county on its own pooled connection and transaction; one county's failure leaves the
    others' commits in place."""
    loaded: dict[str, CountyResult] = {}
    errors: dict[str, Exception] = {}
    with ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="ny-testing-county") as pool:
        futures = {pool.submit(wh.publish_county, staging, c, tables[c], loaded_at): c for c in counties}
        for future in as_completed(futures):
            try:
                loaded[futures[future]] = future.result()
            except Exception as err:  # reported with the others after every county had its chance
                errors[futures[future]] = err
    return loaded, errors


def _county_metadata(result: CountyResult, raw_key: str) -> dict:
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


def _run_summary(counties: list[str], in_source: set[str], loaded: dict[str, CountyResult],
                 errors: dict[str, Exception], blocked: Blocked, failures, reference, in_view: int,
                 raw_key: str, staged_from: str, staged_rows: int, county_schema: str) -> dict:
    """One run covers many partitions: this table is the per-county picture of the whole run."""
    blocked_by: dict[str, list[str]] = {}
    for name, result in failures:
        for county in result.metadata.get("failing_counties", counties):
            blocked_by.setdefault(county, []).append(name)
    lines = ["| county | table | rows | inserted | updated | unchanged | first date | last date | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for county in counties:
        if county in loaded:
            r = loaded[county]
            status = "created" if r.created else "published"
            lines.append(f"| {county} | {r.table} | {r.rows} | {r.counts.inserted} | {r.counts.updated} | "
                         f"{r.counts.unchanged} | {r.first_test_date} | {r.last_test_date} | {status} |")
            continue
        if county not in in_source:
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
        "counties_held_back": sorted(c for c in counties if c in in_source and blocked.county_blocked(c)),
        "counties_absent_from_source": sorted(set(counties) - in_source),
        "rows_inserted": sum(r.counts.inserted for r in loaded.values()),
        "rows_updated": sum(r.counts.updated for r in loaded.values()),
        "rows_unchanged": sum(r.counts.unchanged for r in loaded.values()),
        "first_test_date": str(min(dates)) if dates else "none",
        "last_test_date": str(max(dates)) if dates else "none",
        "view": f"{county_schema}.all_counties over {in_view} county tables",
    }
    if reference is not None:
        metadata["reference_rows"] = (f"{reference.inserted} inserted, {reference.updated} updated, "
                                      f"{reference.unchanged} unchanged")
    else:
        metadata["reference_rows"] = "held back by a blocking check"
    return metadata
