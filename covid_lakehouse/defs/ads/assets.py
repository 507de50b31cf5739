"""The ads assets: the hourly API load (backup first, then the warehouse) and the daily archive."""

import dagster as dg
from psycopg import sql

from covid_lakehouse.defs.ads.api import fetch_page
from covid_lakehouse.defs.ads.archive import (
    ARCHIVE_ARROW,
    LOAD_LOCK_WAIT,
    ReconciliationError,
    archive_old_rows,
    archived_row_count,
    exclusive_connection,
)
from covid_lakehouse.defs.ads.backup import purge_backups, write_backup
from covid_lakehouse.defs.ads.settings import (
    ARCHIVE_LOCATION,
    ARCHIVE_NAMESPACE,
    ARCHIVE_TABLE,
    BACKUP_PREFIX,
    BUCKET,
    AdsSettings,
)
from covid_lakehouse.defs.ads.warehouse import (
    ADS,
    LOAD_AUDITS,
    create_staging,
    ensure_tables,
    stage_pages,
    upsert_staged,
)
from covid_lakehouse.lib.clock import SystemClock
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.resources import HttpResource
from covid_lakehouse.lib.s3 import LakeS3Resource
from covid_lakehouse.lib.wap import audit_check_specs, audit_or_raise

GROUP = "ads"
ADS_KEY = dg.AssetKey(["ads", "ads"])
ARCHIVE_KEY = dg.AssetKey(["ads", "ads_archive"])
RECONCILIATION_CHECK = "archived_equals_deleted"

ADS_COLUMNS = dg.TableSchema(columns=[
    dg.TableColumn("ad_id", "uuid", description="primary key"),
    dg.TableColumn("ad_group", "text", description="marketing | recruiting | brand | investment"),
    dg.TableColumn("ad_campaign", "integer", description="NULL when the API says '__unknown'"),
    dg.TableColumn("ad_campaign_raw", "text", description="the API's value as sent"),
    dg.TableColumn("ad_scheme_origin", "text", description="manual | automatic; NULL without a scheme"),
    dg.TableColumn("ad_scheme_approved", "boolean", description="NULL without a scheme"),
    dg.TableColumn("shown_at", "timestamptz"),
    dg.TableColumn("backup_key", "text", description="the s3://ad-data object holding this version"),
    dg.TableColumn("loaded_at", "timestamptz", description="when this version was loaded"),
    dg.TableColumn("row_version", "bigint", description="changes with every new version"),
])


@dg.asset(
    key=ADS_KEY,
    group_name=GROUP,
    check_specs=audit_check_specs(ADS_KEY, LOAD_AUDITS),
    kinds={"postgres", "s3"},
    # Written by the upsert below; loads as an input from this table (warehouse IO manager).
    io_manager_key="warehouse_io_manager",
    metadata={"dagster/table_name": "ads.ads"},
    description="Ads from the third-party ad API in warehouse table ads.ads, one row per ad_id. Every "
                "response is first stored unchanged in s3://ad-data/backup/ (write-once, sha256); the "
                "warehouse is written only once all backups of the run are confirmed.",
)
def ads(context: dg.AssetExecutionContext, warehouse: PostgresResource, s3: LakeS3Resource,
        http: HttpResource, ads_settings: AdsSettings):
    url = ads_settings.resolved_api_url()
    # The ads lock from the fetch to the commit: two loads at once publish in the order they fetched
    # (an older response never overwrites a newer one), and an archive never runs between a fetch and
    # its upsert (an ad archived meanwhile would come back live from a sighting older than the archive).
    with exclusive_connection(warehouse.dsn, LOAD_LOCK_WAIT):
        yield from _load(context, warehouse, s3, http, ads_settings, url)


def _load(context: dg.AssetExecutionContext, warehouse: PostgresResource, s3: LakeS3Resource,
          http: HttpResource, ads_settings: AdsSettings, url: str):
    clock = SystemClock()
    with http.client(clock=clock) as client:
        pages = [fetch_page(client, url, clock=clock, attempts=ads_settings.payload_attempts,
                            backoff_s=ads_settings.payload_backoff_s) for _ in range(ads_settings.pages_per_run)]
    # Every backup first: if one fails, the run stops before the warehouse is touched.
    stored = [write_backup(s3, page, context.run_id, n) for n, page in enumerate(pages, start=1)]
    context.log.info("ads: %d API responses backed up: %s", len(stored), ", ".join(o.uri for o in stored))
    with warehouse.connection() as conn:
        ensure_tables(conn)
        staging = create_staging(conn)
        staged = stage_pages(conn, staging, [(page.ads, obj.key) for page, obj in zip(pages, stored, strict=True)])
        yield from audit_or_raise(LOAD_AUDITS, conn, staging, clock.now(), asset_key=ADS_KEY, asset_label="ads.ads")
        counts = upsert_staged(conn, staging)
        total = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ADS)).fetchone()[0]
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": total,
        "dagster/column_schema": ADS_COLUMNS,
        "fetched_ads": staged,
        "inserted": counts.inserted,
        "updated": counts.updated,
        "unchanged": counts.unchanged,
        "backups": dg.MetadataValue.md("\n".join(f"- `{o.uri}` sha256 `{o.sha256[:12]}…`" for o in stored)),
    })


@dg.asset(
    key=ARCHIVE_KEY,
    group_name=GROUP,
    deps=[ADS_KEY],
    check_specs=[dg.AssetCheckSpec(
        RECONCILIATION_CHECK, asset=ARCHIVE_KEY, blocking=True,
        description="every row archived in the batch was deleted from ads.ads, or changed meanwhile and kept")],
    kinds={"iceberg", "s3", "postgres"},
    # Written by the archive's state machine; loads as an input from the Iceberg table (lakehouse IO manager).
    io_manager_key="lakehouse_io_manager",
    metadata={"lakehouse/namespace": ARCHIVE_NAMESPACE, "lakehouse/table": ARCHIVE_TABLE},
    description="Ads shown before the retention cutoff, moved from ads.ads to Iceberg table ads.ads_archive "
                "(parquet under s3://ad-data/archive/, partitioned by shown date). Rows are deleted from "
                "the warehouse only after the archive commit is read back; a crashed run is resumed. Also "
                "deletes expired raw backups when a backup retention is configured.",
)
def ads_archive(context: dg.AssetExecutionContext, warehouse: PostgresResource, lakehouse: LakehouseResource,
                s3: LakeS3Resource, ads_settings: AdsSettings):
    clock = SystemClock()
    retention = ads_settings.archive_retention()
    try:
        reports = archive_old_rows(warehouse, lakehouse, retention=retention, now=clock.now(),
                                   chunk_rows=ads_settings.archive_chunk_rows)
    except ReconciliationError as err:
        yield dg.AssetCheckResult(check_name=RECONCILIATION_CHECK, asset_key=ARCHIVE_KEY, passed=False,
                                  severity=dg.AssetCheckSeverity.ERROR, description=err.description,
                                  metadata=err.counts)
        raise
    archived = sum(r.archived_rows for r in reports)
    deleted = sum(r.deleted_rows for r in reports)
    kept = sum(r.kept_rows for r in reports)
    yield dg.AssetCheckResult(
        check_name=RECONCILIATION_CHECK, asset_key=ARCHIVE_KEY, passed=True, severity=dg.AssetCheckSeverity.ERROR,
        description=f"{archived} archived = {deleted} deleted + {kept} changed meanwhile",
        metadata={"archived_rows": archived, "deleted_rows": deleted, "kept_changed_rows": kept})
    purged = 0
    keep_days = ads_settings.backup_retention_days_resolved()
    if keep_days is not None:
        purged = purge_backups(s3.get_client(), keep_days=keep_days, today=clock.now().date())
        context.log.info("ads_archive: deleted %d backups older than %d days", purged, keep_days)
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": archived_row_count(lakehouse),
        "dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in ARCHIVE_ARROW]),
        "retention_hours": retention.total_seconds() / 3600,
        "archived_rows": archived,
        "deleted_rows": deleted,
        "kept_changed_rows": kept,
        "batches": dg.MetadataValue.md("\n".join(
            f"- `{r.batch_id}`{' (resumed)' if r.resumed else ''}: cutoff {r.cutoff.isoformat()}, "
            f"{r.planned_rows} planned, {r.archived_rows} archived, {r.deleted_rows} deleted, "
            f"snapshots {r.snapshot_ids}" for r in reports) or "nothing older than the cutoff"),
        "backups_deleted": purged,
        "location": ARCHIVE_LOCATION,
        "backup_location": f"s3://{BUCKET}/{BACKUP_PREFIX}",
    })
