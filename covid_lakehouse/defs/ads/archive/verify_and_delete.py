"""Steps 3 and 4, verify and delete, in one transaction: the batch's (ad_id, row_version) pairs read
back from the committed ads.ads_archive into the temp table ads_archive_verified are checked against
ads.archive_pending; the verified rows are deleted from ads.ads, archived == deleted + changed-meanwhile
is reconciled, ads.archive_batches marks the batch done and ads.archive_pending is emptied."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql
from pyiceberg.expressions import EqualTo

from covid_lakehouse.defs.ads.archive.errors import ArchiveVerificationError, ReconciliationError
from covid_lakehouse.defs.ads.archive.state import Batch, Hook
from covid_lakehouse.defs.ads.archive.table import scan_batches
from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE
from covid_lakehouse.defs.ads.warehouse import ADS, BATCHES, PENDING
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import PostgresResource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchReport:
    batch_id: str
    cutoff: datetime
    resumed: bool
    planned_rows: int
    archived_rows: int
    deleted_rows: int
    kept_rows: int  # changed after planning: the live version stays, the archive keeps the old one
    snapshot_ids: list[int] = field(default_factory=list)


# Rows per CSV piece sent to PostgreSQL (copy_arrow's max_rows): a data file's batch (up to a chunk,
# 100,000 rows) encoded whole made CSV buffers of ~5 MB, a few in flight at once, which the C heap kept.
# At 1M rows (3 alternating rounds, load 3.5-6): 16k / 64k / 200k rows a piece peaked at 378 / 392 / 391 MB
# (medians), the verification taking 5.6 / 5.8 / 5.2 s, within its noise (4.5-6.6 s for every size).
READ_BACK_PIECE_ROWS = 16_384


def verify_and_delete(conn: psycopg.Connection, lakehouse: LakehouseResource, batch: Batch,
                       snapshots: dict[int, int], hook: Hook, *, resumed: bool) -> BatchReport:
    table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    recorded = sum(snapshots.values())
    verified = sql.Identifier("ads_archive_verified")
    with conn.transaction():
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (ad_id uuid NOT NULL, row_version bigint NOT NULL) "
                             "ON COMMIT DROP").format(verified))
        # Read back from the committed table, not from what this process thinks it wrote.
        PostgresResource.copy_arrow(conn, verified, scan_batches(table, EqualTo("batch_id", batch.batch_id),
                                                                 ("ad_id", "row_version")),
                                    columns=["ad_id", "row_version"], max_rows=READ_BACK_PIECE_ROWS)
        conn.execute(sql.SQL("ANALYZE {}").format(verified))
        # Hash joins, no sort (count(DISTINCT) sorted every read-back row: at 5M rows it spilled to disk
        # and grew faster than the rows). The batch's pending pairs are distinct (ad_id is ads.ads' key
        # when planned), so when every pair read back is planned, the distinct ads read back are the
        # pending pairs matched: all pending pairs minus those the read-back missed.
        read_back, unplanned, missed, pending_rows = conn.execute(sql.SQL(
            "SELECT count(v.ad_id), count(*) FILTER (WHERE p.ad_id IS NULL), count(*) FILTER (WHERE v.ad_id IS NULL), "
            "(SELECT count(*) FROM {pending} WHERE batch_id = %(batch)s) "
            "FROM {verified} v FULL JOIN (SELECT ad_id, row_version FROM {pending} WHERE batch_id = %(batch)s) p "
            "ON p.ad_id = v.ad_id AND p.row_version = v.row_version"
        ).format(pending=PENDING, verified=verified), {"batch": batch.batch_id}).fetchone()
        distinct = pending_rows - missed
        if read_back != recorded or distinct != read_back or unplanned:
            raise ArchiveVerificationError(
                f"archive batch {batch.batch_id}: read back {read_back} rows ({distinct} distinct ads, "
                f"{unplanned} not planned) but its snapshots recorded {recorded}; nothing was deleted",
                {"read_back": read_back, "distinct": distinct, "unplanned": unplanned, "recorded": recorded})
        hook("verified")
        # In the table's physical order (sorted row addresses): deleting in the read-back's order touches
        # the heap at random, and once ads.ads outgrows shared_buffers every delete evicts a dirty page
        # (5M rows: 50x the time of 1M instead of 5x). The version is checked again on the row deleted.
        deleted = conn.execute(sql.SQL(
            "DELETE FROM {ads} a USING (SELECT l.ctid AS tid, l.row_version FROM {ads} l JOIN {verified} v "
            "ON l.ad_id = v.ad_id AND l.row_version = v.row_version ORDER BY 1) doomed "
            "WHERE a.ctid = doomed.tid AND a.row_version = doomed.row_version").format(
            ads=ADS, verified=verified)).rowcount
        kept = conn.execute(sql.SQL("SELECT count(*) FROM {verified} v JOIN {ads} a ON a.ad_id = v.ad_id").format(
            verified=verified, ads=ADS)).fetchone()[0]
        if deleted + kept != read_back:
            raise ReconciliationError(batch.batch_id, read_back, deleted, kept)
        hook("deleted")
        # finished_at: when the delete took effect (not the transaction's start); replay orders by it.
        conn.execute(sql.SQL("UPDATE {} SET status = 'done', archived_rows = %s, deleted_rows = %s, kept_rows = %s, "
                             "snapshot_ids = %s, finished_at = clock_timestamp() WHERE batch_id = %s").format(BATCHES),
                     (read_back, deleted, kept, ",".join(map(str, snapshots)), batch.batch_id))
        conn.execute(sql.SQL("TRUNCATE {}").format(PENDING))  # it only ever holds the one open batch
    log.info("archive batch %s done: %d archived, %d deleted, %d kept (changed meanwhile)", batch.batch_id,
             read_back, deleted, kept)
    return BatchReport(batch.batch_id, batch.cutoff, resumed, batch.planned_rows, read_back, deleted, kept,
                       list(snapshots))
