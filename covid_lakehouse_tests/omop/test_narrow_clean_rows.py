"""The cleaned source rows, which every later pass of the transform reads, are held narrow (issue #18):
at 2,000,000 providers the wide table (every cleaned text) was ~400 MB, past the session's 256MB limit,
so DuckDB spilled it and read it back from disk in each pass. Dictionary values are kept as their
dictionary row, the NPI as its number and its cleaned text only when it is no valid NPI;
``clean_source_values`` and the provider output give the texts back (the outputs' other tests:
test_transform.py, test_key_slices.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.extract import PROVIDER_SOURCE
from covid_lakehouse.defs.omop.rules import load_specialty_map
from covid_lakehouse.defs.omop.transform import build_care_sites, build_providers
from covid_lakehouse.defs.omop.transform.cleaning import clean_source
from covid_lakehouse.defs.omop.transform.session import connect
from covid_lakehouse.defs.omop.transform.value_maps import build_value_maps
from covid_lakehouse_dev.seeds.omop import CARE_SITES, provider_rows

T0 = datetime(2024, 5, 1, 6, tzinfo=UTC)
PROVIDERS = 50_000
# Bytes of DuckDB memory per cleaned source row (duckdb_memory() at 50k rows): the wide table took ~216,
# the narrow one ~130-140.
MAX_BYTES_PER_ROW = 160
# Source rows whose NPI text cleaning changes: two malformed, one valid once its dashes are gone; and one
# valid NPI with leading zeros, which the published text keeps (the row holds it as a number).
ODD_NPIS = {PROVIDERS + 1: " 12-34 ", PROVIDERS + 2: "n/a 5", PROVIDERS + 3: "123-456-7893", PROVIDERS + 4: "0012345678"}
# A source row whose SpecSource and Specialty differ: SpecSource is the specialty_source_value published.
SPEC_ROW = {"provider_id": PROVIDERS + 5, "provider_name": "Spec Source Wins", "npi": "1999999999",
            "specialty": "Derma", "specialty_source_value": "Dermatology"}


def _source() -> pa.Table:
    rows = provider_rows(PROVIDERS, 0.05, 0)
    rows = rows.append_column("provider_id", pa.array(np.arange(1, rows.num_rows + 1), pa.int64()))
    odd = rows.slice(0, len(ODD_NPIS) + 1).to_pylist()
    for row, (provider_id, npi) in zip(odd, ODD_NPIS.items(), strict=False):
        row.update(provider_id=provider_id, npi=npi, provider_name=f"Odd Npi {provider_id}")
    odd[-1].update(SPEC_ROW)
    return pa.concat_tables([rows.select(PROVIDER_SOURCE.names).cast(PROVIDER_SOURCE),
                             pa.Table.from_pylist(odd, PROVIDER_SOURCE)])


def _care_sites() -> pa.Table:
    source = pa.table({"care_site_id": pa.array(range(1, len(CARE_SITES) + 1), pa.int64()),
                       "care_site_name": [name for name, _ in CARE_SITES],
                       "care_site_source_value": [code for _, code in CARE_SITES]})
    return build_care_sites(source, tables.ID_MAP.empty_table(), now=T0).care_site


def _session_memory(con) -> int:
    [(used,)] = con.execute("SELECT sum(memory_usage_bytes) + sum(temporary_storage_bytes) FROM duckdb_memory()").fetchall()
    return used


def test_the_cleaned_source_rows_are_held_narrow_and_give_back_every_cleaned_text():
    source = _source()
    con = connect()
    try:
        con.register("source", source)
        con.register("landing_rows", tables.LANDING_ROW.empty_table())
        con.register("previous_provenance", tables.PROVENANCE.empty_table())
        build_value_maps(con, _care_sites(), load_specialty_map())
        before = _session_memory(con)
        clean_source(con)
        # The raw records cleaning keeps for the quarantine are those of the rows without a name only (a
        # few: 5% here); what is held per row is the cleaned rows'.
        assert con.execute("SELECT count(*) FROM source_nameless_records").fetchone()[0] == con.execute(
            "SELECT count(*) FROM clean_source_rows WHERE name IS NULL").fetchone()[0] < 0.1 * source.num_rows
        con.execute("DROP TABLE source_nameless_records")
        assert (_session_memory(con) - before) / source.num_rows < MAX_BYTES_PER_ROW

        # The texts come back as the cleaning made them: the dictionaries' cleaned values, the NPI's ten
        # digits, the cleaned NPI text of a row without a valid NPI only.
        mismatches = con.execute("""
            WITH expected AS (
                SELECT s.provider_id AS src_id, m1.clean AS specialty, m2.clean AS spec_source,
                       coalesce(m2.clean, m1.clean) AS spec_value, t.clean AS site
                FROM source s LEFT JOIN specialty_dict m1 ON m1.raw = s.specialty
                     LEFT JOIN specialty_dict m2 ON m2.raw = s.specialty_source_value
                     LEFT JOIN site_dict t ON t.raw = s.care_site)
            SELECT count(*) FROM clean_source_values v JOIN expected e USING (src_id)
            WHERE v.specialty IS DISTINCT FROM e.specialty OR v.spec_source IS DISTINCT FROM e.spec_source
               OR v.spec_value IS DISTINCT FROM e.spec_value OR v.site IS DISTINCT FROM e.site
               OR (v.npi_num IS NOT NULL AND (v.npi_raw IS NOT NULL OR NOT regexp_full_match(v.npi, '[0-9]{10}')
                                               OR v.npi::BIGINT <> v.npi_num))""").fetchone()[0]
        assert mismatches == 0
        sites, unmapped = con.execute(
            "SELECT count(site), count(*) FILTER (WHERE concept = 0) FROM clean_source_values").fetchone()
        assert sites > 0 and unmapped > 0  # the seed's values, mapped and not, were given back
        odd = dict(con.execute(f"SELECT src_id, npi_raw FROM clean_source_values WHERE src_id > {PROVIDERS}").fetchall())
        assert odd == {PROVIDERS + 1: "12-34", PROVIDERS + 2: "n/a 5", PROVIDERS + 3: None, PROVIDERS + 4: None,
                       PROVIDERS + 5: None}
    finally:
        con.close()

    build = build_providers(source=source, source_object="postgres:src.provider", care_sites=_care_sites(),
                            landing_rows=tables.LANDING_ROW.empty_table(), landing_files=tables.LANDING_FILE.empty_table(),
                            id_map=tables.ID_MAP.empty_table(), previous_provenance=tables.PROVENANCE.empty_table(),
                            processed_files=[], specialties=load_specialty_map(), now=T0)
    ids = {p["provider_name"]: p for p in build.table("provider").to_pylist() if p["provider_name"].startswith("Odd")}
    assert ids[f"Odd Npi {PROVIDERS + 3}"]["npi"] == "1234567893"
    assert ids[f"Odd Npi {PROVIDERS + 4}"]["npi"] == "0012345678"
    malformed = {f["provider_id"]: f["other_value"] for f in build.table("flags").to_pylist() if f["flag"] == "npi_malformed"}
    assert {ids[f"Odd Npi {k}"]["provider_id"]: malformed.get(ids[f"Odd Npi {k}"]["provider_id"]) for k in ODD_NPIS} == {
        ids[f"Odd Npi {PROVIDERS + 1}"]["provider_id"]: "12-34", ids[f"Odd Npi {PROVIDERS + 2}"]["provider_id"]: "n/a 5",
        ids[f"Odd Npi {PROVIDERS + 3}"]["provider_id"]: None, ids[f"Odd Npi {PROVIDERS + 4}"]["provider_id"]: None}
    # a provider's specialty text comes back through the dictionary (source rows without file rows)
    published = build.table("provider").to_pylist()
    [spec] = [p for p in published if p["provider_name"] == SPEC_ROW["provider_name"]]
    assert spec["specialty_source_value"] == "Dermatology"
    assert sum(p["specialty_source_value"] is not None for p in published) > 0.9 * PROVIDERS
    assert all((p["specialty_source_value"] is None) == (p["specialty_source_concept_id"] is None) for p in published)
