"""Work the transform no longer does at 2,000,000 providers (issue #18: a tenant's first run <= 2x its
floor), each checked on a small tenant: the outputs' unique columns are not dictionary encoded."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow.parquet as pq

from covid_lakehouse.defs.omop.transform import build_providers
from covid_lakehouse_tests.omop.support import first_build_inputs

T0 = datetime(2024, 5, 1, 6, tzinfo=UTC)


def _dictionary_columns(path) -> set[str]:
    """The columns of a parquet file with a dictionary page in its first row group."""
    row_group = pq.ParquetFile(path).metadata.row_group(0)
    return {row_group.column(i).path_in_schema for i in range(row_group.num_columns)
            if row_group.column(i).has_dictionary_page}


def test_columns_with_a_value_per_row_are_written_without_a_dictionary(make_tenants, tmp_path):
    tenant = make_tenants(providers=2_000, dirt_rate=0.05).tenant
    build = build_providers(**first_build_inputs(tenant, tmp_path, T0))

    provider = _dictionary_columns(build.files["provider"])
    # a dictionary per row group that the writer then drops cost a third of the writes at 2M providers
    assert not provider & {"provider_id", "npi", "provider_source_value"}, provider
    assert {"provider_name", "specialty_concept_id", "care_site_id"} <= provider, provider
    provenance = _dictionary_columns(build.files["provenance"])
    assert not provenance & {"provider_id", "source_key", "row_hash"}, provenance
    assert {"source_system", "status"} <= provenance, provenance
    assert not _dictionary_columns(build.files["id_map_additions"]) & {"natural_key", "id"}
