"""Providers: source rows and client file rows -> OMOP provider, with provenance, quarantine, flags,
new id map keys and reconciled counts, one step module after the other on one DuckDB session.

Registers ``source``, ``landing_rows``, ``landing_files``, ``id_map``, ``previous_provenance`` and
``processed_file_refs`` (``source`` is a view over the extract's parquet file when given its path; each
state table a view over its parquet files when given their paths, see session.register_state); after the steps, ``published`` (a view over the provider output's parquet file) for the flags.
Every output streams from DuckDB into its own parquet file (ProviderBuild.files)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.rules import EHR_TYPE_CONCEPT, Specialty
from covid_lakehouse.defs.omop.transform.choose_values import choose_values
from covid_lakehouse.defs.omop.transform.cleaning import clean_files, clean_source
from covid_lakehouse.defs.omop.transform.flags import build_flags, npi_check_failures
from covid_lakehouse.defs.omop.transform.identities import resolve_identities
from covid_lakehouse.defs.omop.transform.ids import assign_ids, new_id_map_keys
from covid_lakehouse.defs.omop.transform.provenance import other_provenance, source_provenance
from covid_lakehouse.defs.omop.transform.quarantine import build_quarantine
from covid_lakehouse.defs.omop.transform.reconcile import count_reconciliation
from covid_lakehouse.defs.omop.transform.results import (
    FLAGS,
    ID_MAP_ADDITIONS,
    PROVENANCE,
    PROVIDER,
    QUARANTINE,
    ProviderBuild,
)
from covid_lakehouse.defs.omop.transform.session import (
    IdLookup,
    connect,
    parquet_writer,
    quoted,
    register_state,
    write_parquet,
)
from covid_lakehouse.defs.omop.transform.value_maps import build_value_maps

# The published providers (those with a name), one row each; provider_id is attached per batch (and
# npi_num checked there, then dropped by the output's schema).
PUBLISHED = f"""
    SELECT c.gid, c.npi_num, c.name AS provider_name, c.npi, c.specialty_concept_id, c.care_site_id,
           c.provider_source_value, coalesce(c.specialty_source_value, d.clean) AS specialty_source_value,
           CASE WHEN coalesce(c.specialty_source_value, d.clean) IS NOT NULL THEN 0 END AS specialty_source_concept_id,
           CASE WHEN c.in_source THEN {EHR_TYPE_CONCEPT} ELSE 0 END AS provider_type_concept_id
    FROM chosen c LEFT JOIN specialty_dict d ON d.key = c.spec_value_key"""


def with_provider_ids(ids_of: IdLookup, npi_check_failed: list[pa.Table]) -> Callable[[pa.Table], pa.Table]:
    """Attach each provider's id; append the providers whose NPI fails its check digit (gid, npi) to
    ``npi_check_failed``."""
    def attach(rows: pa.Table) -> pa.Table:
        npi_check_failed.append(npi_check_failures(rows))
        return rows.append_column("provider_id", ids_of(rows["gid"]))
    return attach


def build_providers(
    *,
    source: pa.Table | Path,
    source_object: str,
    care_sites: pa.Table,
    landing_rows: pa.Table | Sequence[Path],
    landing_files: pa.Table | Sequence[Path],
    id_map: pa.Table | Sequence[Path],
    previous_provenance: pa.Table | Sequence[Path],
    processed_files: Iterable[str],
    specialties: Mapping[str, Specialty],
    now: datetime,
    out_dir: Path | None = None,
) -> ProviderBuild:
    """The outputs stream from DuckDB into parquet files in ``out_dir`` (default: a temporary directory
    the returned build holds): none of them sits whole in memory, however large the tenant."""
    scratch = None
    if out_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="omop-build-")
        out_dir = Path(scratch.name)
    files = {name: out_dir / f"{name}.parquet" for name in (PROVIDER, PROVENANCE, QUARANTINE, FLAGS, ID_MAP_ADDITIONS)}
    con = connect()
    try:
        if isinstance(source, Path):
            # The extract as a parquet file: DuckDB scans it (and spills what it builds from it), so the
            # source never sits in Python memory however large the tenant.
            relation = con.read_parquet(str(source))
            # The extract carries each row's source hash (source_snapshot.py): not a source column.
            relation.project(", ".join(quoted(c) for c in relation.columns if c != tables.SOURCE_ROW_HASH)
                             ).create_view("source")
        else:
            con.register("source", source)
        for name, data, schema in [("landing_rows", landing_rows, tables.LANDING_ROW),
                                   ("landing_files", landing_files, tables.LANDING_FILE),
                                   ("id_map", id_map, tables.ID_MAP),
                                   ("previous_provenance", previous_provenance, tables.PROVENANCE)]:
            register_state(con, name, data, schema)
        con.register("processed_file_refs", pa.table({"file_ref": pa.array(sorted(set(processed_files)), pa.string())}))
        params = {"now": now, "source_object": source_object}
        build_value_maps(con, care_sites, specialties)
        clean_source(con)
        clean_files(con)
        resolve_identities(con)
        choose_values(con)
        in_gid_order = assign_ids(con)
        # Ids are attached a key slice of provider_ids at a time (one slice up to SLICE_ROWS providers),
        # each slice's lookup loaded and sorted once for the providers and the source rows' provenance.
        rows, npi_check_failed = {PROVIDER: 0, PROVENANCE: 0}, []
        with parquet_writer(files[PROVIDER], tables.PROVIDER) as providers, \
                parquet_writer(files[PROVENANCE], tables.PROVENANCE) as provenance:
            for ids_of, where in IdLookup.slices(con, in_gid_order=in_gid_order):
                rows[PROVIDER] += write_parquet(con, f"{PUBLISHED} WHERE {where('c.gid')}", tables.PROVIDER, None,
                                                batch=with_provider_ids(ids_of, npi_check_failed), writer=providers)
                rows[PROVENANCE] += source_provenance(con, params, ids_of, where, provenance)
            rows[PROVENANCE] += other_provenance(con, params, provenance)
        con.read_parquet(str(files[PROVIDER])).create_view("published")
        rows[QUARANTINE] = build_quarantine(con, params, files[QUARANTINE])
        # No provider at all, no batch: the same check over none of the output's rows states the (empty) table.
        rows[FLAGS] = build_flags(con, params, files[FLAGS], pa.concat_tables(npi_check_failed) if npi_check_failed
                                 else npi_check_failures(con.sql(f"{PUBLISHED} LIMIT 0").to_arrow_table()))
        rows[ID_MAP_ADDITIONS] = new_id_map_keys(con, params, files[ID_MAP_ADDITIONS])
        return ProviderBuild(
            files=files, rows=rows, counts=count_reconciliation(con, rows[PROVIDER]),
            run_files=[r[0] for r in con.execute("SELECT file_ref FROM files WHERE run ORDER BY 1").fetchall()],
            scratch=scratch,
        )
    except BaseException:
        if scratch is not None:
            scratch.cleanup()
        raise
    finally:
        con.close()  # its tables (gigabytes at scale) go now, before the outputs are published
