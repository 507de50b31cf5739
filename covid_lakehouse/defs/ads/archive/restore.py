"""Restore: the ads of one shown date move from ads.ads_archive back into ads.ads (through the temp
table ads_restore), then leave the archive's current snapshot."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from psycopg import sql
from pyiceberg.expressions import And, EqualTo, In

from covid_lakehouse.defs.ads.archive.errors import ArchiveBusyError, ArchiveError
from covid_lakehouse.defs.ads.archive.lock import exclusive_connection
from covid_lakehouse.defs.ads.archive.state import Hook, no_hook, open_batch
from covid_lakehouse.defs.ads.archive.table import ARCHIVE_ARROW, scan_batches
from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE
from covid_lakehouse.defs.ads.warehouse import ADS, ROW_VERSION_SEQ, ensure_tables
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import PostgresResource

log = logging.getLogger(__name__)


RESTORE_PROPERTY = "ads.restore-date"


@dataclass(frozen=True)
class RestoreReport:
    day: date
    archived_rows: int  # copies of ads shown that day found in the archive
    restored_rows: int  # inserted into ads.ads
    removed_from_archive: int
    kept_in_archive: int  # older copies, or ads live again in ads.ads with a newer sighting


def restore_date(warehouse: PostgresResource, lakehouse: LakehouseResource, day: date, *,
                 hook: Hook | None = None) -> RestoreReport:
    """Move the ads shown on ``day`` (UTC) from the archive back into ads.ads. Idempotent.

    Per ad_id the newest archived copy is inserted (new row_version, original loaded_at) unless the
    ad is live again in ads.ads. Then every archived copy whose sighting (backup_key) is the live
    row's is deleted from the archive's current snapshot, after the PostgreSQL insert committed; a
    crash in between is repaired by the next call. Older copies and ads seen again since stay in the
    archive as history."""
    hook = hook or no_hook
    with exclusive_connection(warehouse.dsn) as conn:
        with conn.transaction():
            ensure_tables(conn)
        unfinished = open_batch(conn)
        if unfinished is not None:
            raise ArchiveBusyError(f"archive batch {unfinished.batch_id} is unfinished ({unfinished.status}); "
                                   "run the ad_archive job to finish it before restoring")
        if not lakehouse.table_exists(ARCHIVE_NAMESPACE, ARCHIVE_TABLE):
            return RestoreReport(day, 0, 0, 0, 0)
        table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
        on_day = EqualTo("shown_date", day.isoformat())
        staging = sql.Identifier("ads_restore")
        with conn.transaction():
            conn.execute(sql.SQL(
                "CREATE TEMP TABLE {} (ad_id text, ad_group text, ad_campaign integer, ad_campaign_raw text, "
                "ad_scheme_origin text, ad_scheme_approved boolean, shown_at timestamptz, shown_date date, "
                "backup_key text, loaded_at timestamptz, row_version bigint, batch_id text, "
                "archived_at timestamptz) ON COMMIT DROP").format(staging))
            archived = PostgresResource.copy_arrow(conn, staging, scan_batches(table, on_day),
                                                   columns=ARCHIVE_ARROW.names)
            restored = conn.execute(sql.SQL(
                "INSERT INTO {ads} (ad_id, ad_group, ad_campaign, ad_campaign_raw, ad_scheme_origin, "
                "ad_scheme_approved, shown_at, backup_key, loaded_at, row_version) "
                "SELECT ad_id::uuid, ad_group, ad_campaign, ad_campaign_raw, ad_scheme_origin, ad_scheme_approved, "
                "shown_at, backup_key, loaded_at, nextval({seq}) FROM ("
                "SELECT DISTINCT ON (ad_id) * FROM {staging} ORDER BY ad_id, archived_at DESC, row_version DESC) latest "
                "ON CONFLICT (ad_id) DO NOTHING").format(ads=ADS, seq=sql.Literal(ROW_VERSION_SEQ),
                                                          staging=staging)).rowcount
            to_remove = [v for (v,) in conn.execute(sql.SQL(
                "SELECT r.row_version FROM {staging} r JOIN {ads} a "
                "ON a.ad_id = r.ad_id::uuid AND a.backup_key = r.backup_key").format(staging=staging, ads=ADS))]
        hook("restored")
        if to_remove:
            moved = And(on_day, In("row_version", to_remove))
            table.delete(moved, snapshot_properties={RESTORE_PROPERTY: day.isoformat()})
            left = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE).scan(
                row_filter=moved, selected_fields=("row_version",)).to_arrow().num_rows
            if left:
                raise ArchiveError(f"restore {day}: {left} restored rows are still in the archive after the "
                                   "delete; run the restore again")
    log.info("restore %s: %d archived copies, %d restored, %d removed from the archive", day, archived,
             restored, len(to_remove))
    return RestoreReport(day, archived, restored, len(to_remove), archived - len(to_remove))
