"""Steps 2 and 3: row cleaning of the source rows and of the client file rows (the same macros, in
layers; see CLEAN).

clean_source reads ``source``, ``specialty_dict``, ``site_dict``, ``previous_provenance``; writes
``clean_source_rows``, ``source_nameless_records`` (each source row without a name: its raw record), the
views ``clean_source_values`` and ``source_row_by_npi``, ``source_npi_repeated`` and ``previous_source_provenance``.
clean_files reads ``landing_files``, ``landing_rows``, ``processed_file_refs``, ``specialty_dict``, ``site_dict``;
writes ``files``, the view ``landing_unique``, ``clean_file_rows`` and ``quarantined_file_rows``."""

from __future__ import annotations

import duckdb

from covid_lakehouse.defs.omop.transform.session import quoted, register_repeated

# Row cleaning in layers: a macro repeats its argument wherever it uses it, so each layer applies
# macros to plain columns of the layer below (nesting them would multiply the work). Specialty and
# site values come from the dictionaries.
CLEAN = """
    WITH l1 AS (SELECT *, squash({name}) AS l1_name, trim_ends({npi}) AS l1_npi, trim_ends({psv}) AS l1_psv,
                       trim_ends({id_source}) AS l1_id_source, trim_ends({client_id}) AS l1_client_id FROM {table}),
    l2 AS (SELECT *, no_placeholder(l1_name) AS l2_name, no_placeholder(l1_npi) AS c_npi,
                  no_placeholder(l1_psv) AS c_psv, no_placeholder(l1_id_source) AS c_id_source,
                  no_placeholder(l1_client_id) AS c_client_id FROM l1),
    l3 AS (SELECT *, strip_title(l2_name) AS l3_name, replace(replace(c_npi, ' ', ''), '-', '') AS l3_npi,
                  alnum_upper(c_psv) AS l3_psv, alnum_upper(c_client_id) AS l3_client_id FROM l2),
    l4 AS (SELECT *, strip_credential(l3_name) AS l4_name, unpadded(l3_client_id) AS v_pid,
                  -- an NPI is ten digits once spaces and dashes are removed, else it is no NPI
                  CASE WHEN regexp_full_match(l3_npi, '[0-9]{{10}}') THEN l3_npi END AS v_npi,
                  unpadded(l3_psv) AS v_sid FROM l3)
    SELECT l4.*, no_placeholder(trim_ends(l4_name)) AS c_name,  -- "Dr. NULL" is no name either
           v_npi::BIGINT AS v_npi_num,  -- ten digits, so one number per NPI: faster joins than text
           m1.clean AS c_specialty, m2.clean AS c_spec_source, spec_source_first(m1.clean, m2.clean) AS v_spec_value,
           coalesce(nullif(m1.concept_id, 0), nullif(m2.concept_id, 0), CASE WHEN m1.clean IS NOT NULL
                    OR m2.clean IS NOT NULL THEN 0 END) AS v_concept,
           s.clean AS c_site, s.care_site_id AS v_site_id,
           -- the dictionary rows of the cleaned values (none for a value that cleans to nothing)
           CASE WHEN m1.clean IS NOT NULL THEN m1.key END AS k_specialty,
           CASE WHEN m2.clean IS NOT NULL THEN m2.key END AS k_spec_source,
           CASE WHEN s.clean IS NOT NULL THEN s.key END AS k_site
    FROM l4 LEFT JOIN specialty_dict m1 ON m1.raw = l4.{specialty}
         LEFT JOIN specialty_dict m2 ON m2.raw = l4.{spec_source} LEFT JOIN site_dict s ON s.raw = l4.{site}"""
CLEANED = ("c_name AS name, c_npi AS npi_raw, v_npi AS npi, v_npi_num AS npi_num, c_specialty AS specialty, "
            "c_spec_source AS spec_source, "
            "c_site AS site, c_psv AS psv, v_sid AS sid, c_id_source AS id_source, v_concept AS concept, "
            "v_spec_value AS spec_value, v_site_id AS site_id")


def clean_source(con: duckdb.DuckDBPyConnection) -> None:
    raw = ["provider_name", "npi", "specialty", "care_site", "provider_source_value", "specialty_source_value",
           "provider_id_source_value"]
    cleaning = CLEAN.format(table="source", name="provider_name", npi="npi", psv="provider_source_value",
                             id_source="provider_id_source_value", client_id="NULL::VARCHAR", specialty="specialty",
                             spec_source="specialty_source_value", site="care_site")
    # One row per source row, as narrow as the later passes allow: every pass over the tenant's rows reads
    # this table, and the wide one (every cleaned text) was ~400 MB at 2,000,000 rows, past the session's
    # memory limit, so DuckDB spilled it and read it back from disk in each pass. The dictionary values
    # are kept as their dictionary row (the text is looked up by clean_source_values, where wanted), the
    # NPI as its number (its text is ten digits, zero padded) and the NPI's cleaned text only when it is
    # not a valid NPI (the flags report it).
    # The raw row as the quarantine records it: every column of the extract, by name, in its order.
    columns = [quoted(column) for column, *_ in con.execute("SELECT * FROM source LIMIT 0").description]
    record = ", ".join(f"{column} := {column}" for column in columns)
    con.execute(f"""
        CREATE TABLE clean_source_rows AS
        SELECT provider_id AS src_id, c_name AS name, v_npi_num AS npi_num, CASE WHEN v_npi IS NULL THEN c_npi END
                   AS npi_raw, c_psv AS psv, v_sid AS sid, c_id_source AS id_source, v_concept AS concept,
               v_site_id AS site_id, k_specialty AS specialty_key, k_spec_source AS spec_source_key,
               k_site AS site_key,
               -- DuckDB's 64-bit hash of the raw row (63 bits kept: Iceberg has no unsigned integers)
               (hash(provider_id, {", ".join(raw)}) & 9223372036854775807)::BIGINT AS row_hash,
               CASE WHEN c_name IS NULL THEN to_json(struct_pack({record}))::VARCHAR END AS nameless_record
        FROM ({cleaning})""")
    # A row without a name may be quarantined (unless a file names its provider), with its raw row as
    # the record: taken here, in the one pass over the extract, rather than by scanning it again. Split
    # off at once (dropping a column keeps the other columns' data), so the rows stay narrow.
    con.execute("CREATE TABLE source_nameless_records AS SELECT src_id, nameless_record AS record FROM clean_source_rows "
                "WHERE nameless_record IS NOT NULL")
    con.execute("ALTER TABLE clean_source_rows DROP COLUMN nameless_record")
    # The source rows with every cleaned column clean_file_rows has (CLEANED), for the passes that need the
    # texts; a filter on the table's own columns runs before the dictionary joins.
    con.execute("""
        CREATE VIEW clean_source_values AS
        SELECT r.*, npi_text(r.npi_num) AS npi, m1.clean AS specialty, m2.clean AS spec_source,
               spec_source_first(m1.clean, m2.clean) AS spec_value, s.clean AS site
        FROM clean_source_rows r LEFT JOIN specialty_dict m1 ON m1.key = r.specialty_key
             LEFT JOIN specialty_dict m2 ON m2.key = r.spec_source_key LEFT JOIN site_dict s ON s.key = r.site_key""")
    # NPIs that identify one source row (the source's UNIQUE is on the raw value; cleaning can make
    # two raw values one NPI).
    register_repeated(con, "source_npi_repeated", "SELECT npi_num FROM clean_source_rows WHERE npi_num IS NOT NULL")
    con.execute("CREATE VIEW source_row_by_npi AS SELECT npi_num, src_id FROM clean_source_rows WHERE npi_num IS NOT NULL "
                "AND npi_num NOT IN (SELECT value FROM source_npi_repeated)")
    # What this source row was last run: its hash, provider_id and status.
    con.execute("CREATE TABLE previous_source_provenance AS SELECT TRY_CAST(source_key AS BIGINT) AS src_id, * FROM previous_provenance "
                "WHERE source_system = 'postgres'")


def clean_files(con: duckdb.DuckDBPyConnection) -> None:
    # Every file of the manifest (once, should two runs have taken it in), and whether this run is the
    # first to harmonize it.
    con.execute("""
        CREATE TABLE files AS
        SELECT object_key, etag, object_key || '#' || etag AS file_ref, status, reason, detail, ingested_at,
               object_key || '#' || etag NOT IN (SELECT file_ref FROM processed_file_refs) AS run
        FROM (SELECT DISTINCT ON (object_key, etag) * FROM landing_files ORDER BY object_key, etag, ingested_at)""")
    # A retried ingestion may have appended a file's rows twice: one row per (file, line).
    con.execute("""
        CREATE VIEW landing_unique AS
        SELECT DISTINCT ON (object_key, etag, line_no) * FROM landing_rows
        ORDER BY object_key, etag, line_no, ingested_at""")
    cleaning = CLEAN.format(table="landing_unique", name="provider_name", npi="npi", psv="source_id",
                             id_source="id_source", client_id="provider_id", specialty="specialty",
                             spec_source="spec_source", site="site_name")
    con.execute(f"""
        CREATE TABLE clean_file_rows AS
        SELECT row_number() OVER (ORDER BY object_last_modified, object_key, etag, line_no) AS fid,
               object_key, etag, object_key || '#' || etag AS file_ref, line_no, object_last_modified, ingested_at,
               {CLEANED}, c_client_id AS client_id, v_pid AS pid, malformed_reason,
               coalesce(raw_record, to_json(struct_pack(ProviderName := provider_name, ProviderID := provider_id,
                   NPI := npi, Specialty := specialty, SiteName := site_name, SourceID := source_id,
                   SpecSource := spec_source, IDSource := id_source))::VARCHAR) AS record
        FROM ({cleaning})""")
    # Rows nothing can be made of: unreadable, or without any identifier.
    con.execute("""
        CREATE TABLE quarantined_file_rows AS
        SELECT fid, malformed_reason AS reason, NULL AS detail FROM clean_file_rows WHERE malformed_reason IS NOT NULL
        UNION ALL
        SELECT fid, 'no_identifier', CASE WHEN npi_raw IS NOT NULL THEN 'NPI ' || npi_raw || ' is not 10 digits' END
        FROM clean_file_rows WHERE malformed_reason IS NULL AND npi IS NULL AND sid IS NULL AND pid IS NULL""")
