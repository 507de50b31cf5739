"""The transform over state tables given as parquet files (a lakehouse table's materialized snapshot:
files written at different times, without field ids) publishes exactly what it publishes from the same
state as Arrow tables. A file written before a column was added to its table lacks that column: it reads
as NULL of the schema's type, as pyiceberg's reader gives it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.transform import build_providers
from covid_lakehouse_tests.omop.support import first_build_inputs

T0 = datetime(2024, 5, 1, 6, tzinfo=UTC)
OUTPUTS = ("provider", "provenance", "quarantine", "flags", "id_map_additions")
STATE = {"landing_rows": tables.LANDING_ROW, "landing_files": tables.LANDING_FILE, "id_map": tables.ID_MAP,
         "previous_provenance": tables.PROVENANCE}


def _as_evolved_files(name: str, data: pa.Table, schema: pa.Schema, directory: Path,
                      older_share: float) -> tuple[pa.Table, list[Path]]:
    """``data`` as parquet files: an older one (``older_share`` of the rows) without the schema's last
    column (added later) and its other columns in reverse order, and a newer one, whole, with the rest
    (none when the older holds every row: then no file has the column). Returns the same rows as an
    Arrow table (the column NULL in the older rows) and the files."""
    late = schema.names[-1]
    split = round(data.num_rows * older_share)
    older, newer = data.slice(0, split), data.slice(split)
    paths = [directory / f"{name}-old.parquet"] + ([directory / f"{name}-new.parquet"] if newer.num_rows else [])
    pq.write_table(older.drop_columns([late]).select(list(reversed(schema.names[:-1]))), paths[0])
    if newer.num_rows:
        pq.write_table(newer, paths[1])
    older = older.set_column(schema.get_field_index(late), late, pa.nulls(older.num_rows, schema.field(late).type))
    return pa.concat_tables([older, newer]), paths


@pytest.mark.parametrize("older_share", [0.5, 1.0], ids=["some files lack a column", "every file lacks it"])
def test_a_changed_rerun_over_state_files_equals_the_rerun_over_the_same_state_in_arrow(make_tenants, tmp_path,
                                                                                       older_share):
    inputs = first_build_inputs(make_tenants(providers=2_000, dirt_rate=0.05).tenant, tmp_path, T0)
    first = build_providers(**inputs)
    rejected = {"object_key": "bad.csv", "etag": "e2", "object_last_modified": T0, "ingested_at": T0,
                "status": "rejected", "reason": "unreadable", "detail": "not a CSV", "run_id": "r1"}
    landing_files = pa.concat_tables([inputs["landing_files"],
                                      tables.conform(pa.Table.from_pylist([rejected]), tables.LANDING_FILE)])
    state = {"landing_rows": inputs["landing_rows"], "landing_files": landing_files,
             "id_map": first.table("id_map_additions"), "previous_provenance": first.table("provenance")}
    as_arrow, as_files = {}, {}
    for name, schema in STATE.items():
        as_arrow[name], as_files[name] = _as_evolved_files(name, state[name], schema, tmp_path,
                                                                         older_share)
    assert all(table.num_rows >= 2 for table in as_arrow.values())
    rerun = {**inputs, "processed_files": first.run_files, "now": T0 + timedelta(days=1)}

    from_arrow = build_providers(**{**rerun, **as_arrow})
    from_files = build_providers(**{**rerun, **as_files})

    assert from_files.counts == from_arrow.counts and from_files.run_files == from_arrow.run_files
    assert from_files.counts.source_unchanged > 0  # the previous provenance was read: a rerun, not a first run
    for name in OUTPUTS:
        got, want = from_files.table(name), from_arrow.table(name)
        assert got.schema == want.schema, name
        assert sorted(got.to_pylist(), key=repr) == sorted(want.to_pylist(), key=repr), name


def test_state_given_as_no_files_is_an_empty_table_of_its_schema(make_tenants, tmp_path):
    inputs = first_build_inputs(make_tenants(providers=300).tenant, tmp_path, T0)
    from_arrow = build_providers(**inputs)
    from_files = build_providers(**{**inputs, "id_map": [], "previous_provenance": []})
    assert from_files.counts == from_arrow.counts
    for name in OUTPUTS:
        assert sorted(from_files.table(name).to_pylist(), key=repr) == sorted(from_arrow.table(name).to_pylist(),
                                                                              key=repr), name
