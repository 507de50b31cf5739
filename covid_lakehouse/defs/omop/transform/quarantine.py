"""Output: the quarantine, rows that could not be published and why.

Reads ``files``, ``quarantined_file_rows``, ``clean_file_rows``, ``file_candidates``, ``nameless`` and ``source``."""

from __future__ import annotations

from pathlib import Path

import duckdb

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.transform.session import scalar, write_parquet


def build_quarantine(con: duckdb.DuckDBPyConnection, params: dict, path: Path) -> int:
    """Written to ``path``; returns its rows."""
    # The source's nameless rows are looked up in the extract only when there are any: that scan reads
    # every column of every source row.
    # (a nameless provider is a source row's exactly when in_source: counted without scanning the rows)
    nameless_source_rows = scalar(con, "SELECT count(*) FROM nameless WHERE in_source")
    from_source = SOURCE_NAMELESS if nameless_source_rows else ""
    return write_parquet(con, f"""
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
        {from_source}
        ORDER BY 1, 2, try_cast(source_key AS BIGINT)""", tables.QUARANTINE, path, params)


SOURCE_NAMELESS = """
        UNION ALL
        SELECT 'postgres', $source_object, s.provider_id::VARCHAR, 'missing_provider_name',
               'no source gives this provider a name', to_json(s)::VARCHAR, $now
        FROM source s WHERE s.provider_id IN (SELECT gid FROM nameless)"""
