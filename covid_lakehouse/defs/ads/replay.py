"""Rebuild ads.ads from the raw backups in s3://ad-data/backup/ (the reason they are kept).

Backups are replayed in the order they were fetched, one load run at a time, through the same parser,
blocking checks and upsert as the hourly load: a run whose checks failed back then is rejected again,
and replaying onto an intact table changes nothing. Sightings made before an ad was archived are not
replayed (the archive holds them), so a replay never puts a row back into both places."""

import logging
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from covid_lakehouse.defs.ads.api import AdsPayloadError, parse_ads
from covid_lakehouse.defs.ads.archive import LOCK_WAIT, acquire_lock, scan_batches
from covid_lakehouse.defs.ads.backup import BackupError, list_backup_keys, parse_backup_key, read_backup
from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE, BACKUP_PREFIX, BUCKET
from covid_lakehouse.defs.ads.warehouse import (
    LOAD_AUDITS,
    create_staging,
    ensure_tables,
    stage_pages,
    upsert_staged,
)
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.wap import run_audits

log = logging.getLogger(__name__)


@dataclass
class ReplayCounts:
    objects: int = 0  # backups read
    runs: int = 0  # load runs they came from
    rows: int = 0  # ads in them
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_archived: int = 0  # sightings from before the ad was archived
    rejected_runs: int = 0  # runs whose blocking checks fail (the load rejected them too)
    ignored_objects: int = 0  # objects under the prefix that are not ads backups


def replay_from_backup(warehouse_conn: psycopg.Connection, s3_client, lakehouse: LakehouseResource,
                       bucket: str = BUCKET, prefix: str = BACKUP_PREFIX) -> ReplayCounts:
    """Upsert every backup under s3://bucket/prefix into ads.ads in one transaction (a savepoint when
    the caller has a transaction open: then the caller's commit publishes). ``s3_client`` is a boto3
    client; ``lakehouse`` reads the archive."""
    conn = warehouse_conn
    counts = ReplayCounts()
    with conn.transaction():
        acquire_lock(conn, LOCK_WAIT, transaction_level=True)
        ensure_tables(conn)
        archived = _stage_archived(conn, lakehouse)
        staging = create_staging(conn, "ads_replay_staging")
        for run_keys in _keys_by_run(list_backup_keys(s3_client, bucket, prefix), counts):
            conn.execute(sql.SQL("TRUNCATE {}").format(staging))
            objects = [read_backup(s3_client, key, bucket) for key in run_keys]
            pages = []
            for obj in objects:
                try:
                    pages.append((parse_ads(obj.body), obj.key))
                except AdsPayloadError as err:
                    raise BackupError(f"s3://{bucket}/{obj.key} cannot be replayed: {err}") from None
            rows = stage_pages(conn, staging, pages)
            counts.objects += len(objects)
            counts.runs += 1
            counts.rows += rows
            fetched = max(obj.fetched_at for obj in objects)
            _, failures = run_audits(LOAD_AUDITS, conn, staging, fetched)
            if failures:
                counts.rejected_runs += 1
                log.warning("replay: run %s rejected by %s, as the load did", objects[0].run_id,
                            ", ".join(name for name, _ in failures))
                continue
            result = upsert_staged(conn, staging, source_filter=_not_archived_after(archived, fetched))
            counts.inserted += result.inserted
            counts.updated += result.updated
            counts.unchanged += result.unchanged
            counts.skipped_archived += rows - result.total
    log.info("replay from s3://%s/%s: %s", bucket, prefix, counts)
    return counts


def _keys_by_run(keys: list[str], counts: ReplayCounts) -> list[list[str]]:
    """Backup keys grouped by the load run that wrote them, runs in the order they fetched."""
    runs: dict[str, list[str]] = {}
    for key in keys:  # sorted: chronological
        try:
            _, run_id, _ = parse_backup_key(key)
        except ValueError:
            counts.ignored_objects += 1
            log.warning("replay: ignoring %s (not an ads backup)", key)
            continue
        runs.setdefault(run_id, []).append(key)
    return list(runs.values())


def _stage_archived(conn: psycopg.Connection, lakehouse: LakehouseResource) -> sql.Identifier:
    """A temporary table of archived ad_ids with the time they were last archived."""
    raw, archived = sql.Identifier("ads_replay_archived_raw"), sql.Identifier("ads_replay_archived")
    conn.execute(sql.SQL("CREATE TEMP TABLE {} (ad_id uuid, archived_at timestamptz) ON COMMIT DROP").format(raw))
    if lakehouse.table_exists(ARCHIVE_NAMESPACE, ARCHIVE_TABLE):
        table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
        PostgresResource.copy_arrow(conn, raw, scan_batches(table, selected_fields=("ad_id", "archived_at")),
                                    columns=["ad_id", "archived_at"])
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS "
                         "SELECT ad_id, max(archived_at) AS archived_at FROM {} GROUP BY ad_id").format(archived, raw))
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (ad_id)").format(archived))
    return archived


def _not_archived_after(archived: sql.Identifier, fetched: datetime) -> sql.Composable:
    return sql.SQL("NOT EXISTS (SELECT 1 FROM {} x WHERE x.ad_id = s.ad_id AND x.archived_at >= {})").format(
        archived, sql.Literal(fetched))
