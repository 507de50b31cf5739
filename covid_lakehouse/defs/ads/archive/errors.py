"""What the ads archive raises; each is a dagster.Failure whose message says what was (not) done."""

from __future__ import annotations

import dagster as dg


class ArchiveError(dg.Failure):
    """The archive stopped before deleting anything it had not proven archived."""

    def __init__(self, description: str, metadata: dict | None = None):
        super().__init__(description=description, metadata=metadata or {})


class ArchiveBusyError(ArchiveError):
    pass


class ArchiveVerificationError(ArchiveError):
    pass


class ReconciliationError(ArchiveError):
    def __init__(self, batch_id: str, archived: int, deleted: int, kept: int):
        self.counts = {"archived_rows": archived, "deleted_rows": deleted, "kept_changed_rows": kept}
        super().__init__(
            f"archive batch {batch_id}: {archived} rows archived but {deleted} deleted + {kept} changed "
            "meanwhile; rows of the batch left ads.ads outside the archive. Nothing was deleted; "
            "investigate before marking the batch done", self.counts)
