"""The pure parsing layer of ny_testing: snapshot layout, column resolution, bad bodies, slugs."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Sequence
from dataclasses import replace

import ijson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from covid_lakehouse.defs.ny_testing.parsing import (
    BATCH_ROWS,
    MEASURES,
    SCHEMA,
    SourceFormatError,
    UnsafeIdentifierError,
    county_slug,
    open_rows_json,
)
from covid_lakehouse.defs.ny_testing.parsing import rows as parsing_rows
from covid_lakehouse.defs.ny_testing.snapshot import (
    CSV_HEADER_COLUMNS,
    ColumnSpec,
    read_export_csv,
    scaled_rows,
    write_rows_json,
)
from covid_lakehouse.defs.ny_testing.warehouse import county_tables, download_name_problems

SOURCE = "https://health.data.ny.gov/api/views/xdss-u53e/rows.json?accessType=DOWNLOAD"
COLUMNS: list[ColumnSpec] = list(CSV_HEADER_COLUMNS.values())  # the API's order: test_date ... geography

# Lines of the portal's CSV export (thru 2022-09-13) in the API's representation. The first is
# 9/13/2022,St. Lawrence,30,"24,411",280,"607,022",9.54%,COUNTY
ROWS: list[list[str | None]] = [
    ["2022-09-13T00:00:00", "St. Lawrence", "30", "24411", "280", "607022", "9.54", "COUNTY"],
    ["2022-09-13T00:00:00", "New York", "474", "526851", "7676", "13985161", "6.09", "COUNTY"],
    ["2022-09-13T00:00:00", "New York City", "2196", "2780306", "38054", "58306004", "4.84", "REGION"],
    ["2022-09-13T00:00:00", "STATEWIDE", "5231", "5972214", "75114", "118805548", "6.17", "STATEWIDE"],
    ["2020-03-02T00:00:00", "St. Lawrence", "0", "0", "0", "0", "0.00", "COUNTY"],
]
ST_LAWRENCE_2022_09_13 = {
    "geography": "COUNTY",
    "county": "St. Lawrence",
    "test_date": dt.date(2022, 9, 13),
    "new_positives": 30,
    "cumulative_number_of_positives": 24411,
    "total_number_of_tests_performed": 280,
    "cumulative_number_of_tests_performed": 607022,
}

# Socrata error bodies as served during outages (shared/data/vaccines/soda_outage_*.txt, byte for byte).
SODA_ERROR_2021_09_28 = (
    b'{"message":"Internal error: please include code bd4caddf-45d8-442f-9f1a-b2a5d170e96b if you report '
    b'the error","errorCode":"internal-error","data":{"tag":"bd4caddf-45d8-442f-9f1a-b2a5d170e96b"}}'
)
SODA_ERROR_2022_01_12 = b'{\n  "error" : true,\n  "message" : "Internal error",\n  "status" : 500\n}\n'
SODA_HTML_2021_02_21 = (
    b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"\n'
    b'        "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
    b'<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n<head>\n'
    b"    <title>Site Currently Unavailable</title>\n"
)


def body(columns: list[ColumnSpec] = COLUMNS, rows: Sequence[Sequence[str | None]] = ROWS) -> bytes:
    out = io.BytesIO()
    write_rows_json(out, columns, rows)
    return out.getvalue()


def parse(data: bytes, **kwargs) -> pa.Table:
    return open_rows_json(io.BytesIO(data), source=SOURCE, **kwargs).read_all()


def by_county(table: pa.Table) -> dict[tuple[str, dt.date], dict]:
    return {(r["county"], r["test_date"]): r for r in table.to_pylist()}


def with_value(column: str, value: str | None, row: int = 1) -> bytes:
    """ROWS with one value replaced (row counts from 0)."""
    rows = [list(r) for r in ROWS]
    rows[row][[c.field_name for c in COLUMNS].index(column)] = value
    return body(rows=rows)


# -- the bundled snapshot -------------------------------------------------------------------------


def test_snapshot_has_the_socrata_rows_json_layout(snapshot_body: bytes) -> None:
    columns = next(ijson.items(io.BytesIO(snapshot_body), "meta.view.columns"))
    system = [
        ":sid",
        ":id",
        ":position",
        ":created_at",
        ":created_meta",
        ":updated_at",
        ":updated_meta",
        ":meta",
    ]
    assert [c["fieldName"] for c in columns[:8]] == system
    assert {c["id"] for c in columns[:8]} == {-1}
    assert [c["fieldName"] for c in columns[8:]] == [c.field_name for c in COLUMNS]
    for c in columns[8:]:
        assert {"id", "name", "dataTypeName", "fieldName", "position", "renderTypeName"} <= c.keys()
    first = next(ijson.items(io.BytesIO(snapshot_body), "data.item"))
    assert len(first) == 16
    assert all(isinstance(v, str) for v in first[8:])  # user values are strings, as in real exports
    assert snapshot_body.index(b'"meta"') < snapshot_body.index(b'"data"')


def test_snapshot_parses_to_the_csv_content(snapshot_body: bytes) -> None:
    reader = open_rows_json(io.BytesIO(snapshot_body), source="bundled")
    table = reader.read_all()
    assert table.schema == SCHEMA
    assert table.num_rows == reader.rows_read == 67_671
    distinct = table.group_by("geography").aggregate([("county", "count_distinct")]).to_pylist()
    assert {r["geography"]: r["county_count_distinct"] for r in distinct} == {
        "COUNTY": 62,
        "REGION": 10,
        "STATEWIDE": 1,
    }
    counties = set(table.filter(pc.equal(table["geography"], "COUNTY"))["county"].to_pylist())
    assert {"St. Lawrence", "New York"} <= counties and "New York City" not in counties
    assert by_county(table)[("St. Lawrence", dt.date(2022, 9, 13))] == ST_LAWRENCE_2022_09_13
    assert pc.min(table["test_date"]).as_py() == dt.date(2020, 3, 1)
    assert pc.max(table["test_date"]).as_py() == dt.date(2022, 9, 13)
    assert reader.column_mapping["total_number_of_tests_performed"] == "total_number_of_tests"
    assert reader.ignored_columns == []


def test_meta_is_read_without_reading_the_whole_body(snapshot_body: bytes) -> None:
    stream = io.BytesIO(snapshot_body)
    reader = open_rows_json(stream, source="bundled")
    assert stream.tell() < 1_000_000 < len(snapshot_body)  # streaming, not json.load
    assert next(reader.batches()).num_rows == BATCH_ROWS  # bounded batches, whatever the body's size


def test_batches_respect_batch_rows_and_count_rows_across_batches() -> None:
    batches = list(open_rows_json(io.BytesIO(body()), source=SOURCE, batch_rows=2).batches())
    assert [b.num_rows for b in batches] == [2, 2, 1]
    reader = open_rows_json(io.BytesIO(with_value("new_positives", "x", row=4)), source=SOURCE, batch_rows=2)
    assert [b.num_rows for b in reader.batches()] == [2, 2]  # the bad row is left out ...
    [(count, problem)] = reader.bad_rows.values()  # ... and counted under its unit, by its number
    assert count == 1 and problem.startswith("row 5: non-integer value")


def test_batches_join_small_chunks_exactly_and_keep_row_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows are held as Python values a chunk at a time (bounded memory) and joined into batches.
    monkeypatch.setattr(parsing_rows, "CHUNK_ROWS", 2)
    batches = list(open_rows_json(io.BytesIO(body()), source=SOURCE, batch_rows=3).batches())
    assert [b.num_rows for b in batches] == [3, 2]
    assert pa.Table.from_batches(batches).equals(parse(body()))
    reader = open_rows_json(io.BytesIO(with_value("new_positives", "x", row=3)), source=SOURCE, batch_rows=3)
    assert sum(b.num_rows for b in reader.batches()) == len(ROWS) - 1
    assert [p for _, p in reader.bad_rows.values()][0].startswith("row 4: non-integer value")


# -- column resolution ----------------------------------------------------------------------------


def test_columns_are_found_by_name_when_reordered() -> None:
    order = [7, 5, 3, 1, 0, 2, 4, 6]
    shuffled = body([COLUMNS[i] for i in order], [[r[i] for i in order] for r in ROWS])
    assert by_county(parse(shuffled)) == by_county(parse(body()))
    assert by_county(parse(shuffled))[("St. Lawrence", dt.date(2022, 9, 13))] == ST_LAWRENCE_2022_09_13


def test_renamed_columns_are_resolved() -> None:
    renamed = list(COLUMNS)
    renamed[2] = ColumnSpec("col_2xyz", "Total New Positives", "number")  # matched by display name
    renamed[4] = replace(COLUMNS[4], field_name="total_number_of_tests_performed")
    renamed[5] = ColumnSpec("cumulative_number_of_tests_performed", "Cumulative tests", "number")
    reader = open_rows_json(io.BytesIO(body(renamed)), source=SOURCE)
    assert reader.column_mapping["new_positives"] == "col_2xyz"
    assert reader.column_mapping["total_number_of_tests_performed"] == "total_number_of_tests_performed"
    assert by_county(reader.read_all())[("St. Lawrence", dt.date(2022, 9, 13))] == ST_LAWRENCE_2022_09_13


def test_missing_required_column_is_named() -> None:
    keep = [i for i, c in enumerate(COLUMNS) if c.field_name != "cumulative_number_of_tests"]
    data = body([COLUMNS[i] for i in keep], [[r[i] for i in keep] for r in ROWS])
    with pytest.raises(SourceFormatError) as err:
        open_rows_json(io.BytesIO(data), source=SOURCE)
    message = str(err.value)
    assert SOURCE in message and "cumulative_number_of_tests_performed" in message
    assert "found columns" in message and "total_number_of_tests" in message


def test_two_columns_for_one_measure_are_ambiguous() -> None:
    columns = [*COLUMNS, ColumnSpec("total_number_of_tests_performed", "Tests")]
    with pytest.raises(SourceFormatError, match="total_number_of_tests_performed is ambiguous"):
        open_rows_json(io.BytesIO(body(columns, [[*r, "1"] for r in ROWS])), source=SOURCE)


def test_extra_columns_are_ignored_and_listed() -> None:
    extra = [ColumnSpec("county_fips", "County FIPS"), *COLUMNS, ColumnSpec("notes", "Notes")]
    reader = open_rows_json(io.BytesIO(body(extra, [["36089", *r, "n/a"] for r in ROWS])), source=SOURCE)
    assert reader.ignored_columns == ["county_fips", "notes"]
    assert by_county(reader.read_all())[("St. Lawrence", dt.date(2022, 9, 13))] == ST_LAWRENCE_2022_09_13


def test_dataset_without_geography_column_is_all_counties() -> None:
    # The 2020 layout: six columns, no test_positive or geography.
    table = parse(body(COLUMNS[:6], [r[:6] for r in ROWS]))
    assert set(table["geography"].to_pylist()) == {"COUNTY"}
    assert table.num_rows == len(ROWS)


# -- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "raw", "expected"),
    [
        ("cumulative_number_of_tests", "1,364,305", 1364305),
        ("new_positives", " 12 ", 12),
        ("new_positives", "-3", -3),  # corrections in new_positives happen
        ("test_date", "2022-09-13", dt.date(2022, 9, 13)),
        ("test_date", "09/13/2022", dt.date(2022, 9, 13)),
        ("test_date", "9/3/2022", dt.date(2022, 9, 3)),
        ("geography", "county", "COUNTY"),
    ],
)
def test_accepted_value_forms(column: str, raw: str, expected: object) -> None:
    ours = {
        "cumulative_number_of_tests": "cumulative_number_of_tests_performed",
    }.get(column, column)
    assert parse(with_value(column, raw))[ours][1].as_py() == expected


@pytest.mark.parametrize(
    ("column", "raw", "problem"),
    [
        ("new_positives", "12.5", "non-integer value"),
        ("new_positives", "abc", "non-integer value"),
        ("new_positives", "1,2,3", "non-integer value"),
        ("new_positives", None, "blank value"),
        ("cumulative_number_of_positives", "", "blank value"),
        ("test_date", "13 Sep 2022", "unrecognised date"),
        ("test_date", "02/30/2020", "impossible date"),
        ("new_positives", "9223372036854775808", "integer out of range"),
    ],
)
def test_a_bad_value_leaves_its_row_out_and_names_row_column_and_value(column: str, raw: str | None,
                                                                       problem: str) -> None:
    """A bad value blocks its county, not the download: the row is left out and noted under its unit."""
    reader = open_rows_json(io.BytesIO(with_value(column, raw, row=2)), source=SOURCE)
    table = reader.read_all()
    bad = ROWS[2]
    unit = (bad[-1].upper(), bad[1])
    assert table.num_rows == len(ROWS) - 1 and table.schema == SCHEMA
    assert (unit[1], dt.date.fromisoformat(bad[0][:10])) not in by_county(table)
    count, message = reader.bad_rows[unit]
    assert count == 1 and message.startswith(f"row 3: {problem}")
    assert f"{column!r}" in message and repr(raw) in message


@pytest.mark.parametrize("column", ["county", "geography"])
def test_a_row_without_a_county_or_geography_is_a_format_error(column: str) -> None:
    # No unit to hold back: the download is refused, naming the row.
    with pytest.raises(SourceFormatError) as err:
        parse(with_value(column, "  ", row=2))
    message = str(err.value)
    assert message.startswith(SOURCE) and "row 3: blank value" in message and f"{column!r}" in message


def test_measure_sent_as_json_number_is_accepted() -> None:
    data = body().replace(b'"STATEWIDE", "5231"', b'"STATEWIDE", 5231')
    assert parse(data)["new_positives"][3].as_py() == 5231


def test_row_of_the_wrong_width_is_rejected() -> None:
    data = body().replace(b', "COUNTY" ]', b" ]", 1)
    with pytest.raises(SourceFormatError, match="row 1 is not a list of 16 values"):
        parse(data)


# -- bodies that are not rows.json ----------------------------------------------------------------


def test_html_page_is_rejected_before_parsing() -> None:
    with pytest.raises(SourceFormatError, match="received an HTML page instead of rows.json") as err:
        open_rows_json(io.BytesIO(b"\n  " + SODA_HTML_2021_02_21), source=SOURCE)
    assert "Site Currently Unavailable" in str(err.value)


@pytest.mark.parametrize(
    ("data", "quoted"),
    [
        (SODA_ERROR_2021_09_28, "Internal error: please include code bd4caddf"),
        (SODA_ERROR_2022_01_12, "'Internal error'"),
        (b'{"code": "not_found", "message": "Dataset xdss-u53e not found"}', "Dataset xdss-u53e not found"),
    ],
)
def test_json_error_body_quotes_the_message(data: bytes, quoted: str) -> None:
    with pytest.raises(SourceFormatError, match="the API returned an error") as err:
        open_rows_json(io.BytesIO(data), source=SOURCE)
    assert quoted in str(err.value) and SOURCE in str(err.value)


def test_truncated_body_fails_at_its_end(snapshot_body: bytes) -> None:
    half = snapshot_body[: len(snapshot_body) // 2]
    reader = open_rows_json(io.BytesIO(half), source=SOURCE)  # meta is complete; the rows are not
    yielded = []
    with pytest.raises(SourceFormatError, match=f"truncated or malformed JSON at byte {len(half)}"):
        for batch in reader.batches():
            yielded.append(batch)
    # Batches are bounded, so the rows before the cut were handed out: consumers act only once the
    # stream ended cleanly (the raw step quarantines the body, the load's COPY transaction rolls back).
    assert 0 < sum(b.num_rows for b in yielded) < 67_671 // 2


def test_truncated_meta_is_reported() -> None:
    data = body()
    with pytest.raises(SourceFormatError, match="truncated or malformed JSON at byte 300"):
        open_rows_json(io.BytesIO(data[:300]), source=SOURCE)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty body"),
        (b" \n\t ", "empty body"),
        (b'{"data": [["a"]], "meta": {"view": {"columns": []}}}', 'no "meta" object before the rows'),
        (b'[{"county": "Albany"}]', "received a JSON array"),
        (b'{"meta": {"view": {"columns": []}}}', 'no "data" array'),
        (b'{"meta": {"view": {"columns": []}}, "data": []}', "missing required column"),
        (b'{"meta": {"view": {}}, "data": []}', "meta.view.columns is missing"),
        (b"Service Unavailable", "not JSON"),
        (b'{"meta": {"view": ]}', "truncated or malformed JSON before byte 20"),
    ],
)
def test_other_bad_bodies(data: bytes, problem: str) -> None:
    with pytest.raises(SourceFormatError, match=problem):
        open_rows_json(io.BytesIO(data), source=SOURCE)


def test_utf8_bom_is_tolerated() -> None:
    assert parse(b"\xef\xbb\xbf" + body()).num_rows == len(ROWS)


# -- county slugs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("St. Lawrence", "st_lawrence"),
        ("New York", "new_york"),
        ("New York City", "new_york_city"),
        ("  Albany ", "albany"),
        ("Doña Ana", "dona_ana"),
        ("Robert'); DROP TABLE x;--", "robert_drop_table_x"),
    ],
)
def test_county_slug(name: str, slug: str) -> None:
    assert county_slug(name) == slug


@pytest.mark.parametrize("name", ["", "!!!", "1st County", "x" * 64, "東京"])
def test_unsafe_county_names_raise(name: str) -> None:
    with pytest.raises(UnsafeIdentifierError) as err:
        county_slug(name)
    assert repr(name) in str(err.value)


def test_county_tables_detect_collisions_within_one_download() -> None:
    """Collisions are found by warehouse.download_name_problems (they hold back the county, not the download)."""
    names = ["St. Lawrence", "New York", "St. Lawrence"]
    assert county_tables(names)[0] == {"St. Lawrence": "st_lawrence", "New York": "new_york"}
    assert download_name_problems(names) == {}
    problems = download_name_problems(["St. Lawrence", "New York", "St Lawrence"])
    assert problems.keys() == {"St. Lawrence", "St Lawrence"}
    assert "'St. Lawrence' and 'St Lawrence'" in problems["St. Lawrence"]


# -- building snapshots ---------------------------------------------------------------------------


def test_scaled_rows_repeat_geographies_over_later_days() -> None:
    scaled = list(scaled_rows(ROWS, 3))
    assert len(scaled) == 3 * len(ROWS)
    assert scaled[: len(ROWS)] == ROWS
    span = dt.timedelta(days=(dt.date(2022, 9, 13) - dt.date(2020, 3, 2)).days + 1)
    for k in range(3):
        copy = scaled[k * len(ROWS) : (k + 1) * len(ROWS)]
        assert [r[1:] for r in copy] == [r[1:] for r in ROWS]  # same geographies and figures
        for new, old in zip(copy, ROWS, strict=True):
            assert dt.datetime.fromisoformat(new[0]) == dt.datetime.fromisoformat(old[0]) + k * span
    table = parse(body(rows=scaled))  # one row per county and day: no duplicated (county, date)
    assert len(by_county(table)) == table.num_rows


def test_read_export_csv_converts_to_the_api_representation(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(
        "\ufeffTest Date,County,New Positives,Cumulative Number of Positives,Total Number of Tests Performed,"
        'Cumulative Number of Tests Performed,Test % Positive,Geography\r\n9/13/2022,St. Lawrence,30,"24,411",'
        '280,"607,022",9.54%,COUNTY\r\n'.encode()
    )
    columns, rows = read_export_csv(path)
    assert columns == COLUMNS
    assert list(rows) == [ROWS[0]]


def test_written_body_is_valid_json_with_meta_first() -> None:
    doc = json.loads(body())
    assert list(doc) == ["meta", "data"]
    assert doc["meta"]["view"]["id"] == "xdss-u53e"
    assert [r[8:] for r in doc["data"]] == ROWS
    assert MEASURES == tuple(SCHEMA.names[3:])
