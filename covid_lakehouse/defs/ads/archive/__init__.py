"""Archive of old ads: rows move from PostgreSQL ads.ads to the Iceberg table ads.ads_archive
(parquet under s3://ad-data/archive/, partitioned by shown date), and back with restore_date().

A small state machine makes every step safe to crash and repeat (docs/ads.md has the full argument):

1. plan     one transaction: a batch row (status 'planned') + the candidates' (ad_id, row_version)
            in ads.archive_pending. Only one batch is unfinished at a time; a rerun resumes it.
2. write    the candidates still at their planned version are streamed in chunks into parquet files
            and registered in one Iceberg snapshot tagged with the batch id; skipped when a snapshot
            with that tag already exists (a crash after the commit must not append twice).
3. verify   the batch's (ad_id, row_version) pairs are read back from the committed table: no
            duplicates, all planned, as many as the snapshots recorded.
4. delete   one transaction: delete the rows whose current version is one read back, check that
            archived == deleted + changed-meanwhile (blocking reconciliation), mark the batch done.

The load, archive, restore and replay take one PostgreSQL advisory lock, so they never interleave.

Modules, in the order of a run: ``lock``, ``table`` (the Iceberg table), ``state`` (batch rows and tagged
snapshots), ``plan`` (1), ``write`` (2), ``verify_and_delete`` (3-4), ``run`` (the driver), ``restore``;
``errors`` holds what they raise.
"""

from covid_lakehouse.defs.ads.archive.errors import (
    ArchiveBusyError,
    ArchiveError,
    ArchiveVerificationError,
    ReconciliationError,
)
from covid_lakehouse.defs.ads.archive.lock import (
    APPLICATION_NAME,
    LOAD_LOCK_WAIT,
    LOCK_KEY,
    LOCK_WAIT,
    acquire_lock,
    exclusive_connection,
)
from covid_lakehouse.defs.ads.archive.restore import RestoreReport, restore_date
from covid_lakehouse.defs.ads.archive.run import archive_old_rows
from covid_lakehouse.defs.ads.archive.state import Hook
from covid_lakehouse.defs.ads.archive.table import (
    ARCHIVE_ARROW,
    ARCHIVE_PARTITION,
    ARCHIVE_SCHEMA,
    archived_row_count,
    ensure_archive_table,
    scan_batches,
)
from covid_lakehouse.defs.ads.archive.verify_and_delete import BatchReport
from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE

__all__ = [
    "APPLICATION_NAME",
    "ARCHIVE_ARROW",
    "ARCHIVE_NAMESPACE",
    "ARCHIVE_PARTITION",
    "ARCHIVE_SCHEMA",
    "ARCHIVE_TABLE",
    "LOAD_LOCK_WAIT",
    "LOCK_KEY",
    "LOCK_WAIT",
    "ArchiveBusyError",
    "ArchiveError",
    "ArchiveVerificationError",
    "BatchReport",
    "Hook",
    "ReconciliationError",
    "RestoreReport",
    "acquire_lock",
    "archive_old_rows",
    "archived_row_count",
    "ensure_archive_table",
    "exclusive_connection",
    "restore_date",
    "scan_batches",
]
