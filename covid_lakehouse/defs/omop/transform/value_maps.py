"""Step 1: dictionaries of specialty labels and site names, each distinct raw value cleaned and mapped
once (rules.py).

Reads ``source`` and ``landing_rows``; writes ``specialty_raw``, ``specialty_dict``, ``site_raw``, ``site_dict`` (each
dictionary row numbered by ``key``: the cleaned source rows keep that number, not the text, see cleaning.py)."""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import pyarrow as pa

from covid_lakehouse.defs.omop.rules import Specialty, map_specialties, resolve_sites


def build_value_maps(con: duckdb.DuckDBPyConnection, care_sites: pa.Table, specialties: Mapping[str, Specialty]) -> None:
    """Specialty labels and site names have few distinct values whatever the row count: each distinct
    raw value is cleaned and mapped once (rules.py) into a dictionary the rows join on."""
    con.execute("""
        CREATE TABLE specialty_raw AS
        SELECT raw, clean_text(raw) AS clean FROM (
            SELECT specialty AS raw FROM source UNION SELECT specialty_source_value FROM source
            UNION SELECT specialty FROM landing_rows UNION SELECT spec_source FROM landing_rows)
        WHERE raw IS NOT NULL""")
    raw, clean = columns_of(con, "SELECT raw, clean FROM specialty_raw")
    concepts = map_specialties([c for c in clean if c], specialties)
    con.register("specialty_dict", pa.table({
        "key": pa.array(range(len(raw)), pa.int32()), "raw": pa.array(raw, pa.string()), "clean": pa.array(clean, pa.string()),
        "concept_id": pa.array([concepts[c] if c else None for c in clean], pa.int32())}))
    con.execute("""
        CREATE TABLE site_raw AS
        SELECT raw, clean_text(raw) AS clean
        FROM (SELECT care_site AS raw FROM source UNION SELECT site_name FROM landing_rows)
        WHERE raw IS NOT NULL""")
    raw, clean = columns_of(con, "SELECT raw, clean FROM site_raw")
    sites = dict(zip(care_sites["care_site_id"].to_pylist(), care_sites["care_site_name"].to_pylist(), strict=True))
    resolved = resolve_sites([c for c in clean if c], sites)
    con.register("site_dict", pa.table({
        "key": pa.array(range(len(raw)), pa.int32()), "raw": pa.array(raw, pa.string()), "clean": pa.array(clean, pa.string()),
        "care_site_id": pa.array([resolved[c] if c else None for c in clean], pa.int64())}))


def columns_of(con: duckdb.DuckDBPyConnection, query: str) -> list[list]:
    rows = con.execute(query).fetchall()
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[], []]
