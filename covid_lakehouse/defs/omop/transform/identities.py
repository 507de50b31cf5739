"""Step 4: which provider each usable file row describes.

Reads ``clean_source_rows``, ``clean_file_rows``, ``quarantined_file_rows``, ``source_row_by_npi``; writes
``source_row_by_sid``, ``usable_file_rows``, ``identity_by_npi``, ``identity_by_sid``, ``identity_by_pid``,
``identity_of_pid_by_sid``, ``identified_file_rows`` and ``file_candidates``; appends ambiguous rows to
``quarantined_file_rows``."""

from __future__ import annotations

import duckdb


def resolve_identities(con: duckdb.DuckDBPyConnection) -> None:
    """Which provider each usable file row describes. Precedence: the source row with the same NPI;
    the source row with the same source id (SourceID = provider_source_value); the identity of file
    rows sharing its NPI; for rows without an NPI, the identity of rows sharing its source id, then
    its client ProviderID. Two different NPIs are never the same provider. A row whose source id or
    ProviderID points at two providers is ambiguous (quarantined, not guessed).

    The group id (gid) of a provider is its source row's provider_id, or a negative number for a
    provider known only from files."""
    # Source ids that identify one source row, among those the files use.
    con.execute("""
        CREATE TABLE source_row_by_sid AS
        SELECT sid, min(src_id) AS src_id FROM clean_source_rows WHERE sid IN (SELECT sid FROM clean_file_rows WHERE sid IS NOT NULL)
        GROUP BY sid HAVING count(*) = 1""")
    con.execute("""
        CREATE TABLE usable_file_rows AS
        SELECT clean_file_rows.*, pn.src_id AS by_npi, ps.src_id AS by_sid
        FROM clean_file_rows LEFT JOIN source_row_by_npi pn USING (npi_num) LEFT JOIN source_row_by_sid ps USING (sid)
        WHERE clean_file_rows.fid NOT IN (SELECT fid FROM quarantined_file_rows)""")
    con.execute("""
        CREATE TABLE identity_by_npi AS
        SELECT npi, CASE WHEN max(by_npi) IS NOT NULL THEN 'pg:' || max(by_npi)
                         WHEN count(DISTINCT by_sid) = 1 THEN 'pg:' || max(by_sid)
                         ELSE 'npi:' || npi END AS ident
        FROM usable_file_rows WHERE npi IS NOT NULL GROUP BY npi""")
    for key in ("sid", "pid"):
        con.execute(f"""
            CREATE TABLE identity_by_{key} AS
            SELECT {key}, min(ident) AS ident, count(DISTINCT ident) AS n
            FROM usable_file_rows JOIN identity_by_npi USING (npi) WHERE {key} IS NOT NULL GROUP BY {key}""")
    con.execute("""
        CREATE TABLE identity_of_pid_by_sid AS
        SELECT pid, 'sid:' || min(sid) AS ident, count(DISTINCT sid) AS n
        FROM usable_file_rows WHERE npi IS NULL AND sid IS NOT NULL AND pid IS NOT NULL GROUP BY pid""")
    con.execute("""
        CREATE TABLE identified_file_rows AS
        SELECT usable_file_rows.*, CASE
                WHEN usable_file_rows.npi IS NOT NULL THEN ni.ident
                WHEN usable_file_rows.by_sid IS NOT NULL THEN 'pg:' || usable_file_rows.by_sid
                WHEN si.n > 1 THEN NULL
                WHEN si.n = 1 THEN si.ident
                WHEN usable_file_rows.sid IS NOT NULL THEN 'sid:' || usable_file_rows.sid
                WHEN pi.n > 1 OR ps.n > 1 THEN NULL
                WHEN pi.n = 1 THEN pi.ident
                WHEN ps.n = 1 THEN ps.ident
                ELSE 'pid:' || usable_file_rows.pid END AS ident
        FROM usable_file_rows LEFT JOIN identity_by_npi ni ON ni.npi = usable_file_rows.npi LEFT JOIN identity_by_sid si ON si.sid = usable_file_rows.sid
             LEFT JOIN identity_by_pid pi ON pi.pid = usable_file_rows.pid LEFT JOIN identity_of_pid_by_sid ps ON ps.pid = usable_file_rows.pid""")
    con.execute("INSERT INTO quarantined_file_rows SELECT fid, 'ambiguous_match', 'its source id or ProviderID matches several providers' "
                "FROM identified_file_rows WHERE ident IS NULL")
    # File rows as candidates of their provider, the most recent file first.
    con.execute("""
        CREATE TABLE file_candidates AS
        SELECT CASE WHEN ident LIKE 'pg:%' THEN substr(ident, 4)::BIGINT ELSE -dense_rank() OVER (ORDER BY ident) END
                   AS gid,
               row_number() OVER (ORDER BY object_last_modified DESC, object_key DESC, etag, line_no) AS prio, *
        FROM identified_file_rows WHERE ident IS NOT NULL""")
