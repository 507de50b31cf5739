"""Output: the quarantine, rows that could not be published and why.

Reads ``files``, ``quarantined_file_rows``, ``clean_file_rows``, ``file_candidates``, ``nameless`` and ``source_nameless_records``."""

from __future__ import annotations

from pathlib import Path

import duckdb

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.transform.session import write_parquet


def build_quarantine(con: duckdb.DuckDBPyConnection, params: dict, path: Path) -> int:
    """Written to ``path``; returns its rows."""
    # A nameless source row's record was taken while cleaning (``source_nameless_records``): the extract
    # is not scanned again (that scan read every column of every source row).
    return write_parquet(con, """
        SELECT 'client_file' AS source_system, object_key AS source_object, NULL AS source_key, reason, detail,
               NULL AS record, ingested_at AS detected_at
        FROM files WHERE status = 'rejected'
        UNION ALL
        SELECT 'client_file', clean_file_rows.object_key, clean_file_rows.line_no::VARCHAR, q.reason, q.detail, clean_file_rows.record, clean_file_rows.ingested_at
        FROM quarantined_file_rows q JOIN clean_file_rows USING (fid)
        UNION ALL
        SELECT 'client_file', file_candidates.object_key, file_candidates.line_no::VARCHAR, 'missing_provider_name',
               'no source gives this provider a name', file_candidates.record, file_candidates.ingested_at
        FROM file_candidates WHERE gid IN (SELECT gid FROM nameless)
        UNION ALL
        SELECT 'postgres', $source_object, src_id::VARCHAR, 'missing_provider_name',
               'no source gives this provider a name', record, $now
        FROM source_nameless_records WHERE src_id IN (SELECT gid FROM nameless)
        ORDER BY 1, 2, try_cast(source_key AS BIGINT)""", tables.QUARANTINE, path, params)
