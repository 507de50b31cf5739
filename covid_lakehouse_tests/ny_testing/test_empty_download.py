"""A rows.json with the expected columns but no data rows is a broken source, not a quiet day: the
raw asset fails naming the problem, stores nothing as raw data (the body is quarantined for
inspection) and the sensor has nothing to load, so every county table keeps its rows."""

import pytest

from covid_lakehouse_tests.ny_testing.support import dataset

pytestmark = pytest.mark.integration


def test_a_download_with_zero_rows_fails_and_stores_nothing(ny, s3):
    ny.serve(dataset())
    assert ny.download().success
    assert ny.run(ny.tick().run_requests[0]).success
    before = {t: ny.rows(t) for t in ("albany", "new_york", "st_lawrence")}
    raw_prefix = f"{ny.settings.raw_prefix}/sha256="

    def stored() -> list[str]:
        listing = s3.get_client().list_objects_v2(Bucket="raw", Prefix=raw_prefix)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    stored_before = stored()
    ny.serve([])  # the same columns and meta, no data rows
    result = ny.download()
    assert not result.success
    error = result.failure_data_for_node("ny_testing__raw_rows_json").error.message
    assert "the download has no data rows" in error and "Nothing was stored as raw data" in error
    assert stored() == stored_before
    quarantine = s3.get_client().list_objects_v2(Bucket="raw", Prefix=f"{ny.settings.raw_prefix}/quarantine/")
    assert [o["Key"] for o in quarantine.get("Contents", [])]
    assert ny.tick().run_requests == []  # no new raw materialization: nothing to load
    assert {t: ny.rows(t) for t in before} == before
