"""The archive run: finish an unfinished batch, then plan and run a new one through write (step 2) and
verify_and_delete (steps 3-4), under the ads lock."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from covid_lakehouse.defs.ads.archive.lock import exclusive_connection
from covid_lakehouse.defs.ads.archive.plan import plan_batch
from covid_lakehouse.defs.ads.archive.state import (
    Batch,
    Hook,
    batch_snapshots,
    no_hook,
    open_batch,
    release_finished_tags,
)
from covid_lakehouse.defs.ads.archive.table import ensure_archive_table
from covid_lakehouse.defs.ads.archive.verify_and_delete import BatchReport, verify_and_delete
from covid_lakehouse.defs.ads.archive.write import write_batch
from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE
from covid_lakehouse.defs.ads.warehouse import BATCHES, ensure_tables
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.memory import returning_memory_pool
from covid_lakehouse.lib.postgres import PostgresResource

log = logging.getLogger(__name__)

ARCHIVE_WORK_MEM = "256MB"  # PostgreSQL memory per sort or hash (and index build) of the archive's session


def archive_old_rows(warehouse: PostgresResource, lakehouse: LakehouseResource, *, retention: timedelta,
                     now: datetime, chunk_rows: int = 100_000, hook: Hook | None = None) -> list[BatchReport]:
    """Finish an unfinished batch if there is one, then archive the rows shown before now - retention.
    Returns one report per batch processed (none when nothing is old enough)."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    hook = hook or no_hook
    reports = []
    with returning_memory_pool(), exclusive_connection(warehouse.dsn) as conn:
        # The batch's joins, sorts and index build (plan, the per-day COPYs, read-back, delete) run over
        # every archived row: at 4 MB they spill to disk in ever more batches as a backlog grows.
        conn.execute(sql.SQL("SET work_mem = {}").format(sql.Literal(ARCHIVE_WORK_MEM)))
        conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(ARCHIVE_WORK_MEM)))
        with conn.transaction():
            ensure_tables(conn)
        table = ensure_archive_table(lakehouse)
        unfinished = open_batch(conn)
        release_finished_tags(table, unfinished)
        if unfinished is not None:
            log.info("resuming archive batch %s (%s)", unfinished.batch_id, unfinished.status)
            reports.append(_run_batch(conn, lakehouse, unfinished, chunk_rows, hook, resumed=True))
        batch = plan_batch(conn, cutoff=now - retention, now=now)
        if batch is not None:
            hook("planned")
            reports.append(_run_batch(conn, lakehouse, batch, chunk_rows, hook, resumed=False))
    return reports


def _run_batch(conn: psycopg.Connection, lakehouse: LakehouseResource, batch: Batch, chunk_rows: int,
               hook: Hook, *, resumed: bool) -> BatchReport:
    snapshots = batch_snapshots(lakehouse, batch.batch_id)
    if batch.status == "planned":
        if snapshots:
            log.info("archive batch %s is already in the archive (snapshots %s): not appending again",
                     batch.batch_id, list(snapshots))
        else:
            write_batch(conn, lakehouse, batch, chunk_rows, hook)
            snapshots = batch_snapshots(lakehouse, batch.batch_id)
        hook("committed")
        conn.execute(sql.SQL("UPDATE {} SET status = 'committed', snapshot_ids = %s WHERE batch_id = %s").format(
            BATCHES), (",".join(map(str, snapshots)), batch.batch_id))
    report = verify_and_delete(conn, lakehouse, batch, snapshots, hook, resumed=resumed)
    try:  # done (no batch is open: the lock keeps other archives out): its snapshot may expire like any other
        release_finished_tags(lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE), None)
    except Exception as err:  # the batch is done and consistent; the next run's start removes the tag
        log.warning("archive batch %s is done but its snapshot tag stays until the next run: %s", batch.batch_id, err)
    return report
