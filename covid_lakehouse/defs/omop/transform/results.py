"""What build_providers returns: the output tables (as local parquet files) and the reconciled counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# The outputs of build_providers, each one parquet file named <output>.parquet.
PROVIDER, PROVENANCE, QUARANTINE, FLAGS, ID_MAP_ADDITIONS = (
    "provider", "provenance", "quarantine", "flags", "id_map_additions")


@dataclass
class Reconciliation:
    source_rows: int = 0
    source_new: int = 0
    source_changed: int = 0
    source_unchanged: int = 0
    source_deleted: int = 0
    source_previously_published: int = 0  # source rows the last run published (its provenance)
    source_published_gone: int = 0  # of those, the rows gone from the source now
    source_published: int = 0
    source_quarantined: int = 0
    file_rows: int = 0
    file_rows_new: int = 0
    file_rows_merged: int = 0
    file_rows_quarantined: int = 0
    run_files: int = 0
    run_file_rows_read: int = 0
    run_file_rows_new: int = 0
    run_file_rows_merged: int = 0
    run_file_rows_quarantined: int = 0
    file_only_providers: int = 0
    providers: int = 0

    def equations(self) -> list[tuple[str, int, int]]:
        """(statement, left, right): every one must balance."""
        return [
            ("source rows = new + changed + unchanged", self.source_rows,
             self.source_new + self.source_changed + self.source_unchanged),
            ("source rows = published + quarantined", self.source_rows,
             self.source_published + self.source_quarantined),
            ("file rows (all files) = new + merged + quarantined", self.file_rows,
             self.file_rows_new + self.file_rows_merged + self.file_rows_quarantined),
            ("file rows read this run = new + merged + quarantined", self.run_file_rows_read,
             self.run_file_rows_new + self.run_file_rows_merged + self.run_file_rows_quarantined),
            ("providers = published source rows + file-only providers", self.providers,
             self.source_published + self.file_only_providers),
        ]

    @property
    def balanced(self) -> bool:
        return all(left == right for _, left, right in self.equations())


@dataclass
class ProviderBuild:
    """The outputs were streamed into parquet files (``files``: output name -> path), so they never sat
    whole in memory; ``table`` reads one back as an Arrow table (for tests and small outputs)."""

    files: dict[str, Path]
    rows: dict[str, int]
    counts: Reconciliation
    run_files: list[str] = field(default_factory=list)  # "key#etag" of files first harmonized now
    scratch: Any = None  # the temporary directory holding ``files`` when the caller gave none

    def table(self, output: str) -> pa.Table:
        return pq.read_table(self.files[output])

    def flag_counts(self) -> dict[str, int]:
        return value_counts(pq.read_table(self.files[FLAGS], columns=["flag"]), "flag")

    def quarantine_counts(self) -> dict[str, int]:
        return value_counts(pq.read_table(self.files[QUARANTINE], columns=["reason"]), "reason")


def value_counts(table: pa.Table, column: str) -> dict[str, int]:
    if not table.num_rows:
        return {}
    counts = table[column].value_counts().to_pylist()
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: (-c["counts"], str(c["values"])))}
