"""A county the source spells differently ("St. Lawrence" -> "St Lawrence", "Albany" -> "ALBANY") keeps
its table: partitions stay keyed by the name as the source spells it, each spelling is a partition and
every spelling giving one table name loads into that table. Two spellings in the SAME download are a
true conflict: that county alone is held back, with a message saying how to resolve it."""

from __future__ import annotations

import datetime as dt

import pytest

from covid_lakehouse.defs.ny_testing.warehouse import COUNTY_SCHEMA
from covid_lakehouse_tests.ny_testing.support import checks, dataset, materialized

pytestmark = pytest.mark.integration


def view(ny) -> list[tuple[str, int]]:
    return ny.pg.execute(f'SELECT county, count(*) FROM "{COUNTY_SCHEMA}".all_counties GROUP BY 1 ORDER BY 1'
                         ).fetchall()


def test_a_renamed_county_loads_into_its_table_and_so_does_the_old_name_again(ny):
    ny.serve(dataset(("Albany", "New York", "St. Lawrence")))
    assert ny.daily().success
    first = ny.rows("st_lawrence")

    ny.serve(dataset(("ALBANY", "New York", "St Lawrence"), days=4))  # the source renames two counties
    renamed = ny.daily()
    assert renamed.success
    assert set(materialized(renamed)) == {"ALBANY", "New York", "St Lawrence"}
    assert ny.partitions() == ["Albany", "New York", "St. Lawrence", "ALBANY", "St Lawrence"]
    assert ny.tables() == {"albany", "new_york", "st_lawrence", "all_counties"}  # no new table
    st_lawrence = ny.rows("st_lawrence")
    assert len(st_lawrence) == 4
    assert {d: r for d, r in st_lawrence.items() if d in first} == first  # same values: untouched
    present = checks(renamed)["counties_present"]
    assert present.passed is True
    assert present.metadata["renamed_counties"].value == {"Albany": "ALBANY", "St. Lawrence": "St Lawrence"}
    assert view(ny) == [("ALBANY", 4), ("New York", 4), ("St Lawrence", 4)]  # each table once, current name

    ny.serve(dataset(("Albany", "New York", "St. Lawrence"), days=5))  # and back again
    back = ny.daily()
    assert back.success
    assert set(materialized(back)) == {"Albany", "New York", "St. Lawrence"}
    assert len(ny.partitions()) == 5 and len(ny.rows("st_lawrence")) == 5
    assert ny.rows("st_lawrence")[dt.date(2022, 9, 15)]["new_positives"] == 7
    assert view(ny) == [("Albany", 5), ("New York", 5), ("St. Lawrence", 5)]


def test_two_spellings_in_one_download_hold_back_that_county_only(ny):
    ny.serve(dataset(("Albany", "New York", "St. Lawrence")))
    assert ny.daily().success
    kept = ny.rows("st_lawrence")

    ny.serve(dataset(("Albany", "New York", "St. Lawrence", "St Lawrence"), days=4))
    assert ny.download().success  # the download is well-formed; only one county is ambiguous
    assert ny.latest_raw()["unusable_counties"].keys() == {"St Lawrence", "St. Lawrence"}
    result = ny.run(ny.tick().run_requests[0])
    assert not result.success
    assert set(materialized(result)) == {"Albany", "New York"}
    assert len(ny.rows("albany")) == 4 and ny.rows("st_lawrence") == kept
    names = checks(result)["county_names_usable"]
    assert names.passed is False
    assert names.metadata["failing_counties"].value == ["St Lawrence", "St. Lawrence"]
    problem = names.metadata["problems"].value["St Lawrence"]
    assert "counties 'St Lawrence' and 'St. Lawrence' in the same download both map to table " \
           "ny_testing.st_lawrence" in problem
    assert "To resolve" in problem and "the source must list one spelling" in problem
    assert view(ny) == [("Albany", 4), ("New York", 4), ("St. Lawrence", 3)]

    ny.serve(dataset(("Albany", "New York", "St Lawrence"), days=4))  # the source settles on one spelling
    settled = ny.daily()
    assert settled.success
    assert len(ny.rows("st_lawrence")) == 4
