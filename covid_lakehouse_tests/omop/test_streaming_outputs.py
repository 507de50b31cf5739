"""Outputs that do not grow in memory with the tenant (issue #18): the transform streams each output into
a parquet file a batch at a time, and a tenant run publishes each table from its file in one snapshot."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.transform import build_providers, session
from covid_lakehouse_tests.omop.support import (
    FULL_REFRESH,
    SAMPLE_CSV,
    drop_file,
    first_build_inputs,
    run_tenant,
)

T0 = datetime(2024, 5, 1, 6, tzinfo=UTC)
OUTPUTS = ("provider", "provenance", "quarantine", "flags", "id_map_additions")


def test_the_outputs_stream_into_parquet_files_batch_by_batch_with_the_same_rows(make_tenants, tmp_path, monkeypatch):
    tenant = make_tenants(providers=2_000, dirt_rate=0.05).tenant
    inputs = first_build_inputs(tenant, tmp_path, T0)
    whole = build_providers(**inputs)
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(session, "BATCH_ROWS", 256)
    streamed = build_providers(**inputs, out_dir=tmp_path / "out")

    # the build holds files, never an output table
    assert not [name for name, value in vars(streamed).items() if isinstance(value, pa.Table)]
    assert {name: path.parent for name, path in streamed.files.items()} == {name: tmp_path / "out" for name in OUTPUTS}
    for name in ("provider", "provenance", "id_map_additions"):  # a row per provider: written 256 rows at a time
        assert pq.ParquetFile(streamed.files[name]).metadata.num_row_groups > 1, name
    assert streamed.counts == whole.counts and streamed.run_files == whole.run_files
    for name in OUTPUTS:
        built, expected = streamed.table(name), whole.table(name)
        assert built.schema == expected.schema and built.num_rows == streamed.rows[name], name
        assert sorted(built.to_pylist(), key=repr) == sorted(expected.to_pylist(), key=repr), name
    assert streamed.table("provider").num_rows > 1_000 and streamed.table("flags").num_rows > 0


@pytest.mark.integration
def test_a_tenant_run_publishes_each_output_in_one_snapshot(make_tenants, s3, lakehouse, instance):
    env = make_tenants(providers=300)
    drop_file(s3, env.tenant, "2024-05-01/E4_sample_providers.csv", SAMPLE_CSV)
    ns = env.tenant.namespace
    assert run_tenant(env, env.tenant, instance).success
    published = {t: lakehouse.read(ns, t) for t in (tables.T_PROVIDER, tables.T_PROVENANCE, tables.T_FLAG)}
    before = {t: len(lakehouse.load_table(ns, t).snapshots()) for t in published}
    id_map = lakehouse.read(ns, tables.T_PROVIDER_ID_MAP).sort_by("natural_key")
    assert id_map.num_rows >= published[tables.T_PROVIDER].num_rows  # appended from its file

    assert run_tenant(env, env.tenant, instance, run_config=FULL_REFRESH).success
    for table, rows in published.items():
        tbl = lakehouse.load_table(ns, table)
        # one new snapshot replacing the table's files, not a delete followed by an append
        assert len(tbl.snapshots()) == before[table] + 1, table
        assert tbl.current_snapshot().summary["operation"].value == "overwrite", table
        assert tbl.scan().to_arrow().num_rows == rows.num_rows, table
    assert lakehouse.read(ns, tables.T_PROVIDER_ID_MAP).sort_by("natural_key").equals(id_map)  # no new key
