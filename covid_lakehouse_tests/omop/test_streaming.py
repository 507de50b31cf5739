"""Memory that does not grow with the tenant: the provider extract streams into a parquet file one CSV
block at a time, and the transform reads that file in DuckDB, publishing exactly what it publishes from
an in-memory Arrow table."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.extract import (
    CARE_SITE_SOURCE,
    PROVIDER_SOURCE,
    extract,
    extract_parquet,
)
from covid_lakehouse.defs.omop.landing import parse_landing_file
from covid_lakehouse.defs.omop.rules import load_specialty_map
from covid_lakehouse.defs.omop.transform import build_care_sites, build_providers
from covid_lakehouse_tests.omop.support import SAMPLE_CSV

T0 = datetime(2024, 5, 1, 6, tzinfo=UTC)


def test_the_provider_extract_streams_into_parquet_in_blocks_with_the_same_rows(make_tenants, tmp_path):
    tenant = make_tenants(providers=3_000, dirt_rate=0.05).tenant
    path = extract_parquet(tenant, "provider", PROVIDER_SOURCE, tmp_path / "provider.parquet", block_size=64 << 10)
    assert pq.ParquetFile(path).metadata.num_row_groups > 1  # written block by block, never whole
    assert pq.read_table(path).equals(extract(tenant, "provider", PROVIDER_SOURCE))


def test_an_empty_source_table_is_an_empty_parquet_file_of_its_schema(make_tenants, tmp_path, pg):
    tenant = make_tenants(providers=50).tenant
    pg.execute(f'DELETE FROM "{tenant.source_schema}".provider')
    path = extract_parquet(tenant, "provider", PROVIDER_SOURCE, tmp_path / "provider.parquet")
    assert pq.read_table(path).equals(PROVIDER_SOURCE.empty_table())


def test_the_transform_over_the_parquet_extract_equals_the_transform_over_arrow(make_tenants, tmp_path):
    tenant = make_tenants(providers=2_000, dirt_rate=0.05).tenant
    path = extract_parquet(tenant, "provider", PROVIDER_SOURCE, tmp_path / "provider.parquet")
    parsed = parse_landing_file("sample.csv", SAMPLE_CSV)
    info = {"object_key": "sample.csv", "etag": "e1", "object_last_modified": T0, "ingested_at": T0}
    landing_rows = tables.conform(pa.Table.from_pylist([{**r, **info} for r in parsed.rows]), tables.LANDING_ROW)
    landing_files = tables.conform(pa.Table.from_pylist([{**info, "status": "loaded"}]), tables.LANDING_FILE)
    care_sites = build_care_sites(extract(tenant, "care_site", CARE_SITE_SOURCE), tables.ID_MAP.empty_table(),
                                  now=T0).care_site

    def build(source):
        return build_providers(source=source, source_object="postgres:src.provider", care_sites=care_sites,
                               landing_rows=landing_rows, landing_files=landing_files,
                               id_map=tables.ID_MAP.empty_table(), previous_provenance=tables.PROVENANCE.empty_table(),
                               processed_files=[], specialties=load_specialty_map(), now=T0)

    from_arrow, from_file = build(extract(tenant, "provider", PROVIDER_SOURCE)), build(path)
    assert from_file.counts == from_arrow.counts and from_file.counts.source_rows == 2_000
    for name in ("provider", "provenance", "quarantine", "flags", "id_map_additions"):
        built, expected = from_file.table(name), from_arrow.table(name)
        assert built.schema == expected.schema, name
        # the same rows; their order is DuckDB's (parallel scans), not part of the result
        assert sorted(built.to_pylist(), key=repr) == sorted(expected.to_pylist(), key=repr), name
    assert from_file.run_files == from_arrow.run_files


def test_a_value_the_parser_refuses_early_in_a_long_copy_is_the_error_reported(make_tenants, tmp_path, pg):
    # The bad row is near the start of a COPY far larger than the pipe: the parser stops while the COPY
    # still writes, so the COPY thread fails with a broken pipe; the parser's error must be the one raised.
    tenant = make_tenants(providers=60_000).tenant
    table = f'"{tenant.source_schema}".provider'
    (first,) = pg.execute(f"SELECT provider_id FROM {table} ORDER BY ctid LIMIT 1").fetchone()
    pg.execute(f"ALTER TABLE {table} ALTER COLUMN provider_id TYPE text "
               f"USING CASE WHEN provider_id = {int(first)} THEN 'not-a-number' ELSE provider_id::text END")
    with pytest.raises(pa.ArrowInvalid, match="not-a-number"):
        extract_parquet(tenant, "provider", PROVIDER_SOURCE, tmp_path / "provider.parquet", block_size=64 << 10)
