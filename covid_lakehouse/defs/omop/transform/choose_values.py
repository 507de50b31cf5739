"""Step 5: the published value of each column per provider.

Reads ``clean_source_rows``, ``clean_source_values`` and ``file_candidates``; writes ``merge_candidates``,
``chosen_groups``, the views ``chosen_all`` and ``chosen`` (providers with a name) and ``nameless``. A source row
without file rows leaves its specialty text to the provider output: ``chosen`` has its dictionary row
(``spec_value_key``), not the text (``specialty_source_value``, NULL there), so that the passes over ``chosen``
that do not want it do not look it up for millions of rows."""

from __future__ import annotations

import duckdb

CANDIDATE_COLUMNS = ("name, npi, npi_num, npi_raw, specialty, spec_source, site, psv, sid, id_source, concept, "
                      "spec_value, site_id")


def choose_values(con: duckdb.DuckDBPyConnection) -> None:
    """Per provider, each column takes the first usable value: the source row (system of record),
    then file rows, the most recent first. A mapped specialty or site beats an unmappable one; among
    file names a full name beats one with initials. Only providers with file rows need choosing."""
    con.execute(f"""
        CREATE TABLE merge_candidates AS
        SELECT src_id AS gid, 0::BIGINT AS prio, 'postgres' AS source_system, src_id, NULL::BIGINT AS fid,
               src_id::VARCHAR AS source_key, NULL AS pid, NULL AS client_id, {CANDIDATE_COLUMNS}
        FROM clean_source_values WHERE src_id IN (SELECT gid FROM file_candidates)
        UNION ALL
        SELECT gid, prio, 'client_file', NULL, fid, line_no::VARCHAR, pid, client_id, {CANDIDATE_COLUMNS}
        FROM file_candidates""")
    con.execute("""
        CREATE TABLE chosen_groups AS
        SELECT gid,
               arg_min(name, (prio > 0, has_initial(name), prio)) FILTER (WHERE name IS NOT NULL) AS name,
               arg_min(npi, prio) FILTER (WHERE npi IS NOT NULL) AS npi,
               arg_min(npi_num, prio) FILTER (WHERE npi IS NOT NULL) AS npi_num,
               coalesce(arg_min(concept, (concept = 0, prio)) FILTER (WHERE concept IS NOT NULL), 0)
                   AS specialty_concept_id,
               arg_min(spec_value, (concept = 0, prio)) FILTER (WHERE concept IS NOT NULL) AS specialty_source_value,
               arg_min(site_id, prio) FILTER (WHERE site_id IS NOT NULL) AS care_site_id,
               arg_min(psv, prio) FILTER (WHERE psv IS NOT NULL) AS provider_source_value,
               bool_or(source_system = 'postgres') AS in_source, min(fid) AS founding_fid
        FROM merge_candidates GROUP BY gid""")
    # The source rows without file rows are their own choice: a view, not a copy of millions of rows.
    con.execute("""
        CREATE VIEW chosen_all AS
        SELECT src_id AS gid, name, npi_text(npi_num) AS npi, npi_num,
               coalesce(concept, 0) AS specialty_concept_id, NULL AS specialty_source_value, site_id AS care_site_id,
               psv AS provider_source_value, true AS in_source, NULL::BIGINT AS founding_fid,
               spec_source_first(specialty_key, spec_source_key) AS spec_value_key
        FROM clean_source_rows WHERE src_id NOT IN (SELECT gid FROM chosen_groups)
        UNION ALL BY NAME  -- by name: a column added to chosen_groups can never shift into another's place
        SELECT *, NULL::INTEGER AS spec_value_key FROM chosen_groups""")
    # OMOP requires a provider_name: without one from any source the provider cannot be published.
    con.execute("CREATE VIEW chosen AS SELECT * FROM chosen_all WHERE name IS NOT NULL")
    con.execute("CREATE TABLE nameless AS SELECT gid, in_source FROM chosen_all WHERE name IS NULL")
