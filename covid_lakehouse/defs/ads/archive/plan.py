"""Step 1, plan: one transaction writes a batch row (status 'planned') to ads.archive_batches and the
candidates' (ad_id, row_version, shown_date) to ads.archive_pending, reading ads.ads rows shown before
the cutoff. The planned shown date (the archive's partition) lets the write step copy a group of days
at a time, with no sort of the batch."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

import psycopg
from psycopg import sql

from covid_lakehouse.defs.ads.archive.state import Batch
from covid_lakehouse.defs.ads.warehouse import ADS, BATCHES, PENDING, PG_SCHEMA

log = logging.getLogger(__name__)

# The write step reads the batch one group of days at a time through this index. Built after the
# insert (one sort of small keys) and dropped before the next plan's insert: maintained row by row,
# it made the plan several times slower (1,000,000 rows: 1.6 s -> 4.2 s).
PENDING_DATE_INDEX = "archive_pending_shown_date_idx"


def plan_batch(conn: psycopg.Connection, *, cutoff: datetime, now: datetime) -> Batch | None:
    batch_id = str(uuid.uuid4())
    with conn.transaction():
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(PG_SCHEMA, PENDING_DATE_INDEX)))
        conn.execute(sql.SQL("INSERT INTO {} (batch_id, cutoff, created_at, status, planned_rows) "
                             "VALUES (%s, %s, %s, 'planned', 0)").format(BATCHES), (batch_id, cutoff, now))
        planned = conn.execute(sql.SQL("INSERT INTO {} (batch_id, ad_id, row_version, shown_date) "
                                       "SELECT %s, ad_id, row_version, (shown_at AT TIME ZONE 'UTC')::date "
                                       "FROM {} WHERE shown_at < %s").format(
            PENDING, ADS), (batch_id, cutoff)).rowcount
        if planned == 0:
            raise psycopg.Rollback()  # nothing old enough: leave no empty batch behind
        conn.execute(sql.SQL("UPDATE {} SET planned_rows = %s WHERE batch_id = %s").format(BATCHES),
                     (planned, batch_id))
        conn.execute(sql.SQL("CREATE INDEX {} ON {} (shown_date)").format(sql.Identifier(PENDING_DATE_INDEX), PENDING))
        conn.execute(sql.SQL("ANALYZE {}").format(PENDING))  # fresh statistics: the joins below are hash joins
    if planned == 0:
        return None
    log.info("archive batch %s planned: %d rows shown before %s", batch_id, planned, cutoff.isoformat())
    return Batch(batch_id, cutoff, now, "planned", planned)
