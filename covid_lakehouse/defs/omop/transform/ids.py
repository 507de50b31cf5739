"""Step 6: stable provider ids from the append-only id map, and the map's additions.

Reads ``id_map``, ``previous_source_provenance``, ``clean_source_rows``, ``source_npi_repeated``, ``nameless``,
``file_candidates``, ``source_row_by_npi`` and ``chosen``; writes ``id_map_by_npi``, ``id_map_by_source_row``,
``previous_ids``, ``source_claims``, ``claims`` (those five dropped once used), ``file_keys``, ``contested_ids``,
``provider_ids`` (gid, id and what the map's key of its source row needs) and ``new_file_keys``. new_id_map_keys reads
``provider_ids`` and ``new_file_keys``."""

from __future__ import annotations

from pathlib import Path

import duckdb

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.transform.session import (
    lowest_per_key,
    register_repeated,
    scalar,
    write_parquet,
)

# The key a source row without one adds to the map: npi:<its NPI> (npi_text: ten digits) when its NPI
# identifies it alone, else pg:<provider_id>.
NEW_SOURCE_KEY = "coalesce('npi:' || npi_text(key_npi_num), 'pg:' || gid)"


def assign_ids(con: duckdb.DuckDBPyConnection) -> bool:
    """Stable provider_ids from the append-only id map (natural key -> id). A provider's claims,
    strongest first: its source row's NPI (npi:<npi>; pg:<provider_id> for a row without a usable
    NPI); the provider_id its source row had in the previous run (so an NPI corrected in the source
    keeps its provider); the NPIs, source ids and client ProviderIDs of its file rows. If two
    providers claim one id, the stronger claim keeps it and the other gets a new id. New keys are
    appended to the map.

    The run queue keeps one tenant's runs apart, but should two overlap they may both append a key:
    the lowest id recorded for a key is the one that counts, so the map never yields two ids.

    Returns whether ``provider_ids`` is in gid order (settle_claims)."""
    collect_claims(con)
    return settle_claims(con)


def collect_claims(con: duckdb.DuckDBPyConnection) -> None:
    """The claims of source rows (``source_claims``) and file rows (``file_keys``) on ids of the map."""
    con.execute("CREATE TABLE id_map_by_npi AS SELECT TRY_CAST(substr(natural_key, 5) AS BIGINT) AS npi_num, id FROM id_map "
                "WHERE starts_with(natural_key, 'npi:')")
    con.execute("CREATE TABLE id_map_by_source_row AS SELECT substr(natural_key, 4)::BIGINT AS src_id, id FROM id_map "
                "WHERE starts_with(natural_key, 'pg:')")
    con.execute("CREATE TABLE previous_ids AS SELECT src_id, provider_id FROM previous_source_provenance WHERE provider_id IS NOT NULL")
    # One row per key, so that the claims below are one row per source row without a GROUP BY.
    lowest_per_key(con, "id_map_by_npi", "npi_num", "id")
    lowest_per_key(con, "id_map_by_source_row", "src_id", "id")
    lowest_per_key(con, "previous_ids", "src_id", "provider_id")
    # One large join per statement, each result a table: DuckDB spills a single hash join's build side
    # beyond the memory limit, but three in one pipeline (the map by NPI, by source row, the previous
    # run: each as large as the tenant) must all be pinned at once (a rerun of a 2M tenant ran out of
    # memory at 256MB there).
    con.execute("""
        CREATE TABLE source_claims AS
        SELECT src_id AS gid, CASE WHEN npi_num NOT IN (SELECT value FROM source_npi_repeated) THEN npi_num END
                   AS key_npi_num, NULL::BIGINT AS key_id, NULL::BIGINT AS previous_id
        FROM clean_source_rows WHERE src_id NOT IN (SELECT gid FROM nameless)""")
    # An empty table (a first run's map and previous run) claims nothing: its join, a copy of every
    # claim, is skipped.
    for table, claimed in [
        ("id_map_by_npi", "s.gid, s.key_npi_num, i.id AS key_id, s.previous_id FROM source_claims s "
                          "LEFT JOIN id_map_by_npi i ON i.npi_num = s.key_npi_num"),
        ("id_map_by_source_row", "s.gid, s.key_npi_num, coalesce(s.key_id, r.id) AS key_id, s.previous_id "
                                 "FROM source_claims s LEFT JOIN id_map_by_source_row r ON r.src_id = s.gid "
                                 "AND s.key_npi_num IS NULL"),
        ("previous_ids", "s.gid, s.key_npi_num, s.key_id, pp.provider_id AS previous_id FROM source_claims s "
                         "LEFT JOIN previous_ids pp ON pp.src_id = s.gid"),
    ]:
        if scalar(con, f"SELECT count(*) FROM {table}"):
            con.execute(f"CREATE OR REPLACE TABLE source_claims AS SELECT {claimed}")
    # A map and a previous run as large as the tenant: not needed past here, so free their memory now.
    for table in ("id_map_by_npi", "id_map_by_source_row", "previous_ids"):
        con.execute(f"DROP TABLE {table}")
    # File keys (few), except the NPI key a source row already gives its provider.
    con.execute("""
        CREATE TABLE file_keys AS
        SELECT k.gid, k.key, k.strength, min(m.id) AS mapped_id FROM (
            SELECT DISTINCT file_candidates.gid, k.key, k.strength
            FROM file_candidates CROSS JOIN LATERAL (VALUES ('npi:' || file_candidates.npi, 2), ('sid:' || file_candidates.sid, 3), ('pid:' || file_candidates.pid, 4))
                 AS k(key, strength)
                 LEFT JOIN source_row_by_npi p ON p.src_id = file_candidates.gid
            WHERE k.key IS NOT NULL AND NOT (k.strength = 2 AND file_candidates.npi_num IS NOT DISTINCT FROM p.npi_num)
              AND file_candidates.gid NOT IN (SELECT gid FROM nameless)) k
        LEFT JOIN id_map m ON m.natural_key = k.key
        GROUP BY k.gid, k.key, k.strength""")


def settle_claims(con: duckdb.DuckDBPyConnection) -> bool:
    """Every published provider's strongest claim (``claims``); contested ids to the stronger claim,
    new ids for the rest (``provider_ids``, with each provider's new key); the file keys to record
    (``new_file_keys``). Returns whether ``provider_ids`` is in gid order (IdLookup's ``in_gid_order``)."""
    # Every published provider once, with its strongest claim (NULL: none). source_claims holds exactly the
    # published providers with a source row (gid = its provider_id); the others are file-only (gid < 0).
    con.execute("""
        CREATE TABLE claims AS
        WITH file_claims AS (SELECT gid, arg_min(mapped_id, (strength, key)) AS id, min(strength) AS strength
                         FROM file_keys WHERE mapped_id IS NOT NULL GROUP BY gid)
        SELECT gid, coalesce(p.key_id, p.previous_id, f.id) AS id,
               CASE WHEN p.key_id IS NOT NULL THEN 0 WHEN p.previous_id IS NOT NULL THEN 1 ELSE f.strength END
                   AS strength, NULL::BIGINT AS founding_fid,
               -- whether this provider's source row adds its key to the map (see NEW_SOURCE_KEY), and its NPI
               p.key_id IS NULL AS adds_key, p.key_npi_num
        FROM source_claims p LEFT JOIN file_claims f USING (gid)
        UNION ALL
        SELECT c.gid, f.id, f.strength, c.founding_fid, NULL, NULL FROM chosen c LEFT JOIN file_claims f USING (gid)
        WHERE c.gid < 0""")
    con.execute("DROP TABLE source_claims")  # one row per source row, all in claims now
    register_repeated(con, "contested_ids", "SELECT id FROM claims WHERE id IS NOT NULL")
    # No claim on any id (a first run: the map is empty): every id is new, and the table below is written in
    # gid order (IdLookup takes it as it is). Else the kept ids come first, in no order.
    in_gid_order = not scalar(con, "SELECT EXISTS (SELECT 1 FROM claims WHERE id IS NOT NULL)")
    con.execute("""
        CREATE TABLE provider_ids AS
        WITH losers AS (SELECT gid FROM claims WHERE gid IS NOT NULL AND id IN (SELECT value FROM contested_ids)
                        QUALIFY row_number() OVER (PARTITION BY id ORDER BY strength, gid) > 1),
             -- a claim without a gid (a NULL source provider_id) neither contests an id nor keeps one
             kept AS (SELECT gid, CASE WHEN gid IS NOT NULL AND NOT EXISTS (SELECT 1 FROM losers l WHERE l.gid = c.gid)
                                       THEN id END AS id,
                             founding_fid, adds_key, key_npi_num FROM claims c),
             -- the map's highest id, and how many source rows get a new id (numbered first, after it)
             base AS (SELECT (SELECT coalesce(max(id), 0) FROM id_map) AS last_id,
                             count(*) FILTER (WHERE id IS NULL AND gid >= 0) AS new_source_ids FROM kept)
        SELECT gid, id, adds_key, key_npi_num FROM kept WHERE id IS NOT NULL
        UNION ALL
        -- new ids in source order (a source row's gid is its provider_id), then file arrival order: the
        -- providers of gid < 0 (file-only, few) numbered after the others, and written first, in gid order,
        -- so that a first run's table is in gid order (IdLookup then needs no sort of it)
        SELECT * FROM (SELECT * FROM (
            SELECT gid, base.last_id + base.new_source_ids + row_number() OVER (ORDER BY founding_fid, gid),
                   adds_key, key_npi_num
            FROM kept, base WHERE id IS NULL AND gid < 0) ORDER BY gid)
        UNION ALL
        -- a window of one integer key: these are source rows (founding_fid NULL), in gid order alone
        SELECT gid, base.last_id + row_number() OVER (ORDER BY gid), adds_key, key_npi_num
        FROM kept, base WHERE id IS NULL AND gid >= 0""")
    # Each provider's id now sits next to the key it adds to the map: no join of millions of rows later
    # (carried as numbers: the window's sort above moves every column it keeps, text costs it twice).
    con.execute("DROP TABLE claims")
    # A file key shared by two providers this run identifies neither: it is not recorded.
    con.execute("""
        CREATE TABLE new_file_keys AS
        SELECT key AS natural_key, id FROM file_keys JOIN provider_ids USING (gid)
        WHERE mapped_id IS NULL AND key NOT IN (SELECT key FROM file_keys GROUP BY key HAVING count(DISTINCT gid) > 1)""")
    return in_gid_order



def new_id_map_keys(con: duckdb.DuckDBPyConnection, params: dict, path: Path) -> int:
    """The id map's additions: the new key of each source row (NEW_SOURCE_KEY) and of file rows.
    Written to ``path``; returns its rows.

    In no particular order: the map is read by key (its lowest id per key, ``lowest_per_key``), never by
    row order, and sorting a tenant's keys by id cost ~0.5 s of a 2,000,000-provider first run."""
    return write_parquet(con, f"""
        SELECT {NEW_SOURCE_KEY} AS natural_key, id, $now AS first_seen_at FROM provider_ids WHERE adds_key
        UNION ALL
        SELECT natural_key, id::BIGINT, $now FROM new_file_keys""", tables.ID_MAP, path, params)
