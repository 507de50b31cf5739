"""Output: flags, findings kept with the published data.

Reads ``chosen_groups``, ``merge_candidates``, ``clean_source_values``, ``file_candidates``, ``nameless``, ``published``,
``provider_ids`` and ``clean_file_rows``; registers ``npi_check_failed`` (gid and NPI of those npi_check_failures found while
the provider output was written) and writes ``rows_to_flag``."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.rules import npi_check_digits
from covid_lakehouse.defs.omop.transform.session import parquet_writer, write_parquet

CONFLICTS = {
    "provider_name": ("c.name", "ch.name", "c.name IS NOT NULL AND NOT names_compatible(c.name, ch.name)"),
    "npi": ("c.npi", "ch.npi", "c.npi IS NOT NULL AND c.npi <> ch.npi"),
    "specialty_concept_id": ("c.concept || ' (' || c.spec_value || ')'",
                             "ch.specialty_concept_id || ' (' || ch.specialty_source_value || ')'",
                             "c.concept > 0 AND ch.specialty_concept_id > 0 AND c.concept <> ch.specialty_concept_id"),
    "care_site_id": ("c.site_id || ' (' || c.site || ')'", "ch.care_site_id::VARCHAR",
                     "c.site_id IS NOT NULL AND c.site_id <> ch.care_site_id"),
    "provider_source_value": ("c.psv", "ch.provider_source_value",
                              "c.sid IS NOT NULL AND c.sid <> unpadded(alnum_upper(ch.provider_source_value))"),
}


def npi_check_failures(rows: pa.Table) -> pa.Table:
    """The providers among these rows (``gid``, ``npi_num``, ``npi``) whose NPI fails its check digit (Luhn
    over "80840" + the first nine digits): their gid and NPI text, found in numpy (a dozen integer operations
    per NPI). build_providers calls it on each batch of the provider output it writes, so neither the
    published NPIs nor the chosen values are read a second time."""
    valid = np.asarray(pc.is_valid(rows["npi_num"]).to_numpy(zero_copy_only=False))
    npi = np.asarray(pc.filter(rows["npi_num"], valid).to_numpy(), dtype=np.int64)
    failed = np.zeros(rows.num_rows, dtype=bool)
    failed[valid] = npi_check_digits(npi // 10) != npi % 10
    return rows.select(["gid", "npi"]).filter(pa.array(failed))


def build_flags(con: duckdb.DuckDBPyConnection, params: dict, path: Path, npi_check_failed: pa.Table) -> int:
    """Findings kept with the published data: NPI check digit failures (``npi_check_failed``: their gid and
    NPI, from npi_check_failures), malformed NPIs, unmapped specialties and sites, disagreements between
    sources (both values), possible duplicates. Written to ``path``; returns its rows."""
    conflicts = "\n            UNION ALL ".join(
        f"SELECT c.gid, 'value_conflict', '{column}', {chosen}, {other}, c.source_system, c.fid, c.source_key,"
        f" 'sources disagree; the published value is kept' FROM conflict_pairs WHERE {condition}"
        for column, (other, chosen, condition) in CONFLICTS.items())
    # The candidates that disagree with their provider's chosen values, joined once (each row as a struct,
    # so the CONFLICTS expressions read c.<column> and ch.<column> from it): five joins of the tenant's
    # candidates in the flags query would be pinned at once. A provider with candidates has its choice in
    # chosen_groups (``chosen`` with a name): joined there, not through ``chosen``, a view over every source row.
    any_conflict = " OR ".join(f"({condition})" for _, _, condition in CONFLICTS.values())
    con.execute(f"CREATE TABLE conflict_pairs AS SELECT c, ch FROM merge_candidates c JOIN chosen_groups ch USING (gid) "
                f"WHERE ch.name IS NOT NULL AND ({any_conflict})")
    con.register("npi_check_failed", npi_check_failed)
    # The rows with something to flag, found in one pass over the source rows (a few percent of them).
    con.execute("""
        CREATE TABLE rows_to_flag AS
        SELECT src_id AS gid, 'postgres' AS source_system, NULL::BIGINT AS fid, src_id::VARCHAR AS source_key,
               npi, npi_raw, concept, specialty, spec_source, site, site_id
        FROM clean_source_values
        -- (npi_raw is kept only without a valid NPI; a site text only with its key: the test needs no join)
        WHERE (npi_raw IS NOT NULL OR concept = 0 OR (site_key IS NOT NULL AND site_id IS NULL))
              AND src_id NOT IN (SELECT gid FROM nameless)
        UNION ALL
        SELECT gid, 'client_file', fid, line_no::VARCHAR, npi, npi_raw, concept, specialty, spec_source, site, site_id
        FROM file_candidates WHERE gid NOT IN (SELECT gid FROM nameless)""")
    # Two queries, one after the other: together in one, their joins and aggregation are pinned at once
    # (DuckDB's floor for that query was most of a small memory limit).
    with parquet_writer(path, tables.FLAG) as writer:
        con.execute(f"""
        CREATE TABLE found_flags AS
        WITH rows AS (SELECT * FROM rows_to_flag),
        found (gid, flag, column_name, value, other_value, source_system, fid, source_key, detail) AS (
            SELECT gid, 'npi_check_digit', 'npi', npi, NULL, NULL, NULL, NULL, 'fails the NPI Luhn check digit'
            FROM npi_check_failed
            UNION ALL
            SELECT gid, 'npi_malformed', 'npi', NULL, npi_raw, source_system, fid, source_key, 'not 10 digits; ignored'
            FROM rows WHERE npi_raw IS NOT NULL AND npi IS NULL
            UNION ALL
            SELECT gid, 'specialty_unmapped', 'specialty_concept_id', '0', coalesce(specialty, spec_source),
                   source_system, fid, source_key, 'no Medicare Specialty concept for this label'
            FROM rows WHERE concept = 0
            UNION ALL
            SELECT gid, 'care_site_unmapped', 'care_site_id', NULL, site, source_system, fid, source_key,
                   'no care site of this name'
            FROM rows WHERE site IS NOT NULL AND site_id IS NULL
            UNION ALL {conflicts})
        SELECT * FROM found""")
        rows = write_parquet(con, """
        SELECT provider_ids.id AS provider_id, x.flag, x.column_name, x.value, x.other_value, NULL AS related_provider_id,
               x.source_system,
               CASE WHEN x.source_system = 'postgres' THEN $source_object ELSE clean_file_rows.object_key END AS source_object,
               x.source_key, x.detail
        FROM found_flags x JOIN provider_ids USING (gid) LEFT JOIN clean_file_rows ON clean_file_rows.fid = x.fid""", tables.FLAG, None, params, writer=writer)
        return rows + write_parquet(con, """
        WITH candidates AS (SELECT provider_id AS id, provider_name AS name, name_key(provider_name) AS k
                       FROM published WHERE npi IS NULL),
        -- names sharing a candidate's first letter, with their first and last tokens computed once
        others AS (SELECT id, name, k, string_split(k, ' ')[1] AS ft, string_split(k, ' ')[-1] AS lt FROM (
                       SELECT provider_id AS id, provider_name AS name, name_key(provider_name) AS k
                       FROM published WHERE lower(provider_name[1]) IN (SELECT k[1] FROM candidates)))
        -- A provider without an NPI whose name is compatible with another provider's may be that
        -- provider: flagged for review, never merged (two valid NPIs are two people, so only
        -- NPI-less providers are candidates).
        SELECT c.id AS provider_id, 'possible_duplicate' AS flag, 'provider_name' AS column_name, c.name AS value,
               arg_min(o.name, o.id) AS other_value, min(o.id) AS related_provider_id,
               count(*) || ' provider(s) with a compatible name' AS detail
        FROM (SELECT *, string_split(k, ' ')[1] AS ft, string_split(k, ' ')[-1] AS lt FROM candidates) c
             JOIN others o ON o.id <> c.id AND o.ft[1] = c.ft[1] AND o.lt[1] = c.lt[1]
                  AND token_compatible(c.ft, o.ft) AND token_compatible(c.lt, o.lt)
        GROUP BY c.id, c.name""", tables.FLAG, None, params, writer=writer)
