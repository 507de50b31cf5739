"""Output: provenance, one row per source row and per client id of a provider per file.

Reads ``clean_source_rows``, ``previous_source_provenance``, ``file_candidates`` and ``provider_ids``.
The source rows are written a key slice of provider ids at a time, by build_providers' slice loop (one
IdLookup serves the provider output and provenance); other_provenance writes the rest."""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.transform.session import IdLookup, scalar, write_parquet


def source_provenance(con: duckdb.DuckDBPyConnection, params: dict, ids_of: IdLookup, where: Callable[[str], str],
                      writer: pq.ParquetWriter) -> int:
    """The source rows of one key slice (``where``), their provider ids from ``ids_of``, appended to
    ``writer``; returns their rows."""
    def attach(rows: pa.Table) -> pa.Table:
        provider_id = ids_of(rows["gid"])
        return rows.append_column("provider_id", provider_id).append_column(
            "status", pc.if_else(pc.is_null(provider_id), "quarantined", "published"))

    return write_parquet(con, f"{SOURCE_ROWS} WHERE {where('clean_source_rows.src_id')}", tables.PROVENANCE,
                         None, params, batch=attach, writer=writer)


def other_provenance(con: duckdb.DuckDBPyConnection, params: dict, writer: pq.ParquetWriter) -> int:
    """The source rows deleted since the last run and the file rows, appended to ``writer`` after the
    source rows; returns their rows."""
    # Deleted rows only when there was a previous run: the anti-join would hash every source row for nothing.
    previous = scalar(con, "SELECT count(*) FROM previous_source_provenance")
    other = f"{DELETED_ROWS} UNION ALL {FILE_ROWS}" if previous else FILE_ROWS
    return write_parquet(con, other, tables.PROVENANCE, None, params, writer=writer)


# One row per source row: its provider (none when quarantined), first seen and last changed.
SOURCE_ROWS = """
        SELECT clean_source_rows.src_id AS gid, 'postgres' AS source_system, clean_source_rows.src_id::VARCHAR AS source_key, clean_source_rows.id_source,
               $source_object AS source_object, clean_source_rows.row_hash,
               coalesce(p.first_seen_at, $now) AS first_seen_at, $now AS last_seen_at,
               CASE WHEN p.row_hash IS NOT DISTINCT FROM clean_source_rows.row_hash THEN p.last_changed_at ELSE $now END
                   AS last_changed_at
        FROM clean_source_rows LEFT JOIN previous_source_provenance p ON p.src_id = clean_source_rows.src_id"""
# Source rows gone since the last run.
DELETED_ROWS = """
        SELECT provider_id, source_system, source_key, id_source, source_object, 'deleted' AS status, row_hash,
               first_seen_at, last_seen_at, last_changed_at
        FROM previous_source_provenance
        WHERE src_id NOT IN (SELECT src_id FROM clean_source_rows WHERE src_id IS NOT NULL)"""
# The client ids of each provider per file.
FILE_ROWS = """
        SELECT provider_ids.id AS provider_id, 'client_file' AS source_system, file_candidates.client_id AS source_key,
               file_candidates.id_source, file_candidates.object_key AS source_object, 'published' AS status,
               NULL::BIGINT AS row_hash, min(file_candidates.object_last_modified) AS first_seen_at,
               max(file_candidates.object_last_modified) AS last_seen_at,
               max(file_candidates.object_last_modified) AS last_changed_at
        FROM file_candidates JOIN provider_ids USING (gid)
        GROUP BY provider_ids.id, file_candidates.client_id, file_candidates.id_source, file_candidates.object_key"""
