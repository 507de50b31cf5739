"""A state table given as parquet files is read with each column cast to its schema's type, which
session.DUCKDB_TYPES states for every Arrow type the state schemas use; a type it does not know is an
error naming the table and column, not a guess."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.transform.session import connect, register_state

STATE = {"landing_rows": tables.LANDING_ROW, "landing_files": tables.LANDING_FILE, "id_map": tables.ID_MAP,
         "previous_provenance": tables.PROVENANCE}


@pytest.mark.parametrize("name", STATE)
def test_each_state_column_reads_as_the_type_duckdb_gives_its_arrow_type(tmp_path, name):
    schema = STATE[name]
    pq.write_table(schema.empty_table(), tmp_path / "state.parquet")
    con = connect()
    try:
        register_state(con, name, [tmp_path / "state.parquet"], schema)
        con.register("as_arrow", schema.empty_table())  # DuckDB's own mapping of the Arrow types
        described = {table: [tuple(row[:2]) for row in con.execute(f"DESCRIBE {table}").fetchall()]
                     for table in (name, "as_arrow")}
    finally:
        con.close()
    assert described[name] == described["as_arrow"]
    assert [column for column, _ in described[name]] == schema.names


def test_a_state_column_of_a_type_without_a_duckdb_type_is_named(tmp_path):
    schema = tables.ID_MAP.append(pa.field("weight", pa.float64()))
    pq.write_table(tables.ID_MAP.empty_table(), tmp_path / "state.parquet")
    con = connect()
    try:
        with pytest.raises(TypeError, match=r"state table 'id_map', column 'weight': Arrow type double"):
            register_state(con, "id_map", [tmp_path / "state.parquet"], schema)
    finally:
        con.close()
