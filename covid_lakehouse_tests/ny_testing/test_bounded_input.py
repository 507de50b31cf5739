"""Hostile rows.json bodies cost bounded work: the part before the rows is capped in bytes (leading
whitespace included, read linearly), and a download may add only NY_TESTING_MAX_NEW_COUNTIES counties;
past it the download is refused whole: no partitions, no tables, nothing stored as raw data."""

from __future__ import annotations

import io

import pytest

from covid_lakehouse.defs.ny_testing.parsing import SourceFormatError, open_rows_json
from covid_lakehouse.defs.ny_testing.parsing.meta import MAX_BEFORE_DATA_BYTES
from covid_lakehouse_tests.ny_testing.support import dataset, rows_json

OVER = MAX_BEFORE_DATA_BYTES + (1 << 20)


def test_whitespace_before_the_body_is_capped():
    body = rows_json(dataset())
    assert open_rows_json(io.BytesIO(b" \n" * (4 << 20) + body), source="ws").read_all().num_rows > 0
    with pytest.raises(SourceFormatError, match=f"more than {MAX_BEFORE_DATA_BYTES} bytes of whitespace"):
        open_rows_json(io.BytesIO(b" " * OVER + body), source="ws")


def test_the_part_before_the_data_array_is_capped():
    body = rows_json(dataset())
    padded = b'{"padding": "' + b"x" * OVER + b'", ' + body.lstrip()[1:]
    with pytest.raises(SourceFormatError, match='bytes before the "data" array'):
        open_rows_json(io.BytesIO(padded), source="padded")


@pytest.mark.integration
def test_a_download_adding_more_counties_than_the_cap_is_refused(ny, s3):
    ny.serve(dataset([f"County {i:03d}" for i in range(101)], days=1))  # the default cap is 100
    result = ny.download()
    assert not result.success
    error = result.failure_data_for_node("ny_testing__raw_rows_json").error.message
    assert "lists 101 counties that are not yet partitions" in error and "NY_TESTING_MAX_NEW_COUNTIES" in error
    assert ny.tick().run_requests == []
    assert ny.partitions() == [] and ny.tables() == set()
    listing = s3.get_client().list_objects_v2(Bucket="raw", Prefix=f"{ny.settings.raw_prefix}/sha256=")
    assert listing.get("Contents", []) == []


@pytest.mark.integration
def test_the_sensor_adds_no_more_counties_than_the_cap(ny, monkeypatch):
    ny.serve(dataset(["Albany", "Bronx", "Clinton"], days=1))
    assert ny.download().success
    monkeypatch.setenv("NY_TESTING_MAX_NEW_COUNTIES", "2")  # lowered after the download was stored
    with pytest.raises(Exception, match="lists 3 counties that are not yet partitions"):
        ny.tick()
    assert ny.partitions() == [] and ny.tables() == set()
