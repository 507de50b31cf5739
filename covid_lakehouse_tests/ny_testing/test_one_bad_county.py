"""One bad county never blocks the others. Format errors (not JSON, a required column missing, more new
counties than the cap) refuse the download; a bad value or an unusable county name holds back only its
county, with the reason in the check and the run's metadata."""

from __future__ import annotations

import datetime as dt

import pytest

from covid_lakehouse_tests.ny_testing.support import checks, dataset, materialized

pytestmark = pytest.mark.integration

TOO_LONG = "Saint Lawrence and the Thousand Islands of the Upper River Valley"  # slug of 65 characters


def load_summary(result) -> dict:
    [observation] = [o for o in result.asset_observations_for_node("ny_testing__county_tests") if not o.partition]
    return {k: v.value for k, v in observation.metadata.items()}


@pytest.fixture
def loaded(ny):
    """Good data loaded once; returns every county table's rows, to compare with afterwards."""
    ny.serve(dataset())
    assert ny.daily().success
    return {t: ny.rows(t) for t in ("albany", "new_york", "st_lawrence")}


def test_a_blank_value_holds_back_only_its_county_naming_the_row_and_column(ny, loaded):
    rows = dataset(days=4)
    bad = next(r for r in rows if r[1] == "Albany" and r[0].startswith("2022-09-12"))
    bad[2] = None  # row 2 of the data: Albany's new_positives left blank
    ny.serve(rows)
    downloaded = ny.download()
    assert downloaded.success  # the download is stored: it is well-formed
    raw = ny.latest_raw()
    assert raw["counties"] == ["Albany", "New York", "St. Lawrence"]
    assert raw["rows_with_bad_values"] == {
        "Albany": "1 row(s); row 2: blank value in column new_positives (source field 'new_positives'): None"}

    result = ny.run(ny.tick().run_requests[0])
    assert not result.success  # a county is held back: the run says which and why
    assert set(materialized(result)) == {"New York", "St. Lawrence"}
    assert len(ny.rows("new_york")) == 4 and len(ny.rows("st_lawrence")) == 4
    assert ny.rows("albany") == loaded["albany"]  # not a single row of the bad download

    readable = checks(result)["values_readable"]
    assert readable.passed is False and readable.severity.value == "ERROR"
    assert readable.metadata["failing_counties"].value == ["Albany"]
    assert "row 2: blank value in column new_positives" in readable.description
    assert readable.metadata["problems"].value == {
        "Albany": "row 2: blank value in column new_positives (source field 'new_positives'): None"}
    summary = load_summary(result)
    assert summary["counties_held_back"] == ["Albany"]
    assert "held back: values_readable (row 2: blank value in column new_positives" in summary["load_summary"]
    error = result.failure_data_for_node("ny_testing__county_tests").error.message
    assert "Albany" in error and "2 other counties published" in error

    # The source fixes the value: the county loads again, nothing else to do.
    bad[2] = "5"
    ny.serve(rows)
    assert ny.daily().success
    assert len(ny.rows("albany")) == 4

    # A row without a county belongs to no county that could be held back alone: a format error, the
    # download is refused whole, as before.
    rows[0][1] = " "
    ny.serve(rows)
    refused = ny.download()
    assert not refused.success
    assert "row 1: blank value in column county" in refused.failure_data_for_node(
        "ny_testing__raw_rows_json").error.message
    assert ny.tick().run_requests == []


def test_a_county_name_too_long_for_a_table_holds_back_only_that_county(ny, loaded):
    ny.serve(dataset(("Albany", "New York", "St. Lawrence", TOO_LONG), days=4))
    assert ny.download().success
    raw = ny.latest_raw()
    assert TOO_LONG in raw["counties"]  # a partition, so the UI shows it (failed)
    assert raw["unusable_counties"][TOO_LONG].startswith(f"county {TOO_LONG!r} gives no safe identifier")

    result = ny.run(ny.tick().run_requests[0])
    assert not result.success
    assert set(materialized(result)) == {"Albany", "New York", "St. Lawrence"}
    assert {t: len(ny.rows(t)) for t in loaded} == {"albany": 4, "new_york": 4, "st_lawrence": 4}
    assert ny.tables() == {"albany", "new_york", "st_lawrence", "all_counties"}
    names = checks(result)["county_names_usable"]
    assert names.passed is False and names.metadata["failing_counties"].value == [TOO_LONG]
    assert f"{TOO_LONG}: county {TOO_LONG!r} gives no safe identifier" in names.description
    assert load_summary(result)["counties_held_back"] == [TOO_LONG]
    # The reference rows of the same download are published as usual.
    assert ny.pg.execute("SELECT max(test_date) FROM ny_testing_reference.geography_totals").fetchone()[0] == (
        dt.date(2022, 9, 14))



@pytest.mark.parametrize(("county", "problem", "partition"), [
    ("All Counties", "would take the name of the view 'all_counties'", True),
    ("Kings...", "cannot be a partition key", False),  # never a partition: every run reports it
])
def test_a_county_name_the_load_cannot_use_holds_back_only_that_county(ny, loaded, county, problem, partition):
    ny.serve(dataset(("Albany", "New York", "St. Lawrence", county), days=4))
    assert ny.download().success  # stored: the name blocks its county, not the download
    raw = ny.latest_raw()
    assert (county in raw["counties"]) is partition
    assert problem in raw["unusable_counties"][county]

    result = ny.run(ny.tick().run_requests[0])
    assert not result.success
    assert (county in ny.partitions()) is partition
    assert set(materialized(result)) == {"Albany", "New York", "St. Lawrence"}
    assert {t: len(ny.rows(t)) for t in loaded} == {"albany": 4, "new_york": 4, "st_lawrence": 4}
    assert ny.tables() == {"albany", "new_york", "st_lawrence", "all_counties"}
    names = checks(result)["county_names_usable"]
    assert names.passed is False and names.metadata["failing_counties"].value == [county]
    assert problem in names.metadata["problems"].value[county]
