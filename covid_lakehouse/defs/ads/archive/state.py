"""The archive's state machine records: the open batch row in ads.archive_batches (read here) and
the Iceberg snapshots tagged with a batch id (read from ads.ads_archive's lineage)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql
from pyiceberg.table import Table

from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE
from covid_lakehouse.defs.ads.warehouse import BATCHES
from covid_lakehouse.lib.lakehouse import LakehouseResource

BATCH_PROPERTY = "ads.archive-batch-id"
# The batch's snapshot is also tagged (a snapshot ref, committed with the append) until the batch is
# done: lakehouse maintenance never expires a ref's head, so a batch left unfinished for longer than
# the snapshot retention still finds its snapshot, and a resume never appends the batch twice.
BATCH_TAG_PREFIX = "ads-archive-batch-"


def batch_tag(batch_id: str) -> str:
    return f"{BATCH_TAG_PREFIX}{batch_id}"

# Test and operations hook, called with the name of the step just done: "planned", "chunk_written",
# "committed" (Iceberg), "verified", "deleted" (both inside the delete transaction), "restored".
Hook = Callable[[str], None]


@dataclass(frozen=True)
class Batch:
    batch_id: str
    cutoff: datetime
    created_at: datetime
    status: str
    planned_rows: int


def no_hook(_step: str) -> None:
    return None


def open_batch(conn: psycopg.Connection) -> Batch | None:
    row = conn.execute(sql.SQL("SELECT batch_id::text, cutoff, created_at, status, planned_rows FROM {} "
                               "WHERE status <> 'done'").format(BATCHES)).fetchone()
    return Batch(*row) if row else None


def batch_snapshots(lakehouse: LakehouseResource, batch_id: str) -> dict[int, int]:
    """{snapshot_id: records added} of the batch's snapshots: the one its tag names, and any in the
    table's current lineage (batches written before tags; the walk stops at an expired parent)."""
    table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    found: dict[int, int] = {}
    tagged = table.metadata.refs.get(batch_tag(batch_id))
    if tagged is not None and (snapshot := table.snapshot_by_id(tagged.snapshot_id)) is not None:
        found[snapshot.snapshot_id] = int((snapshot.summary or {}).get("added-records", 0))
    snapshot = table.current_snapshot()
    while snapshot is not None:
        summary = snapshot.summary
        if summary is not None and summary.get(BATCH_PROPERTY) == batch_id:
            found[snapshot.snapshot_id] = int(summary.get("added-records", 0))
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    return dict(sorted(found.items()))


def release_finished_tags(table: Table, unfinished: Batch | None) -> list[str]:
    """Remove the tags of batches other than ``unfinished`` (the open batch, if any: done batches and
    ones unknown to PostgreSQL): their snapshots then expire with the usual retention. Run after a
    batch's delete committed and at the start of every run (a crash between the two leaves a tag behind)."""
    keep = batch_tag(unfinished.batch_id) if unfinished is not None else None
    stale = [name for name in table.metadata.refs if name.startswith(BATCH_TAG_PREFIX) and name != keep]
    if stale:
        with table.manage_snapshots() as refs:
            for name in stale:
                refs.remove_tag(name)
    return stale
