"""The ads archive moving 1,000,000 rows from PostgreSQL to the Iceberg archive (the ads_archive asset,
materialized by Dagster: plan, chunked COPY TO + appends in one Iceberg commit, read-back verification,
DELETE + reconciliation), against a plain script doing the same steps once, without the state machine:
COPY TO, parquet (partitioned by shown date) to the same S3 server, read the ids back, DELETE them.
Targets: 2x, and a peak at most 200 MB above the empty asset's.

``ads_archive_5m``: the same archive of a 5,000,000-row backlog against the 1M archive (the "floor" is
the 1M run): time linear in rows (at most 5.5x) and memory flat (peak at most 1.1x the 1M peak)."""

from __future__ import annotations

import io
import os

from benchmarks.harness import Scale, case, measure, result, timed

ROWS = 1_000_000
SMOKE_ROWS = 5_000
BACKLOG_ROWS = 5_000_000
SMOKE_BACKLOG_ROWS = 25_000
PEAK_ABOVE_BASELINE_MB = 200
FLOOR_PREFIX = "bench-floor/archive"


def _prepare(rows: int) -> None:
    """ads.ads with ``rows`` ads shown 1 to 11 days ago, an empty archive (untimed setup)."""
    import psycopg
    from psycopg import sql

    from benchmarks.common import reset_domain
    from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE, BUCKET, PG_SCHEMA
    from covid_lakehouse.defs.ads.warehouse import MIGRATION_SCOPE, ensure_tables
    from covid_lakehouse.lib.lakehouse import LakehouseResource
    from covid_lakehouse.lib.s3 import s3_client
    from covid_lakehouse.lib.settings import ServiceSettings

    settings = ServiceSettings.from_env()
    lakehouse = LakehouseResource.from_settings(settings)
    if lakehouse.table_exists(ARCHIVE_NAMESPACE, ARCHIVE_TABLE):
        lakehouse.catalog().drop_table((ARCHIVE_NAMESPACE, ARCHIVE_TABLE))
    client = s3_client(settings)
    for prefix in ("archive/", FLOOR_PREFIX):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})
    reset_domain(MIGRATION_SCOPE, PG_SCHEMA)
    with psycopg.connect(settings.warehouse_dsn) as conn:
        ensure_tables(conn)
        conn.execute(sql.SQL(
            "INSERT INTO ads.ads SELECT gen_random_uuid(), "
            "(ARRAY['marketing', 'recruiting', 'brand', 'investment'])[1 + i %% 4], "
            "CASE WHEN i %% 2 = 0 THEN 500 + i %% 500 END, "
            "CASE WHEN i %% 2 = 0 THEN (500 + i %% 500)::text ELSE '__unknown' END, "
            "CASE WHEN i %% 5 = 0 THEN 'manual' END, CASE WHEN i %% 5 = 0 THEN i %% 10 = 0 END, "
            "now() - make_interval(secs => 86400 + i %% 864000), 'backup/date=2024-01-01/bench.json', now(), "
            "nextval('ads.ads_row_version') FROM generate_series(1, %s) i"), (rows,))
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE ads.ads")


def measure_floor(rows: int = ROWS) -> tuple[float, int]:
    import psycopg
    import pyarrow.csv as pacsv
    import pyarrow.dataset as ds
    from psycopg import sql

    from covid_lakehouse.lib.postgres import copy_csv_options, copy_out_sql
    from covid_lakehouse.lib.s3 import LakeS3Resource

    _prepare(rows)
    fs = LakeS3Resource(endpoint_url=os.environ["S3_ENDPOINT_URL"], aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"]).arrow_filesystem()
    base = f"ad-data/{FLOOR_PREFIX}"

    def work() -> int:
        with psycopg.connect(os.environ["WAREHOUSE_DSN"]) as conn:
            conn.execute("SET TIME ZONE 'UTC'")
            buffer = io.BytesIO()
            with conn.cursor().copy(copy_out_sql(sql.SQL(
                    "(SELECT ad_id, ad_group, ad_campaign, ad_campaign_raw, ad_scheme_origin, ad_scheme_approved, "
                    "shown_at, (shown_at AT TIME ZONE 'UTC')::date AS shown_date, backup_key, loaded_at, row_version "
                    "FROM ads.ads WHERE shown_at < now() - interval '12 hours')"), header=True)) as copy:
                for data in copy:
                    buffer.write(data)
            buffer.seek(0)
            table = pacsv.read_csv(buffer, **copy_csv_options(header=True))  # the product's exact reader
            del buffer
            ds.write_dataset(table, base, format="parquet", filesystem=fs, partitioning=["shown_date"],
                             partitioning_flavor="hive", existing_data_behavior="overwrite_or_ignore")
            del table
            ids = ds.dataset(base, format="parquet", filesystem=fs, partitioning="hive").to_table(
                columns=["ad_id", "row_version"])
            conn.execute("CREATE TEMP TABLE archived (ad_id uuid, row_version bigint) ON COMMIT DROP")
            with conn.cursor().copy("COPY archived FROM STDIN (FORMAT csv)") as copy:
                out = io.BytesIO()
                pacsv.write_csv(ids, out, pacsv.WriteOptions(include_header=False))
                copy.write(out.getbuffer())
            deleted = conn.execute("DELETE FROM ads.ads a USING archived v "
                                   "WHERE a.ad_id = v.ad_id AND a.row_version = v.row_version").rowcount
        if deleted != ids.num_rows:
            raise RuntimeError(f"floor deleted {deleted} of {ids.num_rows} archived rows")
        return deleted

    return timed(work)


def measure_dagster(rows: int = ROWS) -> tuple[float, int]:
    from benchmarks.common import materialize_timed
    from covid_lakehouse.defs.ads.assets import ads_archive
    from covid_lakehouse.defs.ads.settings import AdsSettings
    from covid_lakehouse.lib.resources import platform_resources

    _prepare(rows)
    resources = {**platform_resources(), "ads_settings": AdsSettings(archive_retention_hours=12)}
    seconds, outcome = materialize_timed([ads_archive], resources)
    archived = outcome.asset_materializations_for_node("ads__ads_archive")[0].metadata["archived_rows"].value
    if archived != rows:
        raise RuntimeError(f"the archive moved {archived} of {rows} rows")
    return seconds, archived


@case("ads_archive_1m")
def run(scale: Scale) -> list:
    rows, repeat = scale.size(ROWS, SMOKE_ROWS), scale.repeat(2)
    baseline = measure("benchmarks.common", "empty_asset", repeat=scale.repeat(3))
    floor = measure("benchmarks.ads", "floor", repeat=repeat, rows=rows)
    dagster = measure("benchmarks.ads", "dagster", repeat=repeat, rows=rows)
    return [result("ads_archive_1m", dagster, floor, baseline, target_ratio=2.0,
                   max_peak_rss_mb=baseline.peak_rss_mb + PEAK_ABOVE_BASELINE_MB)]


@case("ads_archive_5m")
def run_backlog(scale: Scale) -> list:
    rows, backlog, repeat = scale.size(ROWS, SMOKE_ROWS), scale.size(BACKLOG_ROWS, SMOKE_BACKLOG_ROWS), scale.repeat(2)
    one = measure("benchmarks.ads", "dagster", repeat=repeat, rows=rows)
    five = measure("benchmarks.ads", "dagster", repeat=repeat, rows=backlog)
    return [result("ads_archive_5m", five, one, one, target_ratio=5.5,
                   max_peak_rss_mb=1.1 * one.peak_rss_mb)]
