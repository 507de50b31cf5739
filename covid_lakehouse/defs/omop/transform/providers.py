"""Providers: source rows and client file rows -> OMOP provider, with provenance, quarantine, flags,
new id map keys and reconciled counts, one step module after the other on one DuckDB session.

Registers ``source``, ``landing_rows``, ``landing_files``, ``id_map``, ``previous_provenance`` and
``processed_file_refs`` (``source`` is a view over the extract's parquet file when given its path); after the steps, ``published`` (the provider table) for the flags."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.rules import EHR_TYPE_CONCEPT, Specialty
from covid_lakehouse.defs.omop.transform.choose_values import choose_values
from covid_lakehouse.defs.omop.transform.cleaning import clean_files, clean_source
from covid_lakehouse.defs.omop.transform.flags import build_flags
from covid_lakehouse.defs.omop.transform.identities import resolve_identities
from covid_lakehouse.defs.omop.transform.ids import assign_ids, new_id_map_keys
from covid_lakehouse.defs.omop.transform.provenance import build_provenance
from covid_lakehouse.defs.omop.transform.quarantine import build_quarantine
from covid_lakehouse.defs.omop.transform.reconcile import count_reconciliation
from covid_lakehouse.defs.omop.transform.results import ProviderBuild
from covid_lakehouse.defs.omop.transform.session import IdLookup, connect
from covid_lakehouse.defs.omop.transform.value_maps import build_value_maps


def build_providers(
    *,
    source: pa.Table | Path,
    source_object: str,
    care_sites: pa.Table,
    landing_rows: pa.Table,
    landing_files: pa.Table,
    id_map: pa.Table,
    previous_provenance: pa.Table,
    processed_files: Iterable[str],
    specialties: Mapping[str, Specialty],
    now: datetime,
) -> ProviderBuild:
    con = connect()
    try:
        if isinstance(source, Path):
            # The extract as a parquet file: DuckDB scans it (and spills what it builds from it), so the
            # source never sits in Python memory however large the tenant.
            con.read_parquet(str(source)).create_view("source")
        else:
            con.register("source", source)
        for name, table in [("landing_rows", landing_rows), ("landing_files", landing_files),
                            ("id_map", id_map), ("previous_provenance", previous_provenance)]:
            con.register(name, table)
        con.register("processed_file_refs", pa.table({"file_ref": pa.array(sorted(set(processed_files)), pa.string())}))
        params = {"now": now, "source_object": source_object}
        build_value_maps(con, care_sites, specialties)
        clean_source(con)
        clean_files(con)
        resolve_identities(con)
        choose_values(con)
        assign_ids(con)
        provider = con.sql(f"""
            SELECT c.gid, c.name AS provider_name, c.npi, c.specialty_concept_id, c.care_site_id,
                   c.provider_source_value, c.specialty_source_value,
                   CASE WHEN c.specialty_source_value IS NOT NULL THEN 0 END AS specialty_source_concept_id,
                   CASE WHEN c.in_source THEN {EHR_TYPE_CONCEPT} ELSE 0 END AS provider_type_concept_id
            FROM chosen c""").to_arrow_table()
        ids_of = IdLookup(con)
        provider = tables.conform(provider.append_column("provider_id", ids_of(provider["gid"])), tables.PROVIDER)
        con.register("published", provider)
        return ProviderBuild(
            provider=provider,
            provenance=build_provenance(con, ids_of, params),
            quarantine=build_quarantine(con, params),
            flags=build_flags(con, params),
            id_map_additions=new_id_map_keys(con, ids_of, params),
            counts=count_reconciliation(con, provider),
            run_files=[r[0] for r in con.execute("SELECT file_ref FROM files WHERE run ORDER BY 1").fetchall()],
        )
    finally:
        con.close()  # its tables (gigabytes at scale) go now, before the outputs are written
