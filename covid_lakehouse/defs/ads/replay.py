"""Rebuild ads.ads from the raw backups in s3://ad-data/backup/ (the reason they are kept).

Backups are replayed in the order they were fetched, one load run at a time, through the same parser,
blocking checks and upsert as the hourly load: a run whose checks failed back then is rejected again,
and replaying onto an intact table changes nothing. The archive's deletes are replayed too (see
_not_archived_then): each ad ends live or archived as it did, never in both places."""

import logging
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from covid_lakehouse.defs.ads.api import AdsPayloadError, parse_ads
from covid_lakehouse.defs.ads.archive import LOCK_WAIT, ArchiveBusyError, acquire_lock, scan_batches
from covid_lakehouse.defs.ads.archive.state import open_batch
from covid_lakehouse.defs.ads.backup import BackupError, list_backup_keys, parse_backup_key, read_backup
from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE, BACKUP_PREFIX, BUCKET
from covid_lakehouse.defs.ads.warehouse import (
    ADS,
    BATCHES,
    LOAD_AUDITS,
    VALUE_COLUMNS,
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
    skipped_archived: int = 0  # sightings of a version the archive holds (it was deleted then)
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
        unfinished = open_batch(conn)
        if unfinished is not None:  # its rows are in both places until its delete: replay would keep both
            raise ArchiveBusyError(f"archive batch {unfinished.batch_id} is unfinished ({unfinished.status}); "
                                   "run the ad_archive job to finish it before replaying")
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
            result = upsert_staged(conn, staging, source_filter=_not_archived_then(archived, fetched))
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
    """A temporary table of the archived versions: per archived row its values, when its batch was
    planned and when the batch deleted it from ads.ads (the batch's finished_at; a batch PostgreSQL no
    longer knows counts as deleted when planned)."""
    archived = sql.Identifier("ads_replay_archived")
    conn.execute(sql.SQL("CREATE TEMP TABLE {} (ad_id uuid, batch_id uuid, planned_at timestamptz, "
                         "deleted_at timestamptz, ad_group text, ad_campaign integer, ad_campaign_raw text, "
                         "ad_scheme_origin text, ad_scheme_approved boolean, shown_at timestamptz) "
                         "ON COMMIT DROP").format(archived))
    if lakehouse.table_exists(ARCHIVE_NAMESPACE, ARCHIVE_TABLE):
        table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
        columns = ("ad_id", "batch_id", "archived_at", *VALUE_COLUMNS)
        batches = (batch.select(columns) for batch in scan_batches(table, selected_fields=columns))  # in order
        PostgresResource.copy_arrow(conn, archived, batches, columns=["ad_id", "batch_id", "planned_at", *VALUE_COLUMNS])
    conn.execute(sql.SQL("UPDATE {archived} x SET deleted_at = coalesce("
                         "(SELECT b.finished_at FROM {batches} b WHERE b.batch_id = x.batch_id), x.planned_at)").format(
        archived=archived, batches=BATCHES))
    conn.execute(sql.SQL("CREATE INDEX ON {} (ad_id, deleted_at)").format(archived))
    conn.execute(sql.SQL("ANALYZE {}").format(archived))
    return archived


def _not_archived_then(archived: sql.Identifier, fetched: datetime) -> sql.Composable:
    """Replays the archive's deletes. For a sighting of an ad fetched at ``fetched``, the ad's next archive
    delete after it decides: fetched before that batch was planned, the sighting is superseded by the
    archived version (which the delete then removed): skip it. Fetched between plan and delete, it either
    changed the ad (a new version, which the delete kept: replay it) or repeated the archived values onto
    the archived version (which the delete removed: skip it, unless replay has already made the ad live
    again with a change in that window). Sightings after the last delete load as they did."""
    values = [sql.Identifier(c) for c in VALUE_COLUMNS]
    return sql.SQL(
        "NOT EXISTS (SELECT FROM (SELECT * FROM {archived} x WHERE x.ad_id = s.ad_id AND x.deleted_at > {at} "
        "ORDER BY x.deleted_at LIMIT 1) nx WHERE {at} < nx.planned_at OR (({s_values}) IS NOT DISTINCT FROM "
        "({nx_values}) AND NOT EXISTS (SELECT FROM {ads} a WHERE a.ad_id = s.ad_id)))").format(
        archived=archived, at=sql.Literal(fetched), ads=ADS,
        s_values=sql.SQL(", ").join(sql.SQL("s.{}").format(v) for v in values),
        nx_values=sql.SQL(", ").join(sql.SQL("nx.{}").format(v) for v in values))
