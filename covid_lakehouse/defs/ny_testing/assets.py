"""The two assets: the raw download kept in S3, and the county tables loaded from it.

    schedule 09:00 New York -> ny_testing/raw_rows_json  (download, validate, store write-once)
    sensor on its materialization -> adds new counties as partitions, requests one run over all of them
    ny_testing/county_tests (partitioned by county, one run) -> stage once, audit, publish per county
"""

import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import Field

from covid_lakehouse.defs.ny_testing.checks import AUDITS, Blocked, Staged, blocked_units
from covid_lakehouse.defs.ny_testing.parsing import BATCH_ROWS, MEASURES, SourceFormatError, open_rows_json
from covid_lakehouse.defs.ny_testing.partitions import (
    COUNTY_PARTITIONS_NAME,
    check_new_counties,
    county_partitions,
)
from covid_lakehouse.defs.ny_testing.raw import (
    BadRows,
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
    skipped,
    staged_units,
)
from covid_lakehouse.lib.http import DownloadResult
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.resources import HttpResource
from covid_lakehouse.lib.s3 import LakeS3Resource, key_in_prefix
from covid_lakehouse.lib.source_versions import SourceVersion, Superseded
from covid_lakehouse.lib.wap import audit_check_specs, run_audits

GROUP = "ny_testing"
RAW_KEY = dg.AssetKey(["ny_testing", "raw_rows_json"])
COUNTY_KEY = dg.AssetKey(["ny_testing", "county_tests"])
RAW_KEY_TAG = "ny_testing/raw_key"  # set by the sensor: the download a county run loads
RAW_FETCHED_AT_TAG = "ny_testing/raw_fetched_at"  # set by the sensor: when that download was fetched (ISO 8601)

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
        # Not loaded, each blocking only its county (the county run's checks say so too).
        "unusable_counties": summary.unusable_counties,
        "rows_with_bad_values": {name if geography == COUNTY else f"{name} [{geography}]": f"{n} row(s); {first}"
                                 for (geography, name), (n, first) in sorted(summary.bad_rows.items())},
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
    for field, key in (("config raw_key", config.raw_key), (f"run tag {RAW_KEY_TAG}", context.run.tags.get(RAW_KEY_TAG))):
        if key:  # from whoever launched the run: only this domain's own raw objects
            key_in_prefix(key, ny_testing_settings.raw_prefix, field=field)
    version = _source_version(context.instance, config, context.run.tags)
    raw_key = version.identity
    counties = list(context.partition_keys)
    # Every partition a usable name has a table; spellings of one county share it (see docs/ny_testing.md).
    tables, _ = county_tables(context.instance.get_dynamic_partitions(COUNTY_PARTITIONS_NAME))
    loaded_at = datetime.now(UTC)  # one load_date for every row this run inserts or revises
    wh = Warehouse(warehouse, order_staging_above_mb=ny_testing_settings.order_staging_above_mb)
    staging = wh.staging_table(context.run_id)
    try:
        seen: set[tuple[str, str]] = set()
        with _raw_rows(s3, ny_testing_settings.raw_bucket, raw_key) as raw:
            staged_rows = wh.stage(staging, staged_units(raw.batches, seen))
            bad_rows = raw.bad_rows()
        rows_updated_at, staged_from, grouped = raw.rows_updated_at, raw.source, raw.grouped
        in_source = {name for geography, name in (*seen, *bad_rows) if geography == COUNTY}
        # Rows in source order (the JSON fallback, an older parsed file) are regrouped when that pays.
        reordered = not grouped and wh.order_staging(staging)
        context.log.info("staged %d rows from %s (%d counties in the source, %d in this run)%s", staged_rows,
                         staged_from, len(in_source), len(counties),
                         "; rewritten in county order (larger than shared_buffers)" if reordered else "")

        with warehouse.connection() as conn:
            staged = Staged(conn, staging, counties, rows_updated_at, loaded_at.date(), ny_testing_settings.max_age_days,
                            frozenset(in_source), bad_rows)
            results, failures = run_audits(AUDITS, staged, asset_key=COUNTY_KEY)
        yield from results  # before anything is published
        blocked = blocked_units(failures)
        publish = [c for c in counties if c in in_source and c in tables and not blocked.county_blocked(c)]
        loaded, errors = publish_counties(wh, staging, publish, tables, loaded_at, version,
                                          ny_testing_settings.max_workers)
        for county in sorted(loaded):
            if loaded[county].superseded is None:
                yield dg.AssetMaterialization(asset_key=COUNTY_KEY, partition=county,
                                              metadata=_county_metadata(loaded[county], raw_key))
                continue
            # Not an error: a retried run of an older download; the table keeps the newer one's rows.
            newer = loaded[county].superseded
            context.log.info("%s: %s", county, newer)
            yield dg.AssetObservation(asset_key=COUNTY_KEY, partition=county, metadata={
                "outcome": skipped(newer), "superseded_by": newer.identity,
                "superseded_by_fetched_at": newer.fetched_at.isoformat(), "raw_key": raw_key,
                "raw_fetched_at": version.fetched_at.isoformat()})
        superseded = {c: r.superseded for c, r in loaded.items() if r.superseded is not None}
        loaded = {c: r for c, r in loaded.items() if r.superseded is None}
        reference = None if blocked.reference else wh.publish_reference(staging, loaded_at, version)
        in_view = wh.refresh_view(tables)
    finally:
        wh.drop_staging(staging)

    yield dg.AssetObservation(asset_key=COUNTY_KEY, metadata=_run_summary(
        counties, in_source, loaded, superseded, errors, blocked, failures, reference, in_view, raw_key,
        staged_from, staged_rows, wh.county_schema))
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


def _source_version(instance: dg.DagsterInstance, config: CountyLoadConfig, tags: dict[str, str]) -> SourceVersion:
    """The download this run loads and when it was fetched: the config's (a replay, which may go back in
    time on purpose), the sensor's tags (the download that triggered the run), else the latest download."""
    if config.raw_key:
        fetched = _fetched_at(instance, config.raw_key)
        return SourceVersion(config.raw_key, fetched or datetime.fromtimestamp(0, UTC), replay=True)
    if RAW_KEY_TAG in tags:
        raw_key = tags[RAW_KEY_TAG]
        fetched = (datetime.fromisoformat(tags[RAW_FETCHED_AT_TAG]) if RAW_FETCHED_AT_TAG in tags
                   else _fetched_at(instance, raw_key))  # a run requested before the sensor set the tag
        if fetched is None:
            raise dg.Failure(f"no {RAW_KEY.to_user_string()} materialization stored {raw_key}: cannot tell whether "
                             "it is older than what the tables hold; replay it with config raw_key to load it anyway",
                             allow_retries=False)
        return SourceVersion(raw_key, fetched)
    event = instance.get_latest_materialization_event(RAW_KEY)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"no raw download yet: materialize {RAW_KEY.to_user_string()} first (the 09:00 schedule "
                         "does)", allow_retries=False)
    return SourceVersion(event.asset_materialization.metadata["s3_key"].value, fetched_at(event.timestamp))


def fetched_at(timestamp: float) -> datetime:
    """A raw materialization's time (epoch seconds): when its download was fetched."""
    return datetime.fromtimestamp(timestamp, UTC)


def _fetched_at(instance: dg.DagsterInstance, raw_key: str) -> datetime | None:
    """When ``raw_key`` was last downloaded (newest raw materialization naming it); None if never."""
    cursor = None
    while True:
        page = instance.fetch_materializations(RAW_KEY, limit=500, cursor=cursor)
        for record in page.records:
            key = record.asset_materialization.metadata.get("s3_key") if record.asset_materialization else None
            if key is not None and key.value == raw_key:
                return fetched_at(record.timestamp)
        if not page.has_more:
            return None
        cursor = page.cursor


@dataclass(frozen=True)
class RawRows:
    batches: Iterator[pa.RecordBatch]
    rows_updated_at: int | None  # the source's meta.view.rowsUpdatedAt
    source: str  # where they are read from
    grouped: bool  # grouped by unit (geography, name)
    bad_rows: Callable[[], BadRows]  # rows left out for a bad value; complete once ``batches`` is read


@contextmanager
def _raw_rows(s3: LakeS3Resource, bucket: str, raw_key: str) -> Iterator[RawRows]:
    """The rows of a raw object: its parsed parquet when there is one (written by the validating parse,
    grouped by county), else the rows.json itself, streamed from S3 and parsed once (in source order)."""
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
                yield RawRows(parsed.file.iter_batches(batch_size=BATCH_ROWS, use_threads=False),
                              parsed.rows_updated_at, f"s3://{bucket}/{parsed_key(raw_key)}", parsed.grouped,
                              lambda: parsed.bad_rows)
                return
    body = client.get_object(Bucket=bucket, Key=raw_key)["Body"]
    try:
        reader = open_rows_json(body, source=source)
        yield RawRows(reader.batches(), reader.rows_updated_at, source, False, lambda: reader.bad_rows)
    except SourceFormatError as err:
        raise dg.Failure(f"{err}; nothing published", allow_retries=False) from None
    finally:
        body.close()


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
