"""The provider transform stays within OMOP_DUCKDB_MEMORY_LIMIT by spilling, on a tenant's first run and
on the rerun after a source change (the daily run of a large tenant: a previous provenance and an id map
as large as the tenant), however its working set compares with the limit.

At 300,000 providers the transform's DuckDB working set is several times the 56MB limit used here
(with 2 DuckDB threads; about DuckDB's own floor for a query of several joins); a step that cannot spill
fails with DuckDB's out-of-memory error. Before each tenant-sized join got a statement of its own, the
flags query failed here (its joins pinned at once), and so did the rerun's collect_claims (three
tenant-sized joins in one query), as a 2,000,000-provider tenant's rerun did at the 256MB default."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.extract import PROVIDER_SOURCE
from covid_lakehouse.defs.omop.landing import parse_landing_file
from covid_lakehouse.defs.omop.rules import load_specialty_map
from covid_lakehouse.defs.omop.transform import (
    ID_MAP_ADDITIONS,
    PROVENANCE,
    PROVIDER,
    build_care_sites,
    build_providers,
    connect,
)
from covid_lakehouse.lib.settings import SettingError
from covid_lakehouse_dev.seeds.omop import CARE_SITES, SAMPLE_FILE, provider_rows

PROVIDERS = 300_000
LIMIT = "56MB"
T0 = datetime(2024, 5, 1, 6, tzinfo=UTC)


def source_table(rows: pa.Table, first_id: int = 1) -> pa.Table:
    rows = rows.add_column(0, "provider_id", pa.array(np.arange(first_id, first_id + rows.num_rows), pa.int64()))
    return rows.select(PROVIDER_SOURCE.names).cast(PROVIDER_SOURCE)


def changed_source(source: pa.Table) -> tuple[pa.Table, int, int, int]:
    """About 1% of the rows changed: every 100th renamed, every 1000th (of the others) deleted, 300 new."""
    ids = source["provider_id"].to_numpy()
    updated = (ids % 100) == 50
    deleted = ((ids % 1000) == 7)
    names = pc.if_else(pa.array(updated), pc.binary_join_element_wise(source["provider_name"], "Jr", " "),
                       source["provider_name"])
    kept = source.set_column(source.schema.get_field_index("provider_name"), "provider_name", names).filter(
        pa.array(~deleted))
    new = source_table(provider_rows(300, 0.0, 1), first_id=int(ids.max()) + 1)
    psv = new.schema.get_field_index("provider_source_value")  # not the source ids of existing rows
    new = new.set_column(psv, "provider_source_value", pc.binary_join_element_wise("NEW", new[psv], ""))
    return pa.concat_tables([kept, new]), int(updated.sum()), int(deleted.sum()), new.num_rows


def test_first_run_and_changed_rerun_complete_under_a_memory_limit_far_below_the_working_set(monkeypatch, tmp_path):
    monkeypatch.setenv("OMOP_DUCKDB_MEMORY_LIMIT", LIMIT)
    monkeypatch.setenv("OMOP_DUCKDB_TEMP_DIR", str(tmp_path / "spill"))
    # DuckDB's own floor grows with its threads (each pins buffers): fixed, so that the limit means the
    # same on any machine.
    monkeypatch.setenv("OMOP_DUCKDB_THREADS", "2")
    source = source_table(provider_rows(PROVIDERS, 0.02, 0))
    pq.write_table(source, tmp_path / "source.parquet")
    care_sites = pa.table({"care_site_id": pa.array(range(1, len(CARE_SITES) + 1), pa.int64()),
                           "care_site_name": [c[0] for c in CARE_SITES],
                           "care_site_source_value": [c[1] for c in CARE_SITES]})
    info = {"object_key": "sample.csv", "etag": "e1", "object_last_modified": T0, "ingested_at": T0}
    inputs = {
        "source": tmp_path / "source.parquet", "source_object": "postgres:src.provider", "processed_files": [],
        "care_sites": build_care_sites(care_sites, tables.ID_MAP.empty_table(), now=T0).care_site,
        "landing_rows": tables.conform(pa.Table.from_pylist(
            [{**r, **info} for r in parse_landing_file("sample.csv", SAMPLE_FILE.read_bytes()).rows]),
            tables.LANDING_ROW),
        "landing_files": tables.conform(pa.Table.from_pylist([{**info, "status": "loaded"}]), tables.LANDING_FILE),
        "id_map": tables.ID_MAP.empty_table(), "previous_provenance": tables.PROVENANCE.empty_table(),
        "specialties": load_specialty_map(), "now": T0,
    }
    (tmp_path / "first").mkdir()
    first = build_providers(**inputs, out_dir=tmp_path / "first")
    assert first.counts.balanced and first.rows[PROVIDER] > 0.95 * PROVIDERS

    rerun_source, updated, deleted, inserted = changed_source(source)
    pq.write_table(rerun_source, tmp_path / "source2.parquet")
    rerun = build_providers(**{
        **inputs, "source": tmp_path / "source2.parquet", "now": T0 + timedelta(days=1),
        "id_map": first.table(ID_MAP_ADDITIONS), "previous_provenance": first.table(PROVENANCE),
        "processed_files": first.run_files})

    counts = rerun.counts
    assert counts.balanced
    assert (counts.source_changed, counts.source_deleted, counts.source_new) == (updated, deleted, inserted)
    # The rerun keeps every surviving provider's id (the claims it could not compute before).
    before = first.table(PROVIDER).select(["provider_id", "provider_source_value"])
    after = rerun.table(PROVIDER).select(["provider_id", "provider_source_value"])
    kept = before.join(after, "provider_source_value", join_type="inner", right_suffix="_after")
    assert kept.num_rows > 0.98 * before.num_rows
    moved = kept.filter(pc.not_equal(kept["provider_id"], kept["provider_id_after"]))
    assert moved.num_rows == 0, moved.slice(0, 5).to_pylist()
    # The map grows by the new providers' keys (and those of rows an inserted NPI now repeats), not anew.
    assert inserted * 0.9 < rerun.rows[ID_MAP_ADDITIONS] < 0.01 * PROVIDERS


def test_the_session_takes_its_thread_count_from_the_settings(monkeypatch):
    monkeypatch.setenv("OMOP_DUCKDB_THREADS", "1")
    assert connect().execute("SELECT current_setting('threads')").fetchone() == (1,)


@pytest.mark.parametrize("threads", ["2.5", "0", "many"])
def test_a_thread_count_that_is_not_a_whole_number_of_at_least_one_is_refused_by_name(monkeypatch, threads):
    monkeypatch.setenv("OMOP_DUCKDB_THREADS", threads)
    with pytest.raises(SettingError, match="OMOP_DUCKDB_THREADS"):
        connect()
