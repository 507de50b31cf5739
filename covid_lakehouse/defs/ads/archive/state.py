"""The archive's state machine records: the open batch row in ads.archive_batches (read here) and
the Iceberg snapshots tagged with a batch id (read from ads.ads_archive's lineage)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE
from covid_lakehouse.defs.ads.warehouse import BATCHES
from covid_lakehouse.lib.lakehouse import LakehouseResource

BATCH_PROPERTY = "ads.archive-batch-id"

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
    """{snapshot_id: records added} of the batch's snapshots in the table's current lineage."""
    table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    found: dict[int, int] = {}
    snapshot = table.current_snapshot()
    while snapshot is not None:
        summary = snapshot.summary
        if summary is not None and summary.get(BATCH_PROPERTY) == batch_id:
            found[snapshot.snapshot_id] = int(summary.get("added-records", 0))
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    return dict(sorted(found.items()))
