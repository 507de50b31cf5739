"""Write-audit-publish per county: staged rows are audited before publishing; a county failing a blocking
check keeps its table as it was while the other counties are published, and the run fails naming it."""

from __future__ import annotations

import datetime as dt

import pytest

from covid_lakehouse.defs.ny_testing.warehouse import REFERENCE_SCHEMA
from covid_lakehouse_tests.ny_testing.support import checks, dataset, materialized

pytestmark = pytest.mark.integration

DAY2, DAY3 = "2022-09-12T00:00:00", "2022-09-13T00:00:00"


def row(rows, county, day):
    return next(r for r in rows if r[1] == county and r[0] == day)


def duplicate_date(rows):
    rows.append(row(rows, "Albany", DAY2).copy())


def negative_count(rows):
    row(rows, "Albany", DAY2)[2] = "-5"  # new positives (a correction published as a negative day)


def positives_over_tests(rows):
    row(rows, "Albany", DAY3)[2] = "500"  # new positives > the day's 100 tests


@pytest.mark.parametrize(("corrupt", "check", "count_key"), [
    (duplicate_date, "no_duplicate_test_dates", "duplicated_dates"),
    (negative_count, "no_negative_counts", "negative_rows"),
    (positives_over_tests, "positives_within_tests", "rows_positives_over_tests"),
])
def test_a_blocking_check_holds_back_only_the_failing_county(ny, corrupt, check, count_key):
    ny.serve(dataset(days=3))
    assert ny.daily().success
    albany_before = ny.rows("albany")

    rows = dataset(days=4)  # a new day for everyone, and one county's rows corrupted
    corrupt(rows)
    ny.serve(rows)
    result = ny.daily()

    assert not result.success
    error = result.failure_data_for_node("ny_testing__county_tests").error.message
    assert check in error and "Albany" in error and "tables left as they were" in error
    evaluation = checks(result)[check]
    assert evaluation.passed is False and evaluation.severity.value == "ERROR"
    assert evaluation.metadata["failing_counties"].value == ["Albany"]
    assert evaluation.metadata[count_key].value == 1
    other = {name: e.passed for name, e in checks(result).items() if e.severity.value == "ERROR" and name != check}
    assert all(other.values())

    assert ny.rows("albany") == albany_before  # untouched: not a row added or changed
    assert len(ny.rows("new_york")) == 4 and len(ny.rows("st_lawrence")) == 4  # the others are published
    assert set(materialized(result)) == {"New York", "St. Lawrence"}
    assert "held back: " + check in ny_summary(result)


def ny_summary(result) -> str:
    [observation] = result.asset_observations_for_node("ny_testing__county_tests")
    return observation.metadata["load_summary"].value


def test_a_county_failing_on_its_first_load_gets_no_table(ny):
    rows = dataset()
    negative_count(rows)
    ny.serve(rows)
    result = ny.daily()
    assert not result.success
    assert ny.tables() == {"new_york", "st_lawrence", "all_counties"}
    assert ny.partitions() == ["Albany", "New York", "St. Lawrence"]  # the partition exists, its load failed


def test_bad_reference_rows_hold_back_the_reference_table_not_the_counties(ny, pg):
    rows = dataset()
    row(rows, "STATEWIDE", DAY2)[3] = "-1"
    ny.serve(rows)
    result = ny.daily()
    assert not result.success
    assert "reference rows" in result.failure_data_for_node("ny_testing__county_tests").error.message
    assert checks(result)["no_negative_counts"].metadata["failing_reference"].value == ["STATEWIDE [STATEWIDE]"]
    assert set(materialized(result)) == {"Albany", "New York", "St. Lawrence"}
    assert pg.execute(f'SELECT count(*) FROM "{REFERENCE_SCHEMA}".geography_totals').fetchone()[0] == 0


def test_warn_checks_pass_on_consistent_data(ny):
    today = dt.datetime.now(dt.UTC).date()
    ny.serve(dataset(days=3, start=today - dt.timedelta(days=2)))
    result = ny.daily()
    assert result.success
    assert {name: e.passed for name, e in checks(result).items()} == {
        "values_readable": True, "county_names_usable": True,
        "no_duplicate_test_dates": True, "no_negative_counts": True, "positives_within_tests": True,
        "cumulative_consistent": True, "counties_sum_to_statewide": True, "fresh": True, "counties_present": True}
    assert checks(result)["counties_sum_to_statewide"].metadata["dates_compared"].value == 3


def test_cumulative_anomalies_warn_and_are_counted_but_load(ny):
    rows = dataset(days=4)
    row(rows, "Albany", DAY3)[3] = "1100"  # cumulative positives jump: day 3 and day 4 disagree with new
    row(rows, "New York", DAY2)[5] = "99999"  # cumulative tests: day 2 and day 3
    ny.serve(rows)
    result = ny.daily()
    assert result.success
    check = checks(result)["cumulative_consistent"]
    assert check.passed is False and check.severity.value == "WARN"
    assert check.metadata["days_positives_differ"].value == 2
    assert check.metadata["days_tests_differ"].value == 2
    assert check.metadata["counties_affected"].value == ["Albany", "New York"]
    assert ny.rows("albany")[dt.date(2022, 9, 13)]["cumulative_number_of_positives"] == 1100


def test_counties_not_adding_up_to_statewide_warn(ny):
    rows = dataset()
    row(rows, "STATEWIDE", DAY3)[4] = "9999"  # tests performed
    ny.serve(rows)
    result = ny.daily()
    assert result.success
    check = checks(result)["counties_sum_to_statewide"]
    assert check.passed is False and check.severity.value == "WARN"
    assert (check.metadata["dates_compared"].value, check.metadata["dates_differing"].value) == (3, 1)
    assert "| 2022-09-13 | 18 vs 18 |" in check.metadata["details"].value
    assert "| 330 vs 9999 |" in check.metadata["details"].value

    ny.serve(dataset(totals=False))  # no STATEWIDE rows at all: nothing to reconcile with
    assert checks(ny.daily())["counties_sum_to_statewide"].passed is True


def test_a_frozen_dataset_warns_with_its_last_date_and_rows_updated_at(ny):
    ny.serve(dataset())
    result = ny.daily()
    assert result.success
    check = checks(result)["fresh"]
    assert check.passed is False and check.severity.value == "WARN"
    assert check.metadata["last_test_date"].value == "2022-09-13"
    assert check.metadata["source_rows_updated_at"].value == "2023-09-01T00:00:00+00:00"
    assert "newest test_date 2022-09-13" in check.description
