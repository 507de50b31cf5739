"""UnitSpool: rows regrouped by (geography, name) through files on disk, in bounded batches."""

from __future__ import annotations

import datetime as dt
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covid_lakehouse.defs.ny_testing import spool
from covid_lakehouse.defs.ny_testing.parsing import SCHEMA
from covid_lakehouse.defs.ny_testing.raw import read_parsed, summarize
from covid_lakehouse.defs.ny_testing.snapshot import CSV_HEADER_COLUMNS, write_rows_json
from covid_lakehouse.defs.ny_testing.spool import UnitSpool


def rows(units: list[tuple[str, str]], days: int) -> list[dict]:
    """Source order: every unit of a day, then the next day."""
    start = dt.date(2022, 1, 1)
    return [{"geography": g, "county": c, "test_date": start + dt.timedelta(days=d), "new_positives": d,
             "cumulative_number_of_positives": d, "total_number_of_tests_performed": d,
             "cumulative_number_of_tests_performed": d} for d in range(days) for g, c in units]


UNITS = [("COUNTY", "Albany"), ("REGION", "New York City"), ("COUNTY", "St. Lawrence"), ("STATEWIDE", "STATEWIDE"),
         ("COUNTY", "Bronx")]


def spooled(tmp_path, data: list[dict], in_batches_of: int, out_batches_of: int) -> list[pa.RecordBatch]:
    table = pa.Table.from_pylist(data, schema=SCHEMA)
    unit_spool = UnitSpool(tmp_path, SCHEMA)
    for batch in table.to_batches(max_chunksize=in_batches_of):
        unit_spool.add(batch)
    assert unit_spool.rows == len(data)
    return list(unit_spool.batches(out_batches_of))


def test_rows_come_back_grouped_by_unit_in_source_order_and_rebatched(tmp_path) -> None:
    data = rows(UNITS, days=7)  # 35 rows
    batches = spooled(tmp_path, data, in_batches_of=4, out_batches_of=8)
    assert [b.num_rows for b in batches] == [8, 8, 8, 8, 3]
    out = pa.Table.from_batches(batches).to_pylist()
    expected = sorted(data, key=lambda r: (r["geography"], r["county"]))  # stable: days stay in order
    assert out == expected
    assert list(tmp_path.iterdir()) == []  # each unit's file is removed once read


def test_units_past_the_file_limit_share_one_file_read_last(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "MAX_FILES", 2)
    data = rows(UNITS, days=3)
    out = pa.Table.from_batches(spooled(tmp_path, data, in_batches_of=5, out_batches_of=100)).to_pylist()
    assert sorted(out, key=lambda r: (r["geography"], r["county"], r["test_date"])) == sorted(
        data, key=lambda r: (r["geography"], r["county"], r["test_date"]))
    # two units got files of their own and come first, grouped and sorted; the other three share the last file
    first = [(r["geography"], r["county"]) for r in out[:6]]
    assert first[:3] == [first[0]] * 3 and first[3:] == [first[3]] * 3 and first[0] < first[3]
    assert len({(r["geography"], r["county"]) for r in out[6:]} - set(first)) == 3


def test_the_parsed_parquet_is_grouped_and_says_so(tmp_path) -> None:
    columns = list(CSV_HEADER_COLUMNS.values())
    body = io.BytesIO()
    write_rows_json(body, columns, [[f"{r['test_date']}T00:00:00", r["county"], "1", "2", "3", "4", "1.0",
                                     r["geography"]] for r in rows(UNITS, days=3)])
    body.seek(0)
    sink = io.BytesIO()
    summary = summarize(body, source="test", parsed_sink=sink)
    assert summary.rows == 15 and summary.counties == ["Albany", "Bronx", "St. Lawrence"]
    sink.seek(0)
    parsed = read_parsed(sink)
    assert parsed is not None and parsed.grouped and parsed.rows_updated_at is not None
    table = parsed.file.read()
    units = list(zip(table["geography"].to_pylist(), table["county"].to_pylist(), strict=True))
    assert units == sorted(units)


def test_a_parsed_file_without_the_order_marker_is_read_as_source_order(tmp_path) -> None:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows(UNITS, days=2), schema=SCHEMA), sink)  # as the older parser wrote
    sink.seek(0)
    parsed = read_parsed(sink)
    assert parsed is not None and not parsed.grouped and parsed.rows_updated_at is None
