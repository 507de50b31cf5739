"""Output: the reconciled counts (Reconciliation), each taken from a different table than the one it
is compared with.

Reads ``source``, ``clean_source_rows``, ``previous_source_provenance``, ``chosen``, ``nameless``, ``clean_file_rows``,
``files``, ``quarantined_file_rows`` and ``file_candidates``."""

from __future__ import annotations

import duckdb

from covid_lakehouse.defs.omop.transform.results import Reconciliation
from covid_lakehouse.defs.omop.transform.session import scalar


def count_reconciliation(con: duckdb.DuckDBPyConnection, providers: int) -> Reconciliation:
    """Each count is taken from a different table than the one it is compared with, so a row lost or
    duplicated by a join shows up as an unbalanced equation."""
    run_rows = "(SELECT fid FROM clean_file_rows WHERE file_ref IN (SELECT file_ref FROM files WHERE run))"
    quarantined = "(SELECT fid FROM quarantined_file_rows UNION SELECT fid FROM file_candidates WHERE gid IN (SELECT gid FROM nameless))"
    attached = "(SELECT fid FROM file_candidates WHERE gid NOT IN (SELECT gid FROM nameless))"
    founding = "(SELECT founding_fid FROM chosen WHERE NOT in_source)"
    # The tenant-sized joins (the diff against the previous run, the deleted rows) one query each: DuckDB
    # spills a single join, but several in one query are pinned at once.
    new, changed, unchanged = con.execute("""
        SELECT count(*) FILTER (WHERE p.src_id IS NULL),
               count(*) FILTER (WHERE p.src_id IS NOT NULL AND (p.row_hash = c.row_hash AND p.status <> 'deleted') IS NOT TRUE),
               count(*) FILTER (WHERE p.src_id IS NOT NULL AND p.row_hash = c.row_hash AND p.status <> 'deleted')
        FROM clean_source_rows c LEFT JOIN previous_source_provenance p USING (src_id)""").fetchone()
    # A first run (no previous provenance) deleted nothing: no anti-join hashing every source row to find none.
    # The source rows gone since, and of the rows the last run published, how many and how many are gone
    # (checks.source_deletions_bounded). A NULL source id is no id: it never matches, and must not turn
    # every NOT IN into NULL (nothing found gone at all).
    deleted, previously_published, published_gone = con.execute("""
        SELECT count(*) FILTER (WHERE status <> 'deleted' AND gone), count(*) FILTER (WHERE status = 'published'),
               count(*) FILTER (WHERE status = 'published' AND gone)
        FROM (SELECT status, src_id NOT IN (SELECT src_id FROM clean_source_rows WHERE src_id IS NOT NULL) AS gone
              FROM previous_source_provenance)""").fetchone() \
        if scalar(con, "SELECT count(*) FROM previous_source_provenance") else (0, 0, 0)
    counts = con.execute(f"""
        SELECT
            (SELECT count(*) FROM source),
            (SELECT count(*) FROM chosen WHERE in_source),
            (SELECT count(*) FROM nameless WHERE in_source),
            (SELECT count(*) FROM clean_file_rows),
            (SELECT count(*) FROM chosen WHERE NOT in_source),
            (SELECT count(*) FROM {attached}),
            (SELECT count(*) FROM {quarantined}),
            (SELECT count(*) FROM files WHERE run),
            (SELECT count(*) FROM {run_rows}),
            (SELECT count(*) FROM {founding} WHERE founding_fid IN {run_rows}),
            (SELECT count(*) FROM {attached} WHERE fid IN {run_rows}),
            (SELECT count(*) FROM {quarantined} WHERE fid IN {run_rows})
    """).fetchone()
    (source_rows, published, src_quarantined, file_rows, file_only, attached_rows,
     file_quarantined, run_files, run_read, run_new, run_attached, run_quarantined) = counts
    return Reconciliation(
        source_rows=source_rows, source_new=new, source_changed=changed, source_unchanged=unchanged,
        source_deleted=deleted, source_previously_published=previously_published,
        source_published_gone=published_gone, source_published=published, source_quarantined=src_quarantined,
        file_rows=file_rows, file_rows_new=file_only, file_rows_merged=attached_rows - file_only,
        file_rows_quarantined=file_quarantined, run_files=run_files, run_file_rows_read=run_read,
        run_file_rows_new=run_new, run_file_rows_merged=run_attached - run_new,
        run_file_rows_quarantined=run_quarantined, file_only_providers=file_only, providers=providers,
    )
